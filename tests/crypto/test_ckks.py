"""CKKS building blocks: packing, parameter checks, ciphertext checks, the key model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.appliance.ckks_round import CkksRound, build_ckks_round
from sealagg.appliance.config import parse_config
from sealagg.appliance.rounds import Member, UploadRefusedError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.ckks import parameters_from
from sealagg.crypto import IdentityKey
from sealagg.crypto.ckks import (
    CkksAccumulator,
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    ContributionBinding,
    Contributor,
    check_secret_context,
    chunk_sizes,
    estimate,
    mean_from_sum,
    pack,
    pack_message,
    per_layer_ciphertexts,
)
from sealagg.crypto.ckks_keys import (
    CkksParty,
    ack_message,
    bundle_message,
    read_advert,
    read_bundle,
    read_contribution,
    read_roster,
    refusal_message,
    result_message,
    sealed_message,
)
from sealagg.crypto.errors import (
    BadSignatureError,
    CkksCiphertextError,
    CkksContributionsRefusedError,
    CkksError,
    CkksKeyError,
    CkksParameterError,
    CkksRoleError,
    DecryptionError,
)
from sealagg.crypto.roster import Role

pytest.importorskip("tenseal")

PARAMS = CkksParameters()
RID = bytes(range(32))
#: ResNet-18 (ImageNet head) parameter tensors: conv weights, BN weights and biases, fc.
RESNET18 = [9408, 64, 64] + [36864, 64, 64] * 4
RESNET18 += [73728, 128, 128, 147456, 128, 128, 8192, 128, 128, 147456, 128, 128, 147456, 128, 128]
RESNET18 += [294912, 256, 256, 589824, 256, 256, 32768, 256, 256, 589824, 256, 256, 589824, 256]
RESNET18 += [256, 1179648, 512, 512, 2359296, 512, 512, 131072, 512, 512, 2359296, 512, 512]
RESNET18 += [2359296, 512, 512, 512000, 1000]


#: Data owners' identity keys for the building-block tests (index -> key; name "c<index>").
SIGNERS = {i: IdentityKey.generate() for i in range(1, 6)}


@pytest.fixture(scope="module")
def holder() -> CkksKeyHolder:
    return CkksKeyHolder.generate(PARAMS, RID)


def _who(i: int = 1) -> Contributor:
    return Contributor(i, f"c{i}", SIGNERS[i].verify_key_bytes)


def _acc(holder: CkksKeyHolder, d: int) -> CkksAccumulator:
    return CkksAccumulator(PARAMS, holder.public_context, RID, d, model_version=1)


def _enc(context: bytes, x: np.ndarray, w: float, i: int = 1) -> bytes:
    return CkksEncryptor(PARAMS, context, RID).encrypt(
        x, w, identity=SIGNERS[i], index=i, name=f"c{i}", model_version=1
    )


class _Entry:
    """A roster entry as the key holder sees it (name, identity key, role)."""

    def __init__(self, i: int, role: Role = Role.DATA_OWNER) -> None:
        self.name, self.identity_key, self.role = f"c{i}", SIGNERS[i].verify_key_bytes, role


def _decrypt(holder: CkksKeyHolder, uploads, d: int, members=None, minimum: int = 3):
    members = members or {i: _Entry(i) for i in SIGNERS}
    return holder.decrypt_contributions(
        uploads,
        members,
        dimension=d,
        model_version=1,
        key_holder=99,
        key_holder_contributes=False,
        minimum=minimum,
    )


# ---------------------------------------------------------------------------- packing


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5_000_000), st.sampled_from([4096, 8192]))
def test_packing_uses_exactly_the_ideal_number_of_ciphertexts(d, slots):
    sizes = chunk_sizes(d, slots)
    assert len(sizes) == math.ceil((d + 1) / slots)  # the ideal count, hence within 1.05 of it
    assert sum(sizes) == d + 1 and all(0 < s <= slots for s in sizes)


def test_resnet18_packing_beats_per_layer_packing():
    d = sum(RESNET18)
    assert d == 11_689_512  # ResNet-18's parameter count
    ours, per_layer = PARAMS.ciphertexts_for(d), per_layer_ciphertexts(RESNET18, PARAMS.slots)
    assert ours == math.ceil((d + 1) / 4096) == 2854
    assert len(RESNET18) == 62
    # Each of the 62 tensors wastes the rest of its last ciphertext (the small ones: nearly all).
    assert per_layer == 2893 and per_layer - ours == 39


def test_pack_carries_weighted_values_and_the_weight_in_the_last_slot():
    x = np.arange(10, dtype=np.float32)
    chunks = pack(x, 0.25, 4)
    assert [c.size for c in chunks] == [4, 4, 3]
    flat = np.concatenate(chunks)
    np.testing.assert_array_equal(flat[:-1], 0.25 * x)
    assert flat[-1] == 0.25


def test_a_sum_decrypts_to_the_weighted_mean_within_the_error_bound(holder):
    d = 5000  # two ciphertexts
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-1, 1, d).astype(np.float32) for _ in range(4)]
    ws = [0.3, 1.0, 0.55, 0.9]
    uploads = [
        (i, _enc(holder.public_context, x, w, i))
        for i, x, w in zip((1, 2, 3, 4), xs, ws, strict=True)
    ]
    fresh = CkksKeyHolder(PARAMS, RID, holder._secret)  # one decryption per key holder object
    mean, total = mean_from_sum(_decrypt(fresh, uploads, d))
    expected = sum(w * x.astype(np.float64) for x, w in zip(xs, ws, strict=True)) / sum(ws)
    assert total == pytest.approx(sum(ws), abs=PARAMS.error_bound(4))
    assert np.abs(mean - expected).max() <= PARAMS.error_bound(4) / sum(ws)


# ----------------------------------------------------------------- parameter validation


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (CkksParameters(8192, (60, 40), 40), "no level for one plain multiplication"),
        (CkksParameters(8192, (60, 60, 60, 60), 40), "128-bit security"),
        (CkksParameters(8192, (60, 30, 40), 40), "must match the scale"),
        (CkksParameters(8192, (30, 20, 30), 20), "exceeds the limit"),
        (CkksParameters(2048, (30, 20, 30), 20), "unsupported"),
        (CkksParameters(8192, (60, 58, 60), 58), "integer bits"),
    ],
)
def test_parameters_that_cannot_serve_are_refused_with_the_reason(params, reason):
    with pytest.raises(CkksParameterError, match=reason):
        params.validate(num_clients=10, value_bound=1.0)


def test_the_defaults_and_n16384_pass_and_overflow_is_refused():
    PARAMS.validate(num_clients=100, value_bound=1.0)
    CkksParameters(16384, (60, 40, 40), 40).validate(num_clients=100, value_bound=1.0)
    with pytest.raises(CkksParameterError, match="overflows"):
        PARAMS.validate(num_clients=1000, value_bound=1000.0)


def test_estimate_matches_a_real_encryption(holder):
    guess = estimate(PARAMS, 10_000)
    real = _enc(holder.public_context, np.zeros(10_000), 1.0)
    assert guess.ciphertexts == 3
    assert abs(guess.bytes_per_client - len(real)) < 0.02 * len(real)


# ----------------------------------------------------------------- ciphertext checks


def _envelope(holder, cts, d=100, *, round_id=RID):
    """A correctly signed upload around ``cts`` (so the ciphertext checks are what refuse it)."""
    fp = CkksEncryptor(PARAMS, holder.public_context, RID).context.fingerprint
    sig = SIGNERS[1].sign(ContributionBinding(round_id, 1, PARAMS, d, fp).digest(1, "c1", cts))
    return pack_message("ckks_input", round_id, f=fp, c=cts, i=1, s=sig)


def _fresh(holder, values):
    return CkksEncryptor(PARAMS, holder.public_context, RID).context.encrypt(values)


def test_ciphertexts_made_under_other_parameters_or_contexts_are_refused(holder):
    d = 100
    acc = _acc(holder, d)
    other = CkksKeyHolder.generate(PARAMS, RID)
    with pytest.raises(CkksCiphertextError, match="another context"):
        acc.add(_enc(other.public_context, np.zeros(d), 1.0), _who())
    small = CkksParameters(4096, (40, 20, 40), 20)
    foreign = CkksKeyHolder.generate(small, RID)
    ct = CkksEncryptor(small, foreign.public_context, RID).context.encrypt(np.zeros(d + 1))
    with pytest.raises(CkksCiphertextError, match="does not parse"):
        acc.add(_envelope(holder, [ct]), _who())
    assert acc.count == 0


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda ct: ct[:-100], "does not parse"),
        (lambda ct: ct + b"xx", "canonical"),
        (lambda ct: ct[: len(ct) // 2], "does not parse"),
    ],
    ids=["truncated", "trailing-bytes", "half"],
)
def test_truncated_or_padded_ciphertexts_are_refused(holder, mangle, reason):
    acc = _acc(holder, 100)
    with pytest.raises(CkksCiphertextError, match=reason):
        acc.add(_envelope(holder, [mangle(_fresh(holder, np.zeros(101)))]), _who())


def test_wrong_count_size_round_and_oversized_streams_are_refused(holder):
    acc = _acc(holder, 100)
    with pytest.raises(CkksCiphertextError, match="values, expected 101"):
        acc.add(_envelope(holder, [_fresh(holder, np.zeros(50))]), _who())
    with pytest.raises(CkksCiphertextError, match="the model needs 2"):
        _acc(holder, 5000).add(_envelope(holder, [_fresh(holder, np.zeros(4096))], 5000), _who())
    with pytest.raises(Exception, match="another round"):
        acc.add(_envelope(holder, [_fresh(holder, np.zeros(101))], round_id=bytes(32)), _who())
    with pytest.raises(Exception, match="exceeds the limit"):
        acc.add(_envelope(holder, [b"\0" * 300_000]), _who())
    assert acc.count == 0


def test_a_ciphertext_at_a_lower_level_is_refused(holder):
    acc = _acc(holder, 100)
    vector = acc.context.load(_fresh(holder, np.ones(101)), slots_used=101)
    lowered = (vector * 0.5).serialize()  # a plain multiplication rescales to a lower level
    with pytest.raises(CkksCiphertextError, match="another modulus level"):
        acc.add(_envelope(holder, [lowered]), _who())


# ------------------------------------------------------------------------ key model


def test_the_appliance_refuses_a_context_that_holds_a_secret_key(holder):
    with pytest.raises(CkksKeyError, match="secret key"):
        CkksAccumulator(PARAMS, holder.export_secret_for_sealing(), RID, 100, model_version=1)


def test_the_appliance_cannot_decrypt(holder):
    acc = _acc(holder, 100)
    x = np.linspace(-1, 1, 100)
    uploads = [(i, _enc(holder.public_context, x, 1.0, i)) for i in (1, 2, 3)]
    for i, upload in uploads:
        acc.add(upload, _who(i))
    with pytest.raises(CkksKeyError, match="secret key"):
        acc.context.try_decrypt(acc.sum_vectors[0])
    # The key holder can, and gets the sum only (recomputed from the signed uploads).
    total = _decrypt(CkksKeyHolder(PARAMS, RID, holder._secret), uploads, 100)
    np.testing.assert_allclose(total[:-1], 3 * x, atol=PARAMS.error_bound(3))


def _three(holder, d=10):
    return [(i, _enc(holder.public_context, np.full(d, 0.1 * i), 1.0, i)) for i in (1, 2, 3)]


def _fresh_holder(holder):
    return CkksKeyHolder(PARAMS, RID, holder._secret)


def test_the_key_holder_refuses_to_decrypt_fewer_than_m_distinct_signed_contributions(holder):
    one = _three(holder)[:1]
    with pytest.raises(CkksContributionsRefusedError, match="sum of 1 contributions"):
        _decrypt(_fresh_holder(holder), one, 10)
    with pytest.raises(CkksContributionsRefusedError, match="counted twice"):
        _decrypt(_fresh_holder(holder), one * 3, 10)  # one client's upload as "a sum of 3"
    with pytest.raises(CkksContributionsRefusedError, match="at least 4"):
        _decrypt(_fresh_holder(holder), _three(holder), 10, minimum=4)  # m from the policy
    # The same party under two indices (two entries with one identity key) counts once.
    twin = {1: _Entry(1), 2: _Entry(2), 3: _Entry(3), 4: _Entry(1)}
    again = [*_three(holder)[:2], (4, _three(holder)[0][1])]
    with pytest.raises(CkksContributionsRefusedError, match="same identity key"):
        _decrypt(_fresh_holder(holder), again, 10, members=twin)


def test_the_key_holder_refuses_contributions_outside_the_roster_or_badly_signed(holder):
    uploads = _three(holder)
    not_on_roster = {1: _Entry(1), 2: _Entry(2)}
    with pytest.raises(CkksRoleError, match="not a roster member"):
        _decrypt(_fresh_holder(holder), uploads, 10, members=not_on_roster)
    wrong_role = {1: _Entry(1), 2: _Entry(2), 3: _Entry(3, Role.KEY_HOLDER)}
    with pytest.raises(CkksRoleError, match="does not contribute"):
        _decrypt(_fresh_holder(holder), uploads, 10, members=wrong_role)
    # Re-attributed: client 1's upload presented as client 4's.
    moved = [*uploads[:2], (4, uploads[0][1])]
    with pytest.raises(CkksCiphertextError, match="names member 1, not 4"):
        _decrypt(_fresh_holder(holder), moved, 10)
    # Signed for another model version (or round, parameters, context): the digest differs.
    other = CkksEncryptor(PARAMS, holder.public_context, RID).encrypt(
        np.zeros(10), 1.0, identity=SIGNERS[3], index=3, name="c3", model_version=7
    )
    with pytest.raises(BadSignatureError, match="c3"):
        _decrypt(_fresh_holder(holder), [*uploads[:2], (3, other)], 10)


def test_the_key_holder_decrypts_one_sum_per_round(holder):
    kh = _fresh_holder(holder)
    total = _decrypt(kh, _three(holder), 10)
    np.testing.assert_allclose(total[:-1], 0.6, atol=1e-6)
    with pytest.raises(CkksContributionsRefusedError, match="already decrypted"):
        _decrypt(kh, _three(holder), 10)  # a second subset would reveal a difference


def test_the_sealed_secret_context_opens_only_for_its_recipient(holder):
    identities = {i: IdentityKey.generate() for i in (1, 2, 3)}
    parties = {i: CkksParty(RID, i) for i in (1, 2, 3)}
    adverts = {
        i: read_advert(parties[i].advert(identities[i], None), RID).verify(
            RID, identities[i].verify_key_bytes, signer=f"c{i}"
        )
        for i in (2, 3)
    }
    kh_advert = read_advert(parties[1].advert(identities[1], holder.public_context), RID)
    kh_advert.verify(RID, identities[1].verify_key_bytes, signer="kh")
    sealed = parties[1].seal_for(adverts[2], holder.export_secret_for_sealing())
    advert, got = read_bundle(bundle_message(RID, 1, kh_advert, sealed), RID)
    check_secret_context(parties[2].open_from(advert, got), advert.context)
    with pytest.raises(DecryptionError):
        parties[3].open_from(advert, got)  # sealed to client 2, not 3
    other = CkksParty(bytes(32), 2)
    with pytest.raises(DecryptionError):
        other.open_from(advert, got)  # another round
    with pytest.raises(Exception, match="does not verify"):  # a context the key holder never signed
        other_ctx = CkksKeyHolder.generate(PARAMS, RID).public_context
        forged = read_advert(
            pack_message(
                "ckks_keys", RID, i=1, pk=kh_advert.public_key, s=kh_advert.signature, ctx=other_ctx
            ),
            RID,
        )
        forged.verify(RID, identities[1].verify_key_bytes, signer="kh")


# ------------------------------------------------------------------ appliance round


def _round(clients=5, **ckks):
    """A ckks round of ``clients`` members; by default c1 is the separate key holder."""
    ckks.setdefault("key_holder", "c1")
    config = parse_config(
        {
            "federation": {"name": "t"},
            "aggregation": {"mode": "ckks", "min_clients": 3},
            "ckks": ckks,
        }
    )
    ids = {i: IdentityKey.generate() for i in range(1, clients + 1)}
    members = [Member(i, f"c{i}", ids[i].verify_key_bytes) for i in ids]
    start = pb.RoundStart(model_version=3)
    active, audit = build_ckks_round(config, 1, RID, members, 136, start)
    return active, ids, start, audit


def test_the_defaults_name_no_data_owner_as_key_holder_and_share_nothing():
    config = parse_config({"federation": {"name": "t"}})
    assert config.ckks.share_secret_key is False and config.ckks.key_holder == ""
    assert config.ckks.key_holder_contributes is False and config.ckks.min_contributors == 3
    with pytest.raises(ValueError, match="needs a designated key holder"):
        _round(key_holder="")
    _, _, start, audit = _round()
    assert not start.ckks.share_secret_key and not start.ckks.key_holder_contributes
    assert start.minimum_survivors == 3 and audit["key_holder"] == "c1"


def test_the_appliance_round_refuses_a_secret_key_context_and_aborts():
    active, ids, start, _ = _round()
    assert start.ckks.key_holder_index == 1 and not start.ckks.key_holder_contributes
    holder = CkksKeyHolder.generate(PARAMS, RID)
    party = CkksParty(RID, 1)
    payload = party.advert(ids[1], holder.export_secret_for_sealing())
    header = pb.UploadHeader(round_id=RID, phase=0, kind="ckks", total_bytes=len(payload))
    with pytest.raises(UploadRefusedError, match="secret key"):
        active.accept("c1", header, payload)
    with pytest.raises(Exception, match="no usable public context"):
        active.close_phase()


def test_a_forged_advert_is_refused():
    active, ids, _, _ = _round()
    payload = CkksParty(RID, 2).advert(ids[3], None)  # signed with someone else's key
    header = pb.UploadHeader(round_id=RID, phase=0, kind="ckks", total_bytes=len(payload))
    with pytest.raises(UploadRefusedError, match="does not verify") as refused:
        active.accept("c2", header, payload)
    assert refused.value.code == "UNAUTHENTICATED" and "c2" not in active.expected


def test_size_guard_and_key_holder_checks_refuse_with_the_reason():
    with pytest.raises(ValueError, match=r"size guard.*use mode secagg\+"):
        _round(budget_bytes=10_000)
    with pytest.raises(ValueError, match="not among the ready clients"):
        _round(key_holder="nobody")
    with pytest.raises(ValueError, match="at least 3 data owners"):
        _round(clients=3, key_holder="c3")
    with pytest.raises(ValueError, match="at least 5 data owners"):
        _round(min_contributors=5)  # m from the configuration: 4 data owners are too few
    with pytest.raises(ValueError, match="no level"):
        _round(coeff_mod_bit_sizes=[60, 40])
    active, _, start, audit = _round(key_holder="c4")
    assert isinstance(active, CkksRound) and not start.ckks.key_holder_contributes
    assert audit["ciphertexts_per_client"] == 1 and start.vector_length == 137
    _, _, start, _ = _round(clients=3, key_holder="c3", key_holder_contributes=True)
    assert start.ckks.key_holder_contributes  # only by explicit configuration


def test_clients_refuse_rounds_whose_parameters_would_not_protect_them():
    members = [pb.Participant(index=i, name=f"c{i}") for i in (1, 2, 3, 4)]
    good = pb.CkksParams(
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        scale_bits=40,
        key_holder_index=1,
        key_holder_contributes=True,
        max_error=1e-3,
    )
    start = pb.RoundStart(participants=members, clip=1.0, ckks=good)
    assert parameters_from(start).slots == 4096
    weak = pb.RoundStart()
    weak.CopyFrom(start)
    del weak.ckks.coeff_mod_bit_sizes[:]
    weak.ckks.coeff_mod_bit_sizes.extend([60, 40])
    with pytest.raises(CkksParameterError, match="no level"):
        parameters_from(weak)
    few = pb.RoundStart()
    few.CopyFrom(start)
    few.ckks.key_holder_contributes = False
    del few.participants[3]
    with pytest.raises(Exception, match="only 2 data owners"):
        parameters_from(few)


def _upload(active, name, phase, payload):
    header = pb.UploadHeader(round_id=RID, phase=phase, kind="ckks", total_bytes=len(payload))
    active.accept(name, header, payload)


def _drive_to_decrypt(active, ids, d=136):
    """Run the keys, context and input phases in process (c1 is the key holder, sealing
    nothing); returns the key holder and the first forwarded contribution step."""
    holder = CkksKeyHolder.generate(PARAMS, RID)
    parties = {i: CkksParty(RID, i) for i in ids}
    for i in ids:
        ctx = holder.public_context if i == 1 else None
        _upload(active, f"c{i}", 0, parties[i].advert(ids[i], ctx))
    roster_task = active.close_phase()["c1"]
    assert set(read_roster(roster_task.step.payload, RID)) == set(ids) - {1}
    _upload(active, "c1", 1, sealed_message(RID, {}))  # the default: no data owner gets it
    bundles = active.close_phase()
    assert set(bundles) == {f"c{i}" for i in ids if i != 1}
    for name, task in bundles.items():
        i = int(name[1:])
        advert, sealed = read_bundle(task.step.payload, RID)
        assert sealed is None
        x = np.full(d, 0.1 * i, dtype=np.float32)
        upload = CkksEncryptor(PARAMS, advert.context, RID).encrypt(
            x, 1.0, identity=ids[i], index=i, name=name, model_version=3
        )
        _upload(active, name, 2, upload)
    return holder, active.close_phase()["c1"]


def _key_holder(active, ids, holder, task, d=136):
    """The key holder's answers to the forwarded contributions; returns the decrypted sum."""
    members = {i: _Roster(f"c{i}", ids[i].verify_key_bytes, i == 1) for i in ids}
    received = []
    while True:
        position, total, index, upload = read_contribution(task.step.payload, RID, 10**7)
        received.append((index, upload))
        if position == total - 1:
            return holder.decrypt_contributions(
                received,
                members,
                dimension=d,
                model_version=3,
                key_holder=1,
                key_holder_contributes=False,
                minimum=3,
            )
        _upload(active, "c1", 3, ack_message(RID, position))
        task = active.close_phase()["c1"]


