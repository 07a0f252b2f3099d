"""Join a sealagg federation from an existing PyTorch training loop.

The user's loop needs at most five added lines:

```python
from sealagg import client_shim
federation = client_shim.connect("kit/")            # added
for rnd in federation.rounds(model):                 # added
    train(model, loader)                             # the user's own code
    rnd.submit(num_examples=len(dataset))            # added
```

What happens underneath, per round the appliance opens with this client:

1. ``rounds(model)`` waits for the round, downloads the global model (a dict name -> float32
   array) and checks that the model's *shared parameters* match it exactly: the same names,
   the same shapes, floating-point dtypes. A mismatch raises :class:`ModelMismatchError` (a
   ``ValueError``) naming every differing parameter, after reporting the refusal to the
   appliance (so the round goes on without this client at once, instead of waiting out its
   deadline); nothing else is sent. It then copies the global weights into the shared
   parameters in place (``torch.no_grad`` + ``copy_``: optimizers, hooks and Opacus
   wrappers keep pointing at the same tensors) and yields a :class:`RoundContext`.
2. The user trains as usual, reading the run's settings where it needs them:
   ``rnd.hyperparameters`` (the model owner's JSON object, e.g. ``{"lr": 0.05}``),
   ``rnd.run_id``, ``rnd.run_round`` / ``rnd.run_rounds``.
3. ``rnd.submit(num_examples)`` computes the update (shared parameters now minus the
   round's global weights, float32, flattened in the global model's layout), refuses NaN or
   Inf locally, applies the optional client-side L2 clip and client-level DP
   (:class:`client_shim.privacy.ClientDP`), and runs the round's protocol: in ``secagg`` and
   ``secagg+`` modes only a masked vector leaves the process. The weight is
   ``min(1, num_examples / max_examples)``; ``num_examples``, ``metrics`` and ``epsilon`` (e.g.
   the Opacus accountant's spent ε, see :func:`client_shim.privacy.opacus_epsilon`) travel as
   the submission's metadata. When the round ends, the model again holds the federation's
   current global model: the newly published one, or the round's starting weights if the
   round was aborted, rejected or awaits approval.
4. In an asynchronous run (issue 21) the same loop runs unchanged: each iteration is a
   lease on the newest version (``rnd.asynchronous`` is True); ``submit`` returns as soon as
   the appliance took the update (``report.outcome == "accepted"``, with ``report.staleness``
   and ``report.staleness_weight``) or refused it (``"refused"``, e.g. too stale, with the
   reason), without waiting for other clients; the next iteration trains on whatever version
   is newest then. In ``secagg`` and ``secagg+`` runs ``submit`` registers the update and
   waits for the secure-aggregation round of the buffer it joined (only a masked vector
   leaves the client, weighted by ``w * s(tau)`` with ``tau`` fixed by that round's
   transcript); its report is then the buffer's outcome ("published", or "aborted" with the
   reason, e.g. too few members left), with ``report.staleness`` and
   ``report.staleness_weight``.
5. The loop ends by itself when the appliance ends the run (``RunEnd``: budget spent, or an
   administrator stopped it); ``federation.run_end`` then says how, and the model holds the
   run's last accepted version. ``max_rounds=`` ends it earlier.

Which parameters are shared (``share=``):

- ``"trainable"`` (default): parameters with ``requires_grad``; the PEFT/LoRA case, where
  only adapter weights travel and the frozen backbone never leaves the client;
- ``"all"``: every parameter;
- a callable ``name -> bool``.

Buffers (e.g. BatchNorm running statistics) are never shared. The appliance's global model
must contain exactly the shared parameters.

Parameter names are those of ``model.named_parameters()`` with any leading ``_module.``
stripped: Opacus' ``GradSampleModule`` (from ``PrivacyEngine.make_private``) prefixes every
name with ``_module.``, and stripping it lets a model made private keep matching the global
model built from the plain model's ``state_dict``. Make the model private once, before the
loop; the shim loads each round's weights into the wrapped model's parameters in place.

torch is imported lazily: importing this module (and :mod:`client_shim`) works without it.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
import numpy as np

from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.attestation import AttestationGuard
from sealagg.client_shim.connection import DEFAULT_MAX_DOWNTIME, Connection
from sealagg.client_shim.errors import (
    AccessRefusedError,
    ApplianceUnavailableError,
    ModelMismatchError,
    RoundRefusedError,
    RunEnded,
)
from sealagg.client_shim.privacy import ClientDP, protect_update
from sealagg.client_shim.session import Participant, RoundReport, hyperparameters_of
from sealagg.client_shim.vendor import Evaluator

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "OPACUS_PREFIX",
    "Federation",
    "RoundContext",
    "check_matches",
    "connect",
    "model_evaluator",
    "parameter_name",
    "shared_parameters",
]

_log = logging.getLogger("sealagg.client.torch")

#: What Opacus' GradSampleModule puts in front of every parameter name.
OPACUS_PREFIX = "_module."
#: The appliance refuses larger ``metadata_json``.
MAX_METADATA_CHARS = 4096

Share = Literal["all", "trainable"] | Callable[[str], bool]


def _torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "client_shim.pytorch needs PyTorch; install it (CPU build first), then "
            "`pip install 'sealagg[client]'`"
        ) from error
    return torch


# ------------------------------------------------------------------------------ parameters


def parameter_name(name: str) -> str:
    """``name`` without leading ``_module.`` prefixes (Opacus' GradSampleModule)."""
    while name.startswith(OPACUS_PREFIX):
        name = name[len(OPACUS_PREFIX) :]
    return name


def _all_parameters(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    out: dict[str, torch.nn.Parameter] = {}
    for raw, param in model.named_parameters():
        name = parameter_name(raw)
        if name in out:
            raise ValueError(
                f"two parameters are named {name!r} once {OPACUS_PREFIX!r} is stripped; "
                "rename one of them"
            )
        out[name] = param
    return out


def _check_share(share: object) -> None:
    if share not in ("all", "trainable") and not callable(share):
        raise ValueError(
            f"share must be 'all', 'trainable' or a callable name -> bool, not {share!r}"
        )


def shared_parameters(
    model: nn.Module, share: Share = "trainable"
) -> dict[str, torch.nn.Parameter]:
    """The parameters that travel, by name (``_module.`` stripped), in model order."""
    _check_share(share)
    params = _all_parameters(model)
    if share == "all":
        return params
    if share == "trainable":
        return {n: p for n, p in params.items() if p.requires_grad}
    return {n: p for n, p in params.items() if bool(share(n))}  # type: ignore[operator]


def _describe_share(share: Share) -> str:
    return f"share={share!r}" if isinstance(share, str) else "the share= filter"


def check_matches(
    shared: Mapping[str, torch.Tensor],
    global_tensors: Mapping[str, np.ndarray],
    *,
    model_params: Mapping[str, torch.Tensor] | None = None,
    share: Share = "trainable",
    version: int | None = None,
    note: str = "nothing was sent",
) -> None:
    """Raise :class:`ModelMismatchError` (a ``ValueError``) naming every shared parameter
    that does not match (sorted by name; ``error.tensors`` lists them one by one).

    ``model_params`` (all the model's parameters) lets the message tell a parameter the
    ``share`` rule left out from one the model lacks.
    """
    where = "the global model" if version is None else f"the global model (version {version})"
    problems = [
        problem
        for name in sorted(set(shared) | set(global_tensors))
        if (problem := _mismatch(name, shared, global_tensors, model_params, share, where))
    ]
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if problems[1:] else ""
        raise ModelMismatchError(
            f"the model does not match {where}; {note}: {problems[0]}{more}", problems
        )


def _mismatch(
    name: str,
    shared: Mapping[str, torch.Tensor],
    global_tensors: Mapping[str, np.ndarray],
    model_params: Mapping[str, torch.Tensor] | None,
    share: Share,
    where: str,
) -> str:
    """Why parameter ``name`` does not match, or "" if it does."""
    if name not in shared:
        shape = tuple(global_tensors[name].shape)
        if model_params is not None and name in model_params:
            why = f"the model has it but {_describe_share(share)} leaves it out" + (
                " (requires_grad=False)" if share == "trainable" else ""
            )
        else:
            why = "the model has no parameter of that name"
        return f"{where} has {name!r} with shape {shape}, but {why}"
    param = shared[name]
    if name not in global_tensors:
        return (
            f"the model shares {name!r} with shape {tuple(param.shape)}, which {where} does not "
            f"have (renamed layer, or {_describe_share(share)} selects more than the "
            "federation trains?)"
        )
    expected = tuple(global_tensors[name].shape)
    if tuple(param.shape) != expected:
        return f"parameter {name!r} has shape {tuple(param.shape)}, {where} has {expected}"
    if not param.is_floating_point():
        return f"parameter {name!r} has dtype {param.dtype}, not a float type"
    if not np.issubdtype(np.asarray(global_tensors[name]).dtype, np.floating):
        return f"{where} holds {name!r} as {global_tensors[name].dtype}, not a float type"
    return ""


def _load(params: Mapping[str, torch.Tensor], tensors: Mapping[str, np.ndarray]) -> None:
    torch = _torch()
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.array(tensors[name], dtype=np.float32)))


