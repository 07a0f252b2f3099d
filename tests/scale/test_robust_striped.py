"""Plaintext rounds on stripes, in process (no Ray): every rule against the one-process round.

:class:`StripedPlainRound` over W in-process :class:`PlainStripe` objects (W = 1, 2, 3, of
unequal sizes; d not a multiple of the chunk or of anything) takes the same uploads, in the
same order, as :class:`PlainRound` (rule mean) or :class:`RobustPlainRound` (every other
rule); half of them are streamed in odd-sized pieces through the round's sink, half are
received whole. The aggregate, the total weight, the contributors, the audit record and the
audited digest must be equal: bit for bit for mean, median, trimmed mean, Krum and
Multi-Krum; within float64 reassociation of the distances for the geometric median. The
one-process round's refusals (NaN/Inf, wrong length, weight outside (0, 1]) come out of
the striped round with the same reasons, and a refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sealagg.appliance.robust import RobustPlainRound
from sealagg.appliance.rounds import Member, PlainRound, UploadRefusedError
from sealagg.appliance.scale.coordinator import plan_stripes
from sealagg.appliance.scale.plain_round import StripedPlainRound
from sealagg.appliance.scale.plain_stripe import PlainStripe, PlainStripeRefusedError
from sealagg.appliance.wire import sealagg_pb2 as pb

RID = b"p" * 32
D = 3001  # prime: no stripe, chunk or kernel block divides it
CHUNK = 97
F, BETA = 2, 0.25
#: W stripes of unequal sizes, and n clients for each W.
LAYOUTS = [((1.0,), 7), ((3.0, 1.0), 8), ((1.0, 2.0, 1.0), 9)]
RULES = ["mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median"]


def _members(n: int) -> list[Member]:
    """Names whose sorted order is not the index order (the rules stack by name)."""
    letters = "qwertyuiopasdfgh"
    return [Member(i + 1, f"site-{letters[i]}", bytes([i]) * 32) for i in range(n)]


def _updates(n: int, seed: int) -> tuple[list[np.ndarray], list[float]]:
    """Honest small updates; two Byzantine ones (huge, and huge on one coordinate range)."""
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, 0.05, D).astype(np.float32) for _ in range(n)]
    updates[1] = np.full(D, 40.0, np.float32)
    updates[4][D // 3 : D // 2] = -25.0
    weights = [float(np.float32(0.2 + 0.09 * i)) for i in range(n)]
    return updates, weights


def _header(weight: float, size: int) -> pb.UploadHeader:
    return pb.UploadHeader(
        round_id=RID, kind="plaintext_update", weight=weight, total_bytes=size, phase=0
    )


def _striped(members, weights, rule: str) -> tuple[StripedPlainRound, list[PlainStripe]]:
    stripes = [PlainStripe() for _ in weights]
    ranges = plan_stripes(D, weights)
    active = StripedPlainRound(
        1,
        RID,
        members,
        D,
        rule=rule,
        f=F,
        beta=BETA,
        stripes=stripes,
        ranges=ranges,
        chunk_words=CHUNK,
        timeout=5.0,
    )
    return active, stripes


def _stream(active: StripedPlainRound, name: str, header: pb.UploadHeader, data: bytes, piece: int):
    """What the gRPC handler does with a sink: feed pieces, finish, accept (abort on error)."""

    async def run():
        sink = active.stream_sink(name, header)
        assert sink is not None
        try:
            for a in range(0, len(data), piece):
                await sink.feed(data[a : a + piece])
            return await sink.finish()
        except BaseException:
            sink.abort()
            raise

    active.accept(name, header, asyncio.run(run()))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("weights", "n"), LAYOUTS)
def test_striped_rule_equals_the_one_process_round(weights, n, rule) -> None:
    members = _members(n)
    updates, client_weights = _updates(n, seed=n)
    reference = (
        PlainRound(1, RID, members, D)
        if rule == "mean"
        else RobustPlainRound(1, RID, members, D, rule=rule, f=F, beta=BETA)
    )
    striped, _ = _striped(members, weights, rule)
    arrival = np.random.default_rng(7).permutation(n)  # neither index nor name order
    for k, i in enumerate(arrival):
        name, data = members[i].name, updates[i].tobytes()
        header = _header(client_weights[i], len(data))
        reference.accept(name, header, data)
        if k % 2:
            _stream(striped, name, header, data, piece=1 + 37 * (k + 3))  # odd, cut mid-float
        else:
            striped.accept(name, header, data)
    assert reference.close_phase() == striped.close_phase() == {}
    want, got = reference.aggregate(), striped.aggregate()

    assert got.total_weight == want.total_weight
    assert got.contributors == want.contributors and got.dropped == want.dropped == ()
    assert got.mean_update.dtype == np.float32 and got.mean_update.shape == (D,)
    if rule == "geometric_median":  # distances summed over stripes: float64 reassociation
        np.testing.assert_allclose(got.mean_update, want.mean_update, rtol=1e-6, atol=1e-7)
        steps = (want_steps, got_steps) = (
            reference.robust_report["weiszfeld_steps"],
            striped.robust_report["weiszfeld_steps"],
        )
        assert abs(got_steps - want_steps) <= 1, steps
        assert np.abs(got.mean_update).max() < 0.5  # the Byzantine updates did not pull it
        return
    assert np.array_equal(got.mean_update, want.mean_update)  # bit for bit
    assert striped.result_audit() == reference.result_audit()
    assert striped.total_digest_source() == reference.total_digest_source()
    if rule in ("krum", "multi_krum"):
        selected = striped.robust_report["selected"]
        assert members[1].name not in selected and members[4].name not in selected


def test_refusals_match_the_one_process_round_and_leave_nothing_staged() -> None:
    members = _members(7)
    updates, client_weights = _updates(7, seed=3)
    reference = RobustPlainRound(1, RID, members, D, rule="median", f=F, beta=BETA)
    striped, stripes = _striped(members, (2.0, 1.0), "median")
    name, good = members[0].name, updates[0].tobytes()
    nan = updates[0].copy()
    nan[D - 5] = np.nan  # in the last stripe: earlier chunks were already forwarded

    def reasons(data: bytes, weight: float) -> tuple[str, str]:
        out = []
        for active in (reference, striped):
            with pytest.raises(UploadRefusedError) as refused:
                active.accept(name, _header(weight, len(data)), data)
            out.append((refused.value.code, refused.value.detail))
        return tuple(out)

    one, many = reasons(nan.tobytes(), 0.5)
    assert one == many == ("INVALID_ARGUMENT", "update contains NaN or Inf; refused")
    one, many = reasons(good[:-4], 0.5)
    assert one == many and "the model has 3001" in one[1]
    one, many = reasons(good, 7.0)
    assert one == many == ("INVALID_ARGUMENT", "weight must lie in (0, 1], got 7.0")
    with pytest.raises(UploadRefusedError, match=r"weight must lie in \(0, 1\]"):
        striped.stream_sink(name, _header(7.0, len(good)))  # refused before a byte is read

    # Streamed with a NaN (and with an Inf): refused at that chunk, staged chunks dropped.
    for bad in (np.nan, np.inf):
        poisoned = updates[0].copy()
        poisoned[D - 5] = bad
        with pytest.raises(UploadRefusedError, match="NaN or Inf"):
            _stream(striped, name, _header(0.5, len(good)), poisoned.tobytes(), piece=1000)
        assert all(s.complete(RID) == [] for s in stripes)
        assert name not in striped.answered

    # The round goes on: the same client may send again, and the others count as usual.
    for i, member in enumerate(members):
        data = updates[i].tobytes()
        header = _header(client_weights[i], len(data))
        reference.accept(member.name, header, data)
        _stream(striped, member.name, header, data, piece=4093)
    with pytest.raises(UploadRefusedError) as again:
        striped.accept(name, _header(0.5, len(good)), good)
    assert again.value.code == "ALREADY_EXISTS"
    reference.close_phase(), striped.close_phase()
    assert np.array_equal(striped.aggregate().mean_update, reference.aggregate().mean_update)


def test_one_upload_at_a_time_and_infeasible_rules_abort() -> None:
    members = _members(7)
    updates, _ = _updates(7, seed=4)
    striped, _ = _striped(members, (1.0, 1.0), "krum")
    name, data = members[2].name, updates[2].tobytes()

    async def two_streams():
        first = striped.stream_sink(name, _header(0.5, len(data)))
        second = striped.stream_sink(name, _header(0.5, len(data)))
        await first.feed(data[:800])
        with pytest.raises(UploadRefusedError, match="already under way"):
            await second.feed(data[:800])
        second.abort()  # the refused second stream does not drop the first's chunks
        await first.feed(data[800:])
        return await first.finish()

    striped.accept(name, _header(0.5, len(data)), asyncio.run(two_streams()))
    assert striped.answered == {name}
    for i in (0, 1, 3, 4):  # five updates: Krum with f = 2 needs more than six
        striped.accept(members[i].name, _header(0.5, len(data)), updates[i].tobytes())
    with pytest.raises(UploadRefusedError) as aborted:
        striped.close_phase()
    assert aborted.value.code == "ABORTED"
    assert "robust rule: Krum needs n > 2f + 2: n=5, f=2" in aborted.value.detail


def test_a_stripe_refuses_what_does_not_fit_its_round() -> None:
    stripe = PlainStripe()
    stripe.begin(RID, start=10, length=6)
    values = np.arange(6, dtype="<f4")
    stripe.put(RID, 1, 10, values[:3].tobytes())
    for offset, chunk, why in [
        (12, values[:2].tobytes(), "overlapping"),
        (14, values[:3].tobytes(), "outside"),
        (9, values[:1].tobytes(), "outside"),
        (13, b"\x00\x00", "whole number"),
        (13, np.array([np.nan], "<f4").tobytes(), "NaN or Inf"),
    ]:
        with pytest.raises(PlainStripeRefusedError, match=why):
            stripe.put(RID, 1, offset, chunk)
    with pytest.raises(PlainStripeRefusedError, match="not serving"):
        stripe.put(b"x" * 32, 1, 13, values[3:].tobytes())
    with pytest.raises(PlainStripeRefusedError, match=r"members \[1\] are incomplete"):
        stripe.commit(RID, [1])
    stripe.put(RID, 1, 13, values[3:].tobytes())
    stripe.put(RID, 2, 10, values.tobytes())
    stripe.put(RID, 3, 10, values[:2].tobytes())  # never complete: dropped at the commit
    assert stripe.complete(RID) == [1, 2]
    with pytest.raises(PlainStripeRefusedError, match="after the member list"):
        stripe.median(RID)
    stripe.commit(RID, [2, 1])
    with pytest.raises(PlainStripeRefusedError, match="committed: no more chunks"):
        stripe.put(RID, 3, 12, values[2:].tobytes())
    mean, weighted = stripe.mean(RID, [0.25, 0.75])
    assert np.array_equal(weighted, values.astype(np.float64))
    assert np.array_equal(mean, values)
    assert np.array_equal(stripe.row(RID, 1), values)
