"""The demo client refuses hyperparameters outside its bounds: the appliance chooses them, and a
data owner's loop should not let it make the client train forever or diverge."""

import pytest

from sealagg.client_shim.demo.client import MAX_LOCAL_EPOCHS, MAX_LR, _bounded
from sealagg.client_shim.errors import HyperparametersError


def test_values_inside_the_bounds_are_used_and_defaults_fill_in() -> None:
    assert _bounded({"local_epochs": 3}, "local_epochs", 1, 1, MAX_LOCAL_EPOCHS) == 3
    assert _bounded({}, "lr", 0.1, 1e-6, MAX_LR) == 0.1
    assert isinstance(_bounded({"local_epochs": 2.0}, "local_epochs", 1, 1, 50), int)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("local_epochs", MAX_LOCAL_EPOCHS + 1),
        ("local_epochs", 0),
        ("local_epochs", 10**9),
        ("lr", MAX_LR * 10),
        ("lr", -0.1),
        ("lr", "0.1"),
        ("lr", True),
    ],
)
def test_values_outside_the_bounds_are_refused(key: str, value: object) -> None:
    default, low, high = (1, 1, MAX_LOCAL_EPOCHS) if key == "local_epochs" else (0.1, 1e-6, MAX_LR)
    with pytest.raises(HyperparametersError, match=key):
        _bounded({key: value}, key, default, low, high)