# ------------------------------------------------------------------------------ metadata


def _plain(value: object, where: str) -> object:
    """JSON-safe copy of a metrics value; tensors and numpy scalars become Python numbers."""
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, where) for v in value]
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return _plain(value.item(), where)
    numel = getattr(value, "numel", None)  # a torch tensor holding one number
    if callable(numel) and numel() == 1 and callable(getattr(value, "item", None)):
        return _plain(value.item(), where)  # type: ignore[attr-defined]
    raise TypeError(f"{where} = {value!r} cannot be reported: use numbers, strings, lists, dicts")


def _metadata(
    num_examples: int, metrics: Mapping[str, object] | None, epsilon: float | None
) -> dict:
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    if epsilon is not None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
            raise TypeError(f"epsilon must be a number, got {epsilon!r}")
        epsilon = float(epsilon)
        if math.isnan(epsilon) or epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    meta = {
        "num_examples": num_examples,
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "epsilon": epsilon,
    }
    text = json.dumps(meta)
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(
            f"the submission's metadata is {len(text)} characters; the appliance accepts at "
            f"most {MAX_METADATA_CHARS}: report fewer metrics"
        )
    return meta


def _check_examples(num_examples: object) -> int:
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
        raise TypeError(f"num_examples must be an int, got {num_examples!r}")
    if num_examples <= 0:
        raise ValueError(
            f"num_examples must be positive, got {num_examples}: a client that trained on no "
            "examples has no update to weigh"
        )
    return int(num_examples)


