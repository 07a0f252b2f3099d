"""Adversarial clients over real gRPC: each attack detected or neutralised, outcome exact.

The protocol-level versions (no network) are in tests/crypto/test_protocol_refusals.py; here one
participant of a real secure round misbehaves through the client shim, and each test states
exactly what happens to the round, to the honest clients and to the published model.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import grpc
import numpy as np
import pytest
from sealagg_testkit.clients import (
    FAST,
    Hooked,
    delta,
    expected_bias_and_weight,
    index_of,
    join,
    published_flat,
    run_clients,
    weight,
)

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.messages import AdvertiseKeys, MaskedInput, ShareKeys, UnmaskShares, decode

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # ~10 s each: one round per attack
HONEST = ["client0", "client1", "client2", "client3"]
ATTACKER = "client4"


@dataclasses.dataclass
class Result:
    outcome: object
    reports: dict
    errors: dict
    attacker_error: BaseException | None
    version: int
    flat: np.ndarray
    audited: int


def _attack(dep, running, make, honest_delay: float = 0.0) -> Result:
    """One secagg+ round of five clients; the attacker's Participant comes from ``make``."""
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 5, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)

    def slow(start, tensors):
        i = int(threading.current_thread().name)
        time.sleep(honest_delay)
        return delta(i), weight(i), {}

    threads, reports, errors = run_clients(dep, HONEST, compute=slow if honest_delay else None)
    bad, _, bad_errors = run_clients(dep, [ATTACKER], make=make)
    app.wait(60)
    join(threads + bad)
    version, flat, audited = published_flat(dep)
    return Result(
        app.app.orchestrator.history[-1],
        reports,
        errors,
        bad_errors.get(ATTACKER),
        version,
        flat,
        audited,
    )


def _hooked(hook):
    def make(conn):
        p = Hooked(conn, poll_seconds=0.5)
        p.hook = hook
        return p

    return make


def _exact(result: Result, members: list[int]) -> None:
    assert result.version == 2 and result.audited > 10
    np.testing.assert_allclose(result.flat, expected_bias_and_weight(members), atol=2e-6)


def test_unsigned_share_is_refused_at_upload(deployment, running):
    """The attacker garbles the sealed share it deals to client1 without signing it again.
    Sealed shares carry their sender's signature (issue 17, item 6), which the appliance checks
    at upload: the attacker's shares are refused (UNAUTHENTICATED), it never becomes a sharer,
    and the round publishes the exact mean of the four honest clients, none of which aborts.
    (Before shares were signed, client1 aborted with DecryptionError and nobody was blamed;
    signed garbage is blamed and its sender excluded: tests/e2e/test_malicious_masked.py.)"""

    def hook(phase, payload):
        if phase != 2:  # share keys (after the coins)
            return payload
        msg = decode(payload)
        shares = dict(msg.sealed_shares)
        garbled = os.urandom(len(shares[2].ciphertext))  # client1 is index 2 in the round
        shares[2] = dataclasses.replace(shares[2], ciphertext=garbled)
        return ShareKeys(msg.round_id, shares).encode()

    r = _attack(deployment(clients=5), running, _hooked(hook))
    assert not r.errors, r.errors
    assert r.attacker_error is not None
    assert r.attacker_error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert r.outcome.outcome == "published", r.outcome
    assert r.outcome.contributors == ("client0", "client1", "client2", "client3")
    _exact(r, [0, 1, 2, 3])


def test_bad_unmask_shares_are_routed_around(deployment, running):
    """The attacker corrupts every self-mask share it reveals. Each seed has more than t shares
    (complete graph, n=5, t=2): the extra shares expose the inconsistency, t honest shares
    rebuild the seed its owner committed to in its signed advertisement, and the round
    publishes the exact mean. (Before the seed commitments this aborted the round; with
    exactly t shares it still aborts, never a wrong sum: see
    tests/crypto/test_transcript_attacks.py.)"""

    def hook(phase, payload):
        if phase != 5:  # unmasking
            return payload
        msg = decode(payload)
        flipped = {v: bytes([s[0] ^ 0xFF]) + s[1:] for v, s in msg.self_mask_shares.items()}
        return UnmaskShares(msg.round_id, flipped, msg.mask_key_shares).encode()

    r = _attack(deployment(clients=5), running, _hooked(hook))
    assert r.outcome.outcome == "published", r.outcome
    assert not r.errors and r.attacker_error is None, (r.errors, r.attacker_error)
    _exact(r, [0, 1, 2, 3, 4])


class _Equivocator(Hooked):
    """Advertises its keys, then advertises a second, different key pair."""

    def _send(self, start, phase, msg, *rest):
        sent = super()._send(start, phase, msg, *rest)
        if phase == 0:
            other = dataclasses.replace(
                msg.keys, cipher_public=os.urandom(32), mask_public=os.urandom(32)
            )
            header = pb.UploadHeader(round_id=start.round_id, phase=0, kind="protocol")
            try:
                self.connection.submit(header, AdvertiseKeys(msg.round_id, other).encode())
            except grpc.RpcError as error:
                self.second = error.code()
        return sent


