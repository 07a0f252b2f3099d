"""Issue 21, masked modes: one asynchronous buffer is one secure-aggregation round whose
transcript fixes every member's base version (crypto/buffer_context.py).

- the unmasked sum is the staleness-weighted mean of the members (tau = 0, 1, 2), within
  the quantization bound, also with a member dropping after masking;
- a client refuses a buffer listing another base version for it, and a plain round for an
  asynchronous update (and the reverse);
- a server showing members different base versions is caught: a member's signed claim no
  longer verifies, and the transcripts differ;
- a member past the maximum staleness cannot be listed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from sealagg.crypto import Phase, QuantizationSpec, SecAggClient, decode_sum, encode_update
from sealagg.crypto import _transcript as tr
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.errors import BadSignatureError, BaseVersionRefusedError
from sealagg.crypto.simulation import run_round
from sealagg.crypto.staleness import StalenessPolicy
from sealagg.crypto.testing import make_round

POLICY = StalenessPolicy(kind="polynomial", max_staleness=3, a=0.5)
BASES = {1: 5, 2: 4, 3: 3, 4: 5, 5: 4, 6: 3}  # parent 5: tau = 0, 1, 2, 0, 1, 2
D = 40


def _buffer_round(degree: int | None = None):
    # Sparse: t = 2 of 4 neighbours, so the random graph never prunes below the quorum.
    kit = make_round(6, threshold=3 if degree is None else 2, dimension=D + 1, degree=degree)
    config = dataclasses.replace(kit.config, buffer=BufferContext(5, BASES, POLICY))
    return kit, config


def _inputs(config, spec, rng):
    updates = {u: rng.uniform(-0.5, 0.5, D) for u in config.identities}
    weights = {u: float(rng.uniform(0.2, 1.0)) for u in config.identities}
    assert config.buffer is not None
    encoded = {
        u: encode_update(updates[u], config.buffer.fold_weight(u, weights[u]), spec)
        for u in config.identities
    }
    return updates, weights, encoded


@pytest.mark.parametrize(
    ("degree", "dropouts"),
    [(None, {}), (None, {2: Phase.CONSISTENCY_CHECK}), (None, {4: Phase.MASKED_INPUT}), (4, {})],
    ids=["complete", "dropout-after-masking", "dropout-before-masking", "sparse"],
)
def test_the_sum_is_the_staleness_weighted_mean(degree, dropouts):
    kit, config = _buffer_round(degree)
    spec = QuantizationSpec(clip=1.0, max_clients=6)
    updates, weights, encoded = _inputs(config, spec, np.random.default_rng(7))
    result = run_round(config, kit.identities, encoded, dropouts)
    mean, total = decode_sum(result.total, spec)
    members = sorted(result.survivors)
    gone = {u for u, phase in dropouts.items() if phase <= Phase.MASKED_INPUT}
    if degree is None:  # a sparse random graph may prune a poorly connected member
        assert members == sorted(set(BASES) - gone)  # gone after masking: still counted
    assert len(members) >= 4
    s = {u: (1 + 5 - BASES[u]) ** -0.5 for u in members}  # computed here, not by the context
    expected_weight = sum(weights[u] * s[u] for u in members)
    expected = sum(weights[u] * s[u] * updates[u] for u in members) / expected_weight
    assert total == pytest.approx(expected_weight, abs=len(members) / spec.weight_scale)
    assert np.abs(mean - expected).max() <= 2 * spec.error_bound(len(members)) / expected_weight


def test_a_client_refuses_a_buffer_listing_another_base_version_for_it():
    kit, config = _buffer_round()
    with pytest.raises(BaseVersionRefusedError, match="lists base version 4"):
        SecAggClient(config, 2, kit.identities[2], trained_on=3)  # it trained on 3, listed 4
    with pytest.raises(BaseVersionRefusedError):  # an asynchronous update into a plain round
        SecAggClient(kit.config, 2, kit.identities[2], trained_on=4)
    with pytest.raises(BaseVersionRefusedError):  # a buffer's round without a base version
        SecAggClient(config, 2, kit.identities[2])
    SecAggClient(config, 2, kit.identities[2], trained_on=4)  # the truth is taken


def test_members_shown_different_base_versions_are_caught():
    """The server lists client 3 with base 5 (no staleness, full weight) to client 1 while
    client 3 signed its true base 3: client 1 refuses client 3's advertisement, and the two
    configurations hash to different transcripts (the consistency check would fail too)."""
    kit, config = _buffer_round()
    forged = dataclasses.replace(config, buffer=BufferContext(5, {**BASES, 3: 5}, POLICY))
    honest = SecAggClient(config, 3, kit.identities[3], trained_on=3)
    honest.set_input(kit.inputs[3])
    advert = honest.advertise_keys()
    with pytest.raises(BadSignatureError):
        tr.check_advertisement(forged, 3, advert.keys)
    tr.check_advertisement(config, 3, advert.keys)  # the honest view verifies
    keys = {3: advert.keys}
    assert tr.transcript_hash(config, keys) != tr.transcript_hash(forged, keys)


def test_a_plain_round_hashes_as_before():
    """Synchronous rounds carry no buffer: their transcript and advertisements are unchanged."""
    kit = make_round(4, threshold=3, dimension=9, round_id=bytes(32))
    with_empty = dataclasses.replace(kit.config, buffer=None)
    assert tr.transcript_hash(kit.config, {}) == tr.transcript_hash(with_empty, {})
    assert tr.advertise_binding(kit.config, 1) == b""


def test_a_member_past_the_maximum_staleness_cannot_be_listed():
    with pytest.raises(BaseVersionRefusedError, match="at most 3"):
        BufferContext(9, {1: 5, 2: 9, 3: 9}, POLICY)
    with pytest.raises(BaseVersionRefusedError, match="newer"):
        BufferContext(4, {1: 5, 2: 4, 3: 4}, POLICY)
    kit = make_round(4, threshold=3, dimension=9, round_id=os.urandom(32))
    with pytest.raises(ValueError, match="one base version per participant"):
        dataclasses.replace(kit.config, buffer=BufferContext(5, {1: 5, 2: 5}, POLICY))