# ------------------------------------------------------------------------------ the round


class RoundContext:
    """One round this client takes part in; yielded by :meth:`Federation.rounds`."""

    def __init__(
        self,
        federation: Federation,
        model: nn.Module,
        start: pb.RoundStart,
        global_tensors: Mapping[str, np.ndarray],
        names: tuple[str, ...],
    ) -> None:
        self._federation = federation
        self._model = model
        self.start = start
        self._layout = Layout.of(global_tensors)
        self._baseline = flatten(global_tensors, self._layout)  # our own copy
        self._global = types.MappingProxyType(dict(global_tensors))
        self._names = names
        self._global_params: Mapping[str, torch.Tensor] | None = None
        self._started = False
        self._hyperparameters = hyperparameters_of(start)  # checked before the yield
        #: The RoundReport once :meth:`submit` has run the round.
        self.report: RoundReport | None = None
        #: The metadata sent with the submission (num_examples, metrics, epsilon).
        self.metadata: dict | None = None

    @property
    def round_number(self) -> int:
        return self.start.round_number

    @property
    def model_version(self) -> int:
        """The global model version this round trains from."""
        return self.start.model_version

    @property
    def hyperparameters(self) -> dict[str, object]:
        """The run's hyperparameters for this round (the model owner's JSON object, e.g.
        ``{"lr": 0.05, "local_epochs": 2}``; ``{}`` when the run sets none). A fresh copy:
        read what you need where you train, e.g. ``rnd.hyperparameters.get("lr", 0.01)``."""
        return json.loads(json.dumps(self._hyperparameters))

    @property
    def asynchronous(self) -> bool:
        """True in an asynchronous run: this is a lease, and :meth:`submit` returns once the
        appliance took (or refused) the update, its report carrying the staleness."""
        return self.start.asynchronous

    @property
    def run_id(self) -> str:
        """The run this round belongs to ("" for an appliance without runs)."""
        return self.start.run_id

    @property
    def run_round(self) -> int:
        """This round's 1-based index within its run (0 if the appliance does not say)."""
        return self.start.run_round

    @property
    def run_rounds(self) -> int:
        """The run's round budget (0: unbounded, or not said)."""
        return self.start.run_rounds

    @property
    def global_tensors(self) -> Mapping[str, np.ndarray]:
        """The round's global model: name -> float32 array (read-only view)."""
        return self._global

    @property
    def global_params(self) -> Mapping[str, torch.Tensor]:
        """The round's global weights as detached tensors on each parameter's device and dtype.

        What :func:`client_shim.fedprox.proximal_term` anchors to.
        """
        if self._global_params is None:
            torch = _torch()
            params = _all_parameters(self._model)
            self._global_params = types.MappingProxyType(
                {
                    name: torch.from_numpy(np.array(self._global[name], dtype=np.float32)).to(
                        device=params[name].device, dtype=params[name].dtype
                    )
                    for name in self._names
                }
            )
        return self._global_params

    @property
    def submitted(self) -> bool:
        return self._started

    def _shared_now(self) -> dict[str, torch.nn.Parameter]:
        """This round's shared parameters, looked up by name in the model as it is now."""
        params = _all_parameters(self._model)
        shared = {n: params[n] for n in self._names if n in params}
        check_matches(
            shared,
            self._global,
            model_params=params,
            share=self._federation.share,
            version=self.model_version,
        )
        return shared

    def update(self) -> np.ndarray:
        """The raw update (shared parameters minus the round's global weights), float32.

        Raises ``ValueError`` naming a parameter that holds NaN or Inf.
        """
        torch = _torch()
        shared = self._shared_now()
        current: dict[str, np.ndarray] = {}
        for name in self._names:
            value = shared[name].detach().to(device="cpu", dtype=torch.float32).numpy()
            if not np.isfinite(value).all():
                bad = int(value.size - np.isfinite(value).sum())
                raise ValueError(
                    f"parameter {name!r} holds {bad} NaN/Inf value(s) after training; the update "
                    "was refused locally and nothing was sent"
                )
            current[name] = value
        update = flatten(current, self._layout) - self._baseline
        if not np.isfinite(update).all():
            raise ValueError("the update overflows float32; nothing was sent")
        return update

    def submit(
        self,
        num_examples: int,
        *,
        metrics: Mapping[str, object] | None = None,
        epsilon: float | None = None,
    ) -> RoundReport:
        """Send this round's update and wait for the round to end; returns its report.

        ``num_examples`` (> 0) sets the weight ``min(1, num_examples / max_examples)``;
        ``metrics`` (a small JSON-able dict; tensors and numpy scalars are converted) and
        ``epsilon`` (>= 0; e.g. :func:`client_shim.privacy.opacus_epsilon`) go to the
        appliance as metadata, in the clear, with the first upload. In ``secagg`` and
        ``secagg+`` modes the update itself leaves only masked; in ``plaintext`` mode the
        appliance sees it. NaN/Inf, a model changed since the round started, or metadata too
        large raise before anything is sent. Afterwards the model holds the federation's
        current global weights (see the module docstring); ``self.report`` and
        ``self.metadata`` keep what happened.
        """
        if self._started:
            raise RuntimeError(f"round {self.round_number} was already submitted")
        fed = self._federation
        count = _check_examples(num_examples)
        weight = min(1.0, count / fed.max_examples)
        metadata = _metadata(count, metrics, epsilon)
        try:
            raw = self.update()
        except ModelMismatchError as error:  # the model changed since the round started
            fed.participant.report_refusal(self.start.round_id, error)
            raise
        update = protect_update(raw, clip=fed.clip, dp=fed.dp)
        self._warn_if_clipped(update)
        self._started = True
        self.metadata = metadata
        report = fed.participant.run_round(
            lambda start, tensors: (update, weight, metadata), start=self.start
        )
        self.report = report
        fed._after_round(self, report)
        return report

    def _warn_if_clipped(self, update: np.ndarray) -> None:
        limit = self.start.clip
        if limit > 0 and update.size:
            over = int(np.count_nonzero(np.abs(update) > limit))
            if over:
                _log.warning(
                    "round %d: %d coordinate(s) of the update exceed the appliance's "
                    "per-coordinate clip ±%g and will be clipped (lower the learning rate, "
                    "or ask the operator to raise aggregation.clip)",
                    self.round_number,
                    over,
                    limit,
                )

    def _restore(self, tensors: Mapping[str, np.ndarray], version: int | None) -> None:
        params = _all_parameters(self._model)
        shared = {n: params[n] for n in self._names if n in params}
        check_matches(
            shared,
            tensors,
            model_params=params,
            share=self._federation.share,
            version=version,
            note="the model keeps its local weights",
        )
        _load(shared, tensors)