class _Roster:
    def __init__(self, name, key, holder):
        self.name, self.identity_key = name, key
        self.role = Role.KEY_HOLDER if holder else Role.DATA_OWNER


def test_the_round_runs_in_process_and_refuses_out_of_phase_and_out_of_range():
    active, ids, _, _ = _round()
    with pytest.raises(UploadRefusedError, match="the round is in phase keys"):
        _upload(active, "c2", 2, b"x")
    holder, task = _drive_to_decrypt(active, ids)
    weighted = _key_holder(active, ids, holder, task)
    np.testing.assert_allclose(weighted[:-1], 1.4, atol=1e-5)  # 0.2+0.3+0.4+0.5
    poisoned = weighted.copy()
    poisoned[:-1] *= 100  # a mean of 35: outside the clipping range ±1
    with pytest.raises(UploadRefusedError, match="outside the clipping range"):
        _upload(active, "c1", 3, result_message(RID, poisoned.astype("<f8").tobytes()))
    with pytest.raises(Exception, match="did not return the decrypted sum"):
        active.close_phase()


def test_the_round_publishes_the_decrypted_mean():
    active, ids, _, _ = _round()
    holder, task = _drive_to_decrypt(active, ids)
    weighted = _key_holder(active, ids, holder, task)
    _upload(active, "c1", 3, result_message(RID, weighted.astype("<f8").tobytes()))
    assert active.close_phase() == {} and active.finished
    aggregate = active.aggregate()
    np.testing.assert_allclose(aggregate.mean_update, 0.35, atol=1e-5)
    assert aggregate.total_weight == pytest.approx(4.0, abs=1e-5)
    assert aggregate.contributors == ("c2", "c3", "c4", "c5") and aggregate.dropped == ()


def test_a_key_holder_refusal_aborts_the_round_with_its_reason():
    active, ids, _, _ = _round()
    _drive_to_decrypt(active, ids)
    _upload(active, "c1", 3, refusal_message(RID, "only 1 distinct signer"))
    with pytest.raises(CkksError, match="the key holder refused: only 1 distinct signer"):
        active.close_phase()
