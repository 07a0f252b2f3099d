"""The drift study's own building blocks (benchmarks/drift_common.py, issue 8).

The study's numbers come from a benchmark run (see benchmarks/RESULTS.md); these tests pin
the pieces whose correctness the numbers rely on: the client's lower-resolution sensor, the
base-anchored gate rule, the augmentation's range, and the CNN's shape.
"""

from __future__ import annotations

import drift_common as dc
import numpy as np
import pytest

from sealagg.client_shim.metrics import no_worse


def test_resample_keeps_only_what_the_low_resolution_sensor_sees() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(5, 8, 8))
    out = dc.resample(images, 4)
    assert out.shape == images.shape
    # detail inside each 2x2 sensor cell is lost: same cell means -> identical output
    detail = rng.normal(0, 2, size=(5, 4, 2, 4, 2))
    detail -= detail.mean(axis=(2, 4), keepdims=True)
    other = images + detail.reshape(5, 8, 8)
    np.testing.assert_allclose(dc.resample(other, 4), out, atol=1e-4)
    assert np.abs(out - images).mean() > 1.0
    constant = np.full((1, 8, 8), 7.0)
    np.testing.assert_allclose(dc.resample(constant, dc.CLIENT_RESOLUTION), constant, atol=1e-5)


@pytest.mark.parametrize("tolerance", [0.0, 0.005])
def test_base_anchored_gate_cannot_accumulate_tolerance(tolerance: float) -> None:
    """Through the appliance's previous-version rule, the reported metric anchors to the base."""
    base_eer = 0.02
    metric, gate_tolerance = dc.gate_rule("base", tolerance)
    accepted = dc.gate_report({"eer": base_eer}, base_eer, tolerance, "base")
    published = []
    # each candidate a little worse than the last: a per-step tolerance would accept them all
    for eer in base_eer + np.arange(1, 12) * 0.0009:
        report = dc.gate_report({"eer": float(eer)}, base_eer, tolerance, "base")
        if no_worse(report, accepted, metric, higher_is_better=False, tolerance=gate_tolerance):
            accepted = report
            published.append(float(eer))
    assert all(e <= base_eer + tolerance + 1e-12 for e in published)
    assert len(published) == int((tolerance + 1e-12) // 0.0009)
    # the previous-version rule with the same tolerance drifts past it
    metric, gate_tolerance = dc.gate_rule("previous", tolerance)
    last = {"eer": base_eer}
    for eer in base_eer + np.arange(1, 12) * 0.0009:
        if no_worse({"eer": eer}, last, metric, higher_is_better=False, tolerance=gate_tolerance):
            last = {"eer": eer}
    assert (last["eer"] > base_eer + tolerance) == (tolerance > 0)


def test_augment_stays_in_range_and_is_seeded() -> None:
    torch = dc._torch()
    x = torch.rand(32, 8, 8)
    a = dc.augment(x, torch.Generator().manual_seed(1))
    b = dc.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, dc.augment(x, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("arch", dc.MODELS)
def test_models_score_8x8_images(arch: str) -> None:
    model = dc.new_model(0, arch)
    s = dc.scores(model, np.zeros((3, 8, 8)))
    assert s.shape == (3,) and np.all((s > 0) & (s < 1))
    with pytest.raises(ValueError, match="unknown model"):
        dc.new_model(0, "resnet")
