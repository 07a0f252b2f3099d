"""Turn what happened into a :class:`DemoResult`: the clients' own reports, the federation's
audited record, the test accuracy of every published model and the centralized baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sealagg.client_shim.demo.commands import SealaggCommandError
from sealagg.client_shim.demo.config import DemoConfig
from sealagg.client_shim.demo.data import Split
from sealagg.client_shim.demo.processes import ClientProcess, tail
from sealagg.client_shim.demo.records import export_audit, export_models, summarize
from sealagg.client_shim.demo.results import DemoResult, RoundResult


def collect_client_reports(clients: dict[str, ClientProcess], result: DemoResult) -> None:
    """Bytes sent, vanishings and ε from each client's result file; failures as problems."""
    for name, proc in clients.items():
        if proc.failed:
            result.problems.append(f"{name} {proc.failed}: {tail(proc.log)}")
        per_round: dict[int, int | None] = {}
        for record in proc.records():
            number = int(record.get("round", 0))
            if record.get("outcome") == "vanished":
                per_round[number] = None
                result.vanished.append((name, number, str(record.get("phase"))))
            else:
                per_round[number] = int(record.get("bytes_sent", 0))
                if record.get("epsilon") is not None:
                    result.epsilon = max(result.epsilon or 0.0, float(record["epsilon"]))
        result.bytes_sent[name] = per_round


def evaluate(
    config: DemoConfig, federation: Path, work: Path, split: Split, result: DemoResult
) -> None:
    """Accuracy of every global model, the audit chain, and the centralized baseline."""
    try:
        entries, verified, detail = export_audit(federation, work)
    except SealaggCommandError as error:
        entries, verified, detail = [], False, str(error)
    result.audit_ok = verified
    result.audit_detail = detail
    if not verified:
        result.problems.append(f"audit verify failed: {detail}")
    record = summarize(entries)
    published = [
        r.model_version
        for r in record.rounds
        if r.model_version is not None and record.model_status.get(r.model_version) == "accepted"
    ]
    wanted = ([record.base_version] if record.base_version is not None else []) + published
    try:
        files = export_models(federation, wanted, work)
    except SealaggCommandError as error:
        result.problems.append(f"model export failed: {error}")
        files = {}
    with torch_single_thread():
        accuracies = {v: _accuracy(path, split) for v, path in files.items()}
        if record.base_version is not None:
            result.base_accuracy = accuracies.get(record.base_version)
        for r in record.rounds:
            result.rounds.append(
                RoundResult(
                    number=r.number,
                    status=r.status,
                    reason=r.reason,
                    model_version=r.model_version,
                    accuracy=accuracies.get(r.model_version) if r.model_version else None,
                    contributors=r.contributors,
                    dropped=r.dropped,
                    late=r.late,
                    seconds=r.seconds,
                )
            )
            if r.masking is not None:
                result.masking[r.number] = r.masking
        _check_every_round_published(config, result)
        result.centralized_accuracy = centralized_accuracy(config, split)


def _check_every_round_published(config: DemoConfig, result: DemoResult) -> None:
    published = result.published
    if published:
        result.final_accuracy = published[-1].accuracy
    if len(published) != config.rounds:
        missing = [
            f"round {r.number} {r.status} ({r.reason})"
            for r in result.rounds
            if r.status != "accepted"
        ]
        result.problems.append(
            f"{len(published)} of {config.rounds} rounds published"
            + (f"; not published: {', '.join(missing)}" if missing else "")
        )


def _accuracy(path: Path, split: Split) -> float:
    import safetensors.numpy

    from sealagg.client_shim.demo.model import accuracy_of

    return accuracy_of(safetensors.numpy.load_file(str(path)), split.x_test, split.y_test)


def centralized_accuracy(config: DemoConfig, split: Split) -> float:
    """Same initial weights and optimizer, rounds x epochs on all the training data."""
    from sealagg.client_shim.demo.model import accuracy_of, make_model, to_numpy, train

    model = make_model(config.seed)
    train(
        model,
        split.x_train,
        split.y_train,
        epochs=config.rounds * config.epochs,
        lr=config.lr,
        momentum=config.momentum,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    return accuracy_of(to_numpy(model), split.x_test, split.y_test)


@contextlib.contextmanager
def torch_single_thread() -> Iterator[None]:
    """Tiny tensors: torch's thread pool only adds overhead, and next to the OpenMP runtime
    scikit-learn loads it slowed a 1-second training to 8 s on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
