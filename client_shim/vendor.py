"""The gate party's side of the vendor quality gate: evaluate a candidate, report numbers.

When the federation names this party in ``[gates] vendor``, the appliance sends it an
``Evaluate`` task after each aggregation. This module downloads that version, checks its
SHA-256 against the task, calls the party's ``evaluate(tensors) -> {metric: number}``
callback (on its own holdout, in this process: the holdout never leaves it) and uploads
only the summary numbers. A failing callback or a model that does not match the task is
logged and not answered: the appliance then rejects the candidate at its deadline (fail
closed). :mod:`client_shim.metrics` computes Accuracy/EER/FPR/FNR/HTER from scores.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from safetensors.numpy import load as load_safetensors

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection

__all__ = ["Evaluator", "answer_evaluation", "download_checked"]

_log = logging.getLogger("sealagg.client.vendor")

#: The candidate's tensors (name -> numpy array) -> metrics (name -> finite number).
Evaluator = Callable[[Mapping[str, np.ndarray]], Mapping[str, float]]


def download_checked(connection: Connection, request: pb.Evaluate) -> dict[str, np.ndarray] | None:
    """The requested version's tensors, or None (logged) if the download is not the version
    and SHA-256 the task names: the appliance cannot have another model evaluated under the
    announced number."""
    version, data = connection.download_model(request.model_version)
    digest = hashlib.sha256(data).hexdigest()
    if version != request.model_version or not hmac.compare_digest(digest, request.model_sha256):
        _log.error(
            "evaluation of version %d refused: the download does not match the task",
            request.model_version,
        )
        return None
    return load_safetensors(data)


def answer_evaluation(connection: Connection, request: pb.Evaluate, evaluate: Evaluator) -> bool:
    """Evaluate the requested version and upload the report; False if nothing was sent."""
    tensors = download_checked(connection, request)
    if tensors is None:
        return False
    try:
        metrics = {str(k): float(v) for k, v in dict(evaluate(tensors)).items()}
    except Exception:  # the party's own code: log it, let the gate time out (fail closed)
        _log.exception("the evaluate callback failed on version %d", request.model_version)
        return False
    if request.metric not in metrics or not all(math.isfinite(v) for v in metrics.values()):
        _log.error(
            "evaluate returned %s: needs a finite %r; not reported", sorted(metrics), request.metric
        )
        return False
    body = json.dumps({"model_version": int(request.model_version), "metrics": metrics}).encode()
    header = pb.UploadHeader(round_id=request.round_id, kind="evaluation")
    connection.submit(header, body, deadline_unix=request.deadline_unix)
    _log.info(
        "reported %s = %.6g for version %d",
        request.metric,
        metrics[request.metric],
        request.model_version,
    )
    return True
