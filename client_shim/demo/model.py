"""The demo's model: a 64→64→10 MLP, local SGD training and evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from sealagg.client_shim.demo.data import NUM_CLASSES, NUM_FEATURES

HIDDEN = 64
#: Local training defaults, tuned on the non-IID split (see config.py).
LR = 0.05
MOMENTUM = 0.9
BATCH_SIZE = 16


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = nn.Linear(NUM_FEATURES, hidden)
        self.out = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def make_model(seed: int = 0) -> DigitsMLP:
    """A freshly initialised model; the same seed gives the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return DigitsMLP()
    finally:
        torch.random.set_rng_state(generator_state)


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def load_numpy(model: nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in tensors.items()})


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = LR,
    momentum: float = MOMENTUM,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> float:
    """Minibatch SGD with momentum (fresh state each call); returns the last epoch's loss.

    The update is ``torch.optim.SGD``'s (dampening 0, no Nesterov), written out: the first
    ``torch.optim`` optimizer a process builds imports ``torch._dynamo``, which costs 2-5 s
    per client process on a small machine.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(xt), batch_size):
            batch = order[start : start + batch_size]
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            with torch.no_grad():
                for i, p in enumerate(params):
                    if p.grad is None:
                        continue
                    buf = buffers[i]
                    if buf is None:
                        buf = buffers[i] = p.grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(p.grad)
                    p.add_(buf, alpha=-lr)
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def accuracy_of(tensors: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of a set of weights (e.g. a global model version from the store)."""
    model = DigitsMLP()
    load_numpy(model, tensors)
    return accuracy(model, x, y)
