"""Federated evaluation, the client's side: score a model version on local data, report numbers.

The appliance sends ``Evaluate(federated=True, run_id, evaluation_id, model_version,
model_sha256, deadline_unix)`` to every client. This module downloads that version, checks
its SHA-256 against the task (the appliance cannot swap in another model under the same
number), calls the data owner's ``evaluate(tensors) -> {metric: number}`` callback (in this
process, on its own data: the data never leaves it) and uploads only the summary numbers and
the example count that weighs them. A ``"num_examples"`` key in the callback's answer (an
int >= 0) is that weight, default 1; every other key is a metric and must be a finite number.
A failing callback, non-finite numbers or a mismatched download are logged and not answered:
the appliance counts this client as missing from the evaluation, never as a wrong number.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.vendor import Evaluator, download_checked

__all__ = ["MAX_METRICS", "answer_federated_evaluation", "evaluation_report"]

_log = logging.getLogger("sealagg.client.evaluation")

#: Bounds on what one client reports (the appliance refuses larger metadata anyway).
MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_METADATA_CHARS = 4096


def evaluation_report(request: pb.Evaluate, answer: Mapping[str, object]) -> dict[str, object]:
    """The report's JSON document for the callback's ``answer``; ``ValueError`` (with the
    reason) if the answer cannot be reported: a non-number, a non-finite metric, a bad
    ``num_examples``, too many or too long names."""
    if not isinstance(answer, Mapping):
        raise ValueError(f"evaluate must return a dict of numbers, got {type(answer).__name__}")
    values = dict(answer)
    count = values.pop("num_examples", 1)
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {count!r}")
    if len(values) > MAX_METRICS:
        raise ValueError(f"{len(values)} metrics; at most {MAX_METRICS} are reported")
    metrics: dict[str, float] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME:
            raise ValueError(f"metric name {name!r} must be a string of 1-{MAX_METRIC_NAME} chars")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            item = getattr(value, "item", None)  # a numpy/torch scalar
            value = item() if callable(item) else value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"metric {name!r} = {value!r} is not a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"metric {name!r} = {value!r} is not finite")
        metrics[name] = float(value)
    return {
        "evaluation_id": bytes(request.evaluation_id).hex(),
        "model_version": int(request.model_version),
        "num_examples": int(count),
        "metrics": metrics,
    }


def answer_federated_evaluation(
    connection: Connection, request: pb.Evaluate, evaluate: Evaluator
) -> bool:
    """Evaluate the requested version on local data and upload the report; False if nothing
    was sent (the reason is logged)."""
    tensors = download_checked(connection, request)
    if tensors is None:
        return False
    try:
        answer = evaluate(tensors)
    except Exception:  # the data owner's code: log it; the evaluation goes on without us
        _log.exception("the evaluate callback failed on version %d", request.model_version)
        return False
    try:
        report = evaluation_report(request, answer)
    except ValueError as error:
        _log.error("evaluation of version %d not reported: %s", request.model_version, error)
        return False
    text = json.dumps(report, sort_keys=True)
    if len(text) > MAX_METADATA_CHARS:
        _log.error(
            "evaluation report of %d characters not sent (at most %d)",
            len(text),
            MAX_METADATA_CHARS,
        )
        return False
    header = pb.UploadHeader(
        kind="evaluation", round_id=bytes(request.evaluation_id), metadata_json=text
    )
    connection.submit(header, b"", deadline_unix=request.deadline_unix)
    _log.info(
        "evaluated version %d on %d examples: %s",
        request.model_version,
        report["num_examples"],
        ", ".join(f"{k}={v:.6g}" for k, v in report["metrics"].items()),  # type: ignore[union-attr]
    )
    return True