class Federation:
    """This client's membership in a federation: a connection and a :class:`Participant`."""

    def __init__(
        self,
        connection: Connection,
        *,
        share: Share = "trainable",
        max_examples: int = 10_000,
        clip: float | None = None,
        dp: ClientDP | None = None,
        poll_seconds: float = 2.0,
        evaluate: Evaluator | None = None,
        attestation: AttestationGuard | None = None,
        presence: bool = True,
    ) -> None:
        _check_share(share)
        if isinstance(max_examples, bool) or not isinstance(max_examples, numbers.Integral):
            raise TypeError(f"max_examples must be an int, got {max_examples!r}")
        if max_examples <= 0:
            raise ValueError(f"max_examples must be positive, got {max_examples}")
        if clip is not None:
            if isinstance(clip, bool) or not isinstance(clip, numbers.Real):
                raise TypeError(f"clip must be a number (an L2 bound), got {clip!r}")
            if not (math.isfinite(clip) and clip > 0):
                raise ValueError(f"clip must be a finite L2 bound > 0, got {clip!r}")
        if dp is not None and not isinstance(dp, ClientDP):
            raise TypeError(f"dp must be a client_shim.ClientDP, got {dp!r}")
        if not (isinstance(poll_seconds, numbers.Real) and poll_seconds > 0):
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds!r}")
        self.connection = connection
        self.kit = connection.kit
        self.share = share
        self.max_examples = int(max_examples)
        self.clip = None if clip is None else float(clip)
        self.dp = dp
        # evaluate=: this party is the vendor gate; it scores candidates on its own holdout
        # attestation=None: the kit's attestation policy (if any) is enforced every round
        # presence=True: a live stream lets the appliance notice at once if this process dies,
        # so the other clients never wait a phase deadline for it (issue 25)
        self.participant = Participant(
            connection,
            poll_seconds=float(poll_seconds),
            evaluate=evaluate,
            attestation=attestation,
            presence=presence,
        )
        #: How this client's run ended (set when :meth:`rounds` stopped on a ``RunEnd``).
        self.run_end: RunEnded | None = None

    def rounds(
        self,
        model: nn.Module,
        *,
        max_rounds: int | None = None,
        run_id: str | None = None,
        evaluate: Callable[[nn.Module], Mapping[str, object]] | None = None,
    ) -> Iterator[RoundContext]:
        """Yield a :class:`RoundContext` for each round the appliance opens with this client.

        Before each yield the global weights are loaded into ``model``'s shared parameters.
        A model that does not match the global model raises :class:`ModelMismatchError` (a
        ``ValueError`` naming every mismatched tensor) after telling the appliance, which
        goes on without this client at once; nothing else is sent.

        The loop ends when the appliance ends this client's run (a ``RunEnd``: then
        :attr:`run_end` says how, and ``model`` holds the run's last accepted version) or
        after ``max_rounds`` rounds (None: only the run's end stops it). This client's run
        is the run of the last round it was offered, or ``run_id`` if given (then that run's
        end stops the loop even before any round of it); the end of a run it never took
        part in is ignored.

        ``evaluate(model) -> {metric: number, "num_examples": n}`` answers federated
        evaluation requests while the loop waits: the shim loads the requested version into
        ``model``, calls it, and puts the weights back (see :func:`model_evaluator`).
        """
        if max_rounds is not None and (
            isinstance(max_rounds, bool)
            or not isinstance(max_rounds, numbers.Integral)
            or max_rounds < 0
        ):
            raise ValueError(f"max_rounds must be a non-negative int or None, got {max_rounds!r}")
        if evaluate is not None and not callable(evaluate):
            raise TypeError("evaluate must be callable (model) -> {metric: number}")
        given = self.participant.evaluate
        if evaluate is not None:
            self.participant.evaluate = model_evaluator(model, evaluate, share=self.share)
        self.run_end = None
        if run_id is not None:
            self.participant.run_id = str(run_id)
        try:
            yield from self._rounds(model, max_rounds)
        finally:
            self.participant.evaluate = given

    def _rounds(self, model: nn.Module, max_rounds: int | None) -> Iterator[RoundContext]:
        done = 0
        while max_rounds is None or done < max_rounds:
            _log.info("%s: waiting for a round", self.kit.name)
            try:
                start = self.participant.wait_for_round()
            except RunEnded as ended:
                self._finish_run(model, ended)
                return
            context = self._enter(model, start)
            yield context
            if not context.submitted:
                _log.warning(
                    "round %d: the loop moved on without submit(); this client dropped out "
                    "of the round",
                    context.round_number,
                )
            done += 1

    def _enter(self, model: nn.Module, start: pb.RoundStart) -> RoundContext:
        """Check the round against the model and load its weights; a mismatch or unusable
        hyperparameters are reported to the appliance (the round goes on without us)."""
        try:
            hyperparameters_of(start)
            version, tensors = self.participant.global_model(start.model_version)
            params = _all_parameters(model)
            shared = shared_parameters(model, self.share)
            check_matches(shared, tensors, model_params=params, share=self.share, version=version)
        except (ModelMismatchError, RoundRefusedError) as error:
            self.participant.report_refusal(start.round_id, error)
            raise
        _load(shared, tensors)
        return RoundContext(self, model, start, tensors, tuple(sorted(shared)))

    def _finish_run(self, model: nn.Module, ended: RunEnded) -> None:
        """Keep how the run ended; load its last accepted model into ``model`` if we can."""
        self.run_end = ended
        _log.info(
            "%s: run %s %s (%s); last model version %d",
            self.kit.name,
            ended.run_id or "-",
            ended.status,
            ended.reason or "no reason given",
            ended.model_version,
        )
        if not ended.model_version:
            return
        try:
            version, tensors = self.participant.global_model(ended.model_version)
            shared = shared_parameters(model, self.share)
            check_matches(shared, tensors, share=self.share, version=version)
        except (grpc.RpcError, ConnectionError, ModelMismatchError) as error:
            _log.warning(
                "the run's final model (version %d) was not loaded: %s", ended.model_version, error
            )
            return
        _load(shared, tensors)

    def _after_round(self, context: RoundContext, report: RoundReport) -> None:
        """Leave the model holding the federation's current global weights."""
        if report.outcome == "published" and report.model_version:
            try:
                version, tensors = self.participant.global_model(report.model_version)
            except (grpc.RpcError, ConnectionError) as error:
                _log.warning(
                    "round %d published version %d but downloading it failed (%s); the model "
                    "keeps its local weights until the next round",
                    report.round_number,
                    report.model_version,
                    error,
                )
                return
            context._restore(tensors, version)
        else:
            context._restore(context.global_tensors, context.model_version)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_evaluator(
    model: nn.Module,
    evaluate: Callable[[nn.Module], Mapping[str, object]],
    *,
    share: Share = "trainable",
) -> Evaluator:
    """Turn ``evaluate(model) -> {metric: number}`` into the shim's tensor callback.

    For each request the requested version's weights are loaded into ``model``'s shared
    parameters, ``evaluate(model)`` runs (under ``torch.no_grad``), and the model's own
    weights are put back whatever happens: evaluating never disturbs training. A version
    that does not match the model raises :class:`ModelMismatchError` (not answered)."""
    _check_share(share)

    def run(tensors: Mapping[str, np.ndarray]) -> Mapping[str, object]:
        torch = _torch()
        shared = shared_parameters(model, share)
        check_matches(
            shared, tensors, model_params=_all_parameters(model), share=share, note="not evaluated"
        )
        saved = {name: param.detach().clone() for name, param in shared.items()}
        try:
            _load(shared, tensors)
            with torch.no_grad():
                return evaluate(model)
        finally:
            with torch.no_grad():
                for name, param in shared.items():
                    param.copy_(saved[name])

    return run


