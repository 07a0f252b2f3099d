"""The sealagg client shim: join a federation from a training loop.

```python
from sealagg import client_shim
federation = client_shim.connect("kit/", max_downtime=300)
for rnd in federation.rounds(model):                   # ends with the run (or max_rounds=)
    train(model, loader, lr=rnd.hyperparameters.get("lr", 0.01))
    rnd.submit(num_examples=len(dataset))
print(federation.run_end)                              # how the run ended, its last model
```

Names are imported on first use, so ``from sealagg import client_shim`` needs neither torch
nor opacus; only using the PyTorch entry points (``connect(...).rounds``, ``proximal_term``) does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealagg.client_shim.connection import Connection
    from sealagg.client_shim.errors import (
        AccessRefusedError,
        ApplianceUnavailableError,
        HyperparametersError,
        ModelMismatchError,
        RoundRefusedError,
        RunEnded,
    )
    from sealagg.client_shim.fedprox import proximal_term
    from sealagg.client_shim.privacy import ClientDP, opacus_epsilon, protect_update
    from sealagg.client_shim.pytorch import (
        Federation,
        RoundContext,
        check_matches,
        connect,
        model_evaluator,
        parameter_name,
        shared_parameters,
    )
    from sealagg.client_shim.session import Participant, RoundReport

_EXPORTS = {
    "AccessRefusedError": "sealagg.client_shim.errors",
    "ApplianceUnavailableError": "sealagg.client_shim.errors",
    "HyperparametersError": "sealagg.client_shim.errors",
    "ModelMismatchError": "sealagg.client_shim.errors",
    "RunEnded": "sealagg.client_shim.errors",
    "model_evaluator": "sealagg.client_shim.pytorch",
    "ClientDP": "sealagg.client_shim.privacy",
    "Connection": "sealagg.client_shim.connection",
    "Federation": "sealagg.client_shim.pytorch",
    "Participant": "sealagg.client_shim.session",
    "RoundContext": "sealagg.client_shim.pytorch",
    "RoundRefusedError": "sealagg.client_shim.errors",
    "RoundReport": "sealagg.client_shim.session",
    "check_matches": "sealagg.client_shim.pytorch",
    "connect": "sealagg.client_shim.pytorch",
    "opacus_epsilon": "sealagg.client_shim.privacy",
    "parameter_name": "sealagg.client_shim.pytorch",
    "protect_update": "sealagg.client_shim.privacy",
    "proximal_term": "sealagg.client_shim.fedprox",
    "shared_parameters": "sealagg.client_shim.pytorch",
}

__all__ = [
    "AccessRefusedError",
    "ApplianceUnavailableError",
    "ClientDP",
    "Connection",
    "Federation",
    "HyperparametersError",
    "ModelMismatchError",
    "Participant",
    "RoundContext",
    "RoundRefusedError",
    "RoundReport",
    "RunEnded",
    "check_matches",
    "connect",
    "model_evaluator",
    "opacus_epsilon",
    "parameter_name",
    "protect_update",
    "proximal_term",
    "shared_parameters",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sealagg.client_shim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