def test_equivocating_keys_are_refused(deployment, running):
    """A client sends two different key advertisements (to make peers disagree on its keys).
    The appliance relays exactly one directory: the second is refused ALREADY_EXISTS, and the
    round publishes the exact mean including the attacker's honestly masked input.
    (Equivocation by the appliance is caught by the consistency check:
    test_protocol_refusals.py::test_inconsistent_survivor_lists_are_detected.)"""
    seen = {}

    def make(conn):
        p = _Equivocator(conn, poll_seconds=0.5)
        seen["p"] = p
        return p

    r = _attack(deployment(clients=5), running, make, honest_delay=1.5)  # phase 0 stays open
    assert seen["p"].second == grpc.StatusCode.ALREADY_EXISTS
    assert not r.errors and r.attacker_error is None
    assert r.outcome.outcome == "published"
    _exact(r, [0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("change", "code"),
    [(-4, grpc.StatusCode.INVALID_ARGUMENT), (4096, grpc.StatusCode.RESOURCE_EXHAUSTED)],
    ids=["short", "long"],
)
def test_wrong_vector_length_is_refused(deployment, running, change, code):
    """A masked input 1 coordinate short, or 1024 too long: refused at upload (the long one
    from its declared size, before reading it); the attacker is dropped before masking, its
    pairwise masks are removed, and the round publishes the exact mean of the four others."""

    def hook(phase, payload):
        if phase != 3:  # masked input
            return payload
        msg = decode(payload)
        vec = bytes(msg.vector)
        vec = vec[:change] if change < 0 else vec + b"\x00" * change
        return MaskedInput(msg.round_id, vec).encode()

    r = _attack(deployment(clients=5), running, _hooked(hook))
    assert isinstance(r.attacker_error, grpc.RpcError) and r.attacker_error.code() == code
    assert not r.errors, r.errors
    assert r.outcome.outcome == "published"
    assert r.outcome.contributors == tuple(HONEST) and r.outcome.dropped == (ATTACKER,)
    _exact(r, [0, 1, 2, 3])


@pytest.mark.parametrize(
    ("slot", "shift", "why"),
    [("update", (1 << 31) - (1 << 27), "clipping range"), ("weight", 1 << 31, "weight")],
)
def test_values_outside_the_quantization_range_are_refused(deployment, running, slot, shift, why):
    """Inside its mask the attacker adds a huge value to every update coordinate, or to its
    weight slot (nobody can see it there). The unmasked sum decodes to a mean beyond
    [-clip, clip], or to a total weight outside (0, n]: no honest clients can produce that,
    so the appliance refuses the aggregate, aborts the round and keeps the model. (Before this
    check the first case published poisoned weights and the second crashed the round loop.)
    A shift small enough to keep the mean in range is not detectable without range proofs."""

    def hook(phase, payload):
        if phase != 3:  # masked input
            return payload
        msg = decode(payload)
        vec = np.frombuffer(bytes(msg.vector), dtype="<u4").copy()
        target = vec[-1:] if slot == "weight" else vec[:-1]
        target += np.uint32(shift)
        return MaskedInput(msg.round_id, vec.tobytes()).encode()

    r = _attack(deployment(clients=5), running, _hooked(hook))
    assert r.outcome.outcome == "aborted", r.outcome
    assert r.outcome.reason.startswith("aggregate refused:") and why in r.outcome.reason
    assert {rep[0].outcome for rep in r.reports.values()} == {"aborted"}
    assert r.version == 1


class _Repeater(Hooked):
    """Sends its key advertisement twice (while the others still train, so the phase is open)."""

    def _send(self, start, phase, msg, *rest):
        sent = super()._send(start, phase, msg, *rest)
        if phase == 0:
            header = pb.UploadHeader(round_id=start.round_id, phase=0, kind="protocol")
            try:
                self.connection.submit(header, msg.encode())
            except grpc.RpcError as error:
                self.again = error.code()
        return sent


def test_repeated_upload_is_refused_and_counted_once(deployment, running):
    """The same upload sent twice: the second is refused ALREADY_EXISTS and the published
    mean counts the attacker exactly once."""
    seen = {}

    def make(conn):
        seen["p"] = _Repeater(conn, poll_seconds=0.5)
        return seen["p"]

    r = _attack(deployment(clients=5), running, make, honest_delay=1.5)
    assert seen["p"].again == grpc.StatusCode.ALREADY_EXISTS
    assert r.outcome.outcome == "published"
    _exact(r, [0, 1, 2, 3, 4])


def test_upload_after_the_deadline_is_refused(deployment, running):
    """The attacker trains past the advertise deadline (8 s), then uploads: refused with
    FAILED_PRECONDITION (the phase moved on); the client shim then waits for the outcome and
    reports the round; the model is the exact mean of the four punctual clients."""

    def compute(start, tensors):
        i = index_of(ATTACKER)
        time.sleep(FAST["advertise_keys"] + 1.5)
        return delta(i), weight(i), {}

    def make(conn):
        p = Hooked(conn, poll_seconds=0.5)
        run = p.run_round
        p.run_round = lambda _compute, start=None: run(compute, start)
        return p

    r = _attack(deployment(clients=5), running, make)
    assert r.attacker_error is None
    assert not r.errors
    assert r.outcome.outcome == "published"
    assert r.outcome.contributors == tuple(HONEST) and r.outcome.dropped == (ATTACKER,)
    _exact(r, [0, 1, 2, 3])