def connect(
    kit_path: str | os.PathLike[str] | ClientKit,
    *,
    address: str | None = None,
    share: Share = "trainable",
    max_examples: int = 10_000,
    clip: float | None = None,
    dp: ClientDP | None = None,
    poll_seconds: float = 2.0,
    max_downtime: float = DEFAULT_MAX_DOWNTIME,
    ready_timeout: float | None = None,
    evaluate: Evaluator | None = None,
    allow_insecure_attester: bool | None = None,
    presence: bool = True,
) -> Federation:
    """Load the client kit, wait for the appliance (up to ``max_downtime`` s), join.

    ``max_downtime`` (seconds, default 120) is how long this client tolerates the appliance
    being unreachable, at start (an appliance not up yet) and mid-run (a restart, a network
    outage) alike; past it a poll raises :class:`ApplianceUnavailableError` naming the
    address and the time waited. ``ready_timeout`` overrides the wait at start only (older
    name). A revoked or unknown client certificate raises :class:`AccessRefusedError` at
    once (no waiting), a kit of another federation ``KitMismatchError``.

    ``address`` overrides the kit's appliance address; ``max_examples`` is the example count
    that earns full weight (weight = min(1, num_examples / max_examples)); ``clip`` is an L2
    bound on the whole update; ``dp`` adds client-level Gaussian noise (see
    :mod:`client_shim.privacy`). ``allow_insecure_attester``: this data owner accepts an
    appliance attested only by the INSECURE software attester (development; None reads
    ``SEALAGG_ALLOW_INSECURE_ATTESTER=1``, default refuse). ``presence`` holds a live stream
    so the appliance notices at once when this process dies (off: poll only, bound by the
    appliance's deadlines as before). Raises
    :class:`ApplianceUnavailableError` if the appliance does not answer in time.
    """
    _check_share(share)
    for label, value in (("max_downtime", max_downtime), ("ready_timeout", ready_timeout)):
        if value is not None and not (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0
        ):
            raise ValueError(f"{label} must be >= 0 seconds, got {value!r}")
    ready_timeout = max_downtime if ready_timeout is None else ready_timeout
    kit = kit_path if isinstance(kit_path, ClientKit) else load_kit(Path(kit_path))
    connection = Connection(
        kit,
        address=address,
        max_downtime=float(max_downtime),
        allow_insecure_attester=allow_insecure_attester,
    )
    try:
        federation = Federation(
            connection,
            share=share,
            max_examples=max_examples,
            clip=clip,
            dp=dp,
            poll_seconds=poll_seconds,
            evaluate=evaluate,
            presence=presence,
        )
        _log.info("%s: connecting to the appliance at %s", kit.name, connection.address)
        connection.wait_until_ready(float(ready_timeout))
    except AccessRefusedError:
        connection.close()
        raise
    except ApplianceUnavailableError as error:
        connection.close()
        raise ApplianceUnavailableError(
            f"client {kit.name!r} could not reach the sealagg appliance of federation "
            f"{kit.federation!r} at {connection.address} within {ready_timeout:g} s (retried "
            "with backoff): is the appliance running, is the address reachable from here "
            f"(the kit says {kit.address}; pass address= to override)?",
            address=connection.address,
            waited=error.waited,
        ) from None
    except BaseException:
        connection.close()
        raise
    return federation
