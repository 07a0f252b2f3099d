"""CKKS asynchronous buffers (issue 21): contributions sign the buffer's staleness context.

Real TenSEAL keys. The key holder decrypts a buffer's sum only when every contribution was
signed over exactly its own view of the buffer (parent, every member's base version, the
staleness function) and states the base version that view lists for its signer; the
decrypted mean is the staleness-weighted mean; a total weight above the sum of the
contributors' s(tau) is refused.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from sealagg.crypto import IdentityKey
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.ckks import (
    CkksAccumulator,
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    Contributor,
)
from sealagg.crypto.ckks_buffer import buffer_context_for
from sealagg.crypto.errors import (
    BadSignatureError,
    BaseVersionRefusedError,
    CkksContributionsRefusedError,
    MalformedMessageError,
)
from sealagg.crypto.roster import Role
from sealagg.crypto.staleness import StalenessPolicy

pytest.importorskip("tenseal")

PARAMS = CkksParameters()
RID = bytes(range(32))
D = 300
KEY_HOLDER = 9
POLICY = StalenessPolicy(kind="polynomial", max_staleness=3, a=0.5)
PARENT = 5
BASES = {1: 5, 2: 4, 3: 3, 4: 2}  # tau 0, 1, 2, 3
WEIGHTS = {1: 1.0, 2: 0.5, 3: 0.8, 4: 0.9}
SIGNERS = {i: IdentityKey.generate() for i in BASES}
UPDATES = {i: np.random.default_rng(i).uniform(-1, 1, D).astype(np.float32) for i in BASES}


class _Entry:
    def __init__(self, i: int) -> None:
        self.name, self.identity_key, self.role = (
            f"c{i}",
            SIGNERS[i].verify_key_bytes,
            Role.DATA_OWNER,
        )


MEMBERS = {i: _Entry(i) for i in BASES}


@pytest.fixture
def holder() -> CkksKeyHolder:
    """Fresh keys per test: a key holder decrypts at most one sum."""
    return CkksKeyHolder.generate(PARAMS, RID)


def _context(bases=None, parent: int = PARENT, policy: StalenessPolicy = POLICY) -> BufferContext:
    return BufferContext(parent, bases or BASES, policy)


def _upload(holder, i: int, context: BufferContext, *, fold: bool = True, weight=None) -> bytes:
    w = WEIGHTS[i] if weight is None else weight
    if fold:
        w = context.fold_weight(i, w)
    encryptor = CkksEncryptor(PARAMS, holder.public_context, RID, buffer=context)
    return encryptor.encrypt(
        UPDATES[i],
        w,
        identity=SIGNERS[i],
        index=i,
        name=f"c{i}",
        model_version=context.parent_version,
    )


def _decrypt(holder: CkksKeyHolder, uploads, context: BufferContext) -> np.ndarray:
    return holder.decrypt_contributions(
        uploads,
        MEMBERS,
        dimension=D,
        model_version=PARENT,
        key_holder=KEY_HOLDER,
        key_holder_contributes=False,
        minimum=3,
        buffer=context,
    )


def test_the_decrypted_buffer_is_the_staleness_weighted_mean(holder):
    context = _context()
    uploads = [(i, _upload(holder, i, context)) for i in BASES]
    weighted = _decrypt(holder, uploads, context)
    s = {i: (1 + PARENT - b) ** -0.5 for i, b in BASES.items()}
    total = sum(WEIGHTS[i] * s[i] for i in BASES)
    expected = sum(WEIGHTS[i] * s[i] * UPDATES[i].astype(np.float64) for i in BASES) / total
    plain = sum(UPDATES[i].astype(np.float64) for i in BASES) / len(BASES)
    bound = PARAMS.error_bound(len(BASES))
    assert abs(weighted[-1] - total) <= bound
    got = weighted[:-1] / weighted[-1]
    assert np.abs(got - expected).max() <= 2 * bound / total
    assert np.abs(got - plain).max() > 100 * bound  # the staleness weights matter


def test_a_contribution_claiming_another_base_version_is_refused_before_any_decryption(holder):
    honest = _context()
    lying = _context({**BASES, 4: 4})  # member 4 claims it trained on 4 (tau 1, not 3)
    uploads = [(i, _upload(holder, i, honest)) for i in (1, 2, 3)]
    uploads.append((4, _upload(holder, 4, lying)))
    with pytest.raises(BaseVersionRefusedError, match="claims base version 4; the buffer lists 2"):
        _decrypt(holder, uploads, honest)
    # The appliance's accumulator refuses it on arrival too.
    accumulator = CkksAccumulator(
        PARAMS, holder.public_context, RID, D, model_version=PARENT, buffer=honest
    )
    with pytest.raises(BaseVersionRefusedError, match="claims base version 4"):
        accumulator.add(uploads[3][1], Contributor(4, "c4", SIGNERS[4].verify_key_bytes))
    assert accumulator.count == 0


def test_a_buffer_whose_members_saw_different_contexts_is_refused(holder):
    """An appliance showing member 1 another base version for member 3 (or another parent,
    or another staleness function) gets a contribution the key holder refuses."""
    honest = _context()
    for other in (
        _context({**BASES, 3: 4}),
        _context(policy=StalenessPolicy(kind="constant", max_staleness=3)),
    ):
        uploads = [(1, _upload(holder, 1, other))] + [
            (i, _upload(holder, i, honest)) for i in (2, 3)
        ]
        with pytest.raises(BaseVersionRefusedError, match="signed over another buffer context"):
            _decrypt(holder, uploads, honest)


def test_restated_claims_without_a_new_signature_are_refused(holder):
    """Rewriting the stated base version and context of a contribution signed over another
    buffer: the claims now match, the signature does not."""
    honest, lying = _context(), _context({**BASES, 4: 4})
    body = msgpack.unpackb(_upload(holder, 4, lying), raw=False, strict_map_key=False)
    body["b"], body["x"] = 2, honest.digest()
    forged = msgpack.packb(body, use_bin_type=True)
    uploads = [(i, _upload(holder, i, honest)) for i in (1, 2, 3)] + [(4, forged)]
    with pytest.raises(BadSignatureError):
        _decrypt(holder, uploads, honest)


def test_buffer_and_synchronous_contributions_do_not_mix(holder):
    context = _context()
    sync = CkksEncryptor(PARAMS, holder.public_context, RID).encrypt(
        UPDATES[1], 1.0, identity=SIGNERS[1], index=1, name="c1", model_version=PARENT
    )
    uploads = [(1, sync)] + [(i, _upload(holder, i, context)) for i in (2, 3)]
    with pytest.raises(MalformedMessageError):  # it states no base version
        _decrypt(holder, uploads, context)
    # A buffer contribution (claims stripped) is no synchronous one: another domain tag.
    body = msgpack.unpackb(_upload(holder, 1, context), raw=False, strict_map_key=False)
    del body["b"], body["x"]
    stripped = msgpack.packb(body, use_bin_type=True)
    accumulator = CkksAccumulator(PARAMS, holder.public_context, RID, D, model_version=PARENT)
    with pytest.raises(BadSignatureError):
        accumulator.add(stripped, Contributor(1, "c1", SIGNERS[1].verify_key_bytes))


def test_a_total_weight_above_the_staleness_weights_is_refused(holder):
    """Member 4 (tau 3, s = 1/2) weighs itself as if fresh: with every w = 1 the total
    exceeds the sum of s(tau), and the key holder releases nothing."""
    context = _context()
    uploads = [(i, _upload(holder, i, context, weight=1.0)) for i in (1, 2, 3)]
    uploads.append((4, _upload(holder, 4, context, fold=False, weight=1.0)))
    with pytest.raises(CkksContributionsRefusedError, match=r"exceeds .* staleness weights"):
        _decrypt(holder, uploads, context)


def test_a_buffer_context_is_refused_unless_it_fits_the_round():
    owners = list(BASES)
    good = buffer_context_for(
        PARENT, {**BASES, KEY_HOLDER: 0}, POLICY, data_owners=owners, key_holder=KEY_HOLDER
    )
    assert good.weight_of(4) == pytest.approx(0.5) and KEY_HOLDER not in good.base_versions
    with pytest.raises(BaseVersionRefusedError, match="base version for its key holder"):
        buffer_context_for(
            PARENT, {**BASES, KEY_HOLDER: 5}, POLICY, data_owners=owners, key_holder=KEY_HOLDER
        )
    with pytest.raises(BaseVersionRefusedError, match="exactly one base version per data owner"):
        buffer_context_for(PARENT, {1: 5, 2: 4}, POLICY, data_owners=owners, key_holder=KEY_HOLDER)
    with pytest.raises(BaseVersionRefusedError, match="participant 4"):  # tau 4 > 3
        buffer_context_for(
            PARENT, {**BASES, 4: 1}, POLICY, data_owners=owners, key_holder=KEY_HOLDER
        )
    with pytest.raises(BaseVersionRefusedError, match="no data owner"):
        buffer_context_for(
            PARENT, BASES, POLICY, data_owners=[*owners, KEY_HOLDER], key_holder=KEY_HOLDER
        )
    with pytest.raises(BaseVersionRefusedError, match="lists base version 3 for this client"):
        good.check_own(3, trained_on=4)
