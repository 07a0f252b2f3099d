"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks", MLSys).

Each client adds a proximal term to its local loss,

    loss = task_loss + proximal_term(model, rnd, mu)      # mu/2 · Σ ‖w - w_global‖²

which pulls the local weights towards the round's global weights and keeps clients with very
different data from drifting apart. Its gradient is ``mu · (w - w_global)``; the global
weights are constants (detached).

The sum runs over the *shared* parameters: pass the :class:`~client_shim.pytorch.RoundContext`
(it knows which parameters travel and holds their global values on the right device) or a
mapping name -> tensor (names as in ``model.named_parameters()``, leading ``_module.``
stripped). Parameters not in the mapping (e.g. a frozen backbone) are left out.

With Opacus, the DP optimizer replaces ``p.grad`` by the clipped, noised sum of *per-sample*
gradients, so a term that depends only on the parameters does not reach the update that way;
FedProx under Opacus needs the proximal step applied separately (not provided yet).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sealagg.client_shim.pytorch import RoundContext, _all_parameters, _torch

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["proximal_term"]


def proximal_term(
    model: nn.Module,
    global_params: Mapping[str, Any] | RoundContext,
    mu: float,
) -> torch.Tensor:
    """``mu / 2 · Σ ‖w - w_global‖²`` over the shared parameters; differentiable in ``w``."""
    torch = _torch()
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real):
        raise TypeError(f"mu must be a number, got {mu!r}")
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be finite and >= 0, got {mu!r}")
    anchors = (
        global_params.global_params if isinstance(global_params, RoundContext) else global_params
    )
    if not isinstance(anchors, Mapping):
        raise TypeError("global_params must be a RoundContext or a mapping name -> tensor")
    params = _all_parameters(model)
    total: torch.Tensor | None = None
    for name, anchor in anchors.items():
        param = params.get(name)
        if param is None:
            raise ValueError(f"the model has no parameter {name!r} (global_params names it)")
        target = torch.as_tensor(anchor).detach().to(device=param.device, dtype=param.dtype)
        if target.shape != param.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(param.shape)}, its global value "
                f"{tuple(target.shape)}"
            )
        term = (param - target).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        device = next((p.device for p in params.values()), None)
        return torch.zeros((), device=device)
    return total * (float(mu) / 2.0)
