"""Mode ckks end to end: real gRPC over loopback TLS, real TenSEAL keys, real clients."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from sealagg_testkit.rounds import poll_round_ends

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.rounds import ActiveRound
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model, make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.testing import start_participants
from sealagg.crypto import IdentityKey
from sealagg.crypto.ckks import (
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    ContributionBinding,
    pack_message,
)
from sealagg.crypto.ckks_keys import CkksParty, read_bundle
from sealagg.crypto.roster import Role

pytest.importorskip("tenseal")

DIM = Layout.of(base_model()).dimension
FAST = {
    "advertise_keys": 4,
    "share_keys": 4,
    "masked_input": 4,
    "consistency_check": 4,
    "unmasking": 4,
}
PARAMS = CkksParameters()


def _delta(i: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(300 + i).normal(0, 0.05, dim).astype(np.float32)


def _weight(i: int) -> float:
    return 0.2 + 0.15 * i


def _run_clients(dep, names, called=None, dim=DIM):
    def compute_for(name):
        i = int(name.removeprefix("client"))

        def compute(start, tensors):
            if called is not None:
                called.add(name)
            return _delta(i, dim), _weight(i), {"n": i}

        return compute

    return start_participants(dep.kits, dep.address, names, compute_for)


def _weighted_mean(members: list[int], dim: int = DIM) -> tuple[np.ndarray, float]:
    w = np.array([_weight(i) for i in members])
    x = np.stack([_delta(i, dim).astype(np.float64) for i in members])
    return (w[:, None] * x).sum(0) / w.sum(), float(w.sum())


def _published(dep):
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        base = store.load_model(1)
        tensors = store.load_model(model.version)
        layout = Layout.of(tensors)
        delta = flatten(tensors, layout).astype(np.float64) - flatten(base, layout)
        entries = list(store.audit.entries())
        return model, delta, store.rounds(), entries
    finally:
        store.close()


def _finish(app, threads):
    app.wait(90)
    for t in threads:
        t.join(30)


def _check_mean(delta: np.ndarray, members: list[int], dim: int = DIM) -> None:
    mean, total = _weighted_mean(members, dim)
    bound = PARAMS.error_bound(len(members)) / total + 2e-7  # + float32 storage of the model
    assert np.abs(delta - mean).max() <= bound


def test_ckks_round_publishes_the_weighted_mean_within_the_error_bound(
    tmp_path, running, monkeypatch
):
    # 12,162 values: three ciphertexts per client (1.3 MB, a multi-chunk upload), and the
    # packing runs across the tensor boundary. client3 is the key holder (no update).
    model = {"a.weight": np.zeros((95, 128), np.float32), "a.bias": np.zeros(2, np.float32)}
    dep = make_deployment(tmp_path, clients=4, model=model)
    dep.configure(
        aggregation={"mode": "ckks", "min_clients": 4, "rounds": 1},
        deadlines=FAST,
        ckks={"key_holder": "client3"},
    )
    dep.sign_roster(roles={"client3": Role.KEY_HOLDER})  # the authority designates it
    uploads: list[tuple[str, bytes]] = []
    original = ActiveRound.accept

    def accept(self, name, header, payload):
        uploads.append((name, bytes(payload)))
        original(self, name, header, payload)

    monkeypatch.setattr(ActiveRound, "accept", accept)
    app = running(dep.folder)
    d = 95 * 128 + 2
    threads, reports, errors = _run_clients(dep, sorted(dep.kits), dim=d)
    _finish(app, threads)
    # Nothing unencrypted left a data owner: no upload holds its update's values (float32 x,
    # or the float64 w·x that gets encrypted); only the key holder's final sum is plaintext.
    # 4 adverts, the key holder's (empty) sealed contexts, 3 signed inputs, 2 acks, 1 result.
    assert not errors, errors
    assert len(uploads) == 4 + 1 + 3 + 2 + 1
    for i in range(3):
        x = _delta(i, d)
        probes = [x[100:104].tobytes(), (_weight(i) * x[100:102].astype(np.float64)).tobytes()]
        assert not any(p in payload for p in probes for _, payload in uploads)
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}, reports
    assert all(reports[f"client{i}"].bytes_sent > 3 * 230_000 for i in range(3))
    model, delta, rounds, entries = _published(dep)
    assert model.version == 2 and rounds[-1].status == "accepted"
    _check_mean(delta, [0, 1, 2], dim=d)
    params = [e for e in entries if e.event == "round_parameters"][-1].details
    assert params["mode"] == "ckks" and params["key_holder"] == "client3"
    assert params["share_secret_key"] is False and params["min_contributors"] == 3
    assert params["ciphertexts_per_client"] == 3 == -(-(d + 1) // 4096)


def test_separate_key_holder_sends_no_update(deployment, running):
    dep = deployment(clients=4)
    dep.configure(
        aggregation={"mode": "ckks", "min_clients": 4, "rounds": 1},
        deadlines=FAST,
        ckks={"key_holder": "client3", "share_secret_key": False},
    )
    dep.sign_roster(roles={"client3": Role.KEY_HOLDER})
    app = running(dep.folder)
    called: set[str] = set()
    threads, _, errors = _run_clients(dep, sorted(dep.kits), called)
    _finish(app, threads)
    assert not errors, errors
    assert called == {"client0", "client1", "client2"}
    _, delta, rounds, _ = _published(dep)
    assert rounds[-1].status == "accepted"
    _check_mean(delta, [0, 1, 2])


def _key_holder_last(dep, clients: int, **ckks) -> None:
    """Configure a ckks round whose key holder is the last client (it sends no update)."""
    dep.configure(
        aggregation={"mode": "ckks", "min_clients": clients, "rounds": 1},
        deadlines=FAST,
        ckks={"key_holder": f"client{clients - 1}", **ckks},
    )
    dep.sign_roster(roles={f"client{clients - 1}": Role.KEY_HOLDER})


def _raw_client(dep, name: str, behaviour, out: dict) -> threading.Thread:
    """A hand-driven client: advertises a real key, then does what ``behaviour`` says."""

    def work() -> None:
        conn = Connection(dep.kits[name], address=dep.address)
        identity = IdentityKey.from_seed(dep.kits[name].identity_seed)
        try:
            while (task := conn.get_task(1.0)).WhichOneof("kind") != "round_start":
                pass
            start = task.round_start
            rid = bytes(start.round_id)
            party = CkksParty(rid, start.client_index)
            header = pb.UploadHeader(round_id=rid, phase=0, kind="ckks")
            conn.submit(header, party.advert(identity, None))
            if behaviour == "drop":
                return  # vanishes after the keys phase
            while True:
                task = conn.get_task(1.0)
                if task.WhichOneof("kind") == "step" and task.step.phase == 2:
                    break
            advert, _ = read_bundle(task.step.payload, rid)
            header = pb.UploadHeader(round_id=rid, phase=2, kind="ckks")
            me = (identity, start.client_index, name, start.model_version)
            try:
                conn.submit(header, behaviour(advert.context, rid, me))
            except grpc.RpcError as error:
                out["code"], out["detail"] = error.code(), error.details()
            while conn.get_task(1.0).WhichOneof("kind") != "round_end":
                pass  # collect the outcome, as a live client would
        finally:
            conn.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_a_client_that_drops_after_keys_does_not_break_the_round(deployment, running):
    dep = deployment(clients=5)
    _key_holder_last(dep, 5)
    app = running(dep.folder)
    threads, reports, errors = _run_clients(dep, ["client0", "client1", "client2", "client4"])
    threads.append(_raw_client(dep, "client3", "drop", {}))
    _finish(app, threads)
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}, reports
    _, delta, _, entries = _published(dep)
    _check_mean(delta, [0, 1, 2])
    aggregate = [e for e in entries if e.event == "aggregate"][-1].details
    assert aggregate["dropped"] == ["client3"]


def _signed(rid: bytes, me, fingerprint: bytes, cts: list[bytes]) -> bytes:
    """A correctly signed upload around ``cts``: what refuses it is the ciphertext check."""
    identity, index, name, version = me
    binding = ContributionBinding(rid, version, PARAMS, DIM, fingerprint)
    sig = identity.sign(binding.digest(index, name, cts))
    return pack_message("ckks_input", rid, f=fingerprint, c=cts, i=index, s=sig)


def _foreign_context(context: bytes, rid: bytes, me) -> bytes:
    """Encrypted under a context of the attacker's own (same parameters, other keys)."""
    other = CkksKeyHolder.generate(PARAMS, rid)
    identity, index, name, version = me
    return CkksEncryptor(PARAMS, other.public_context, rid).encrypt(
        _delta(3), 1.0, identity=identity, index=index, name=name, model_version=version
    )


def _wrong_parameters(context: bytes, rid: bytes, me, n: int = 4096) -> bytes:
    """Claims the round's context, but the ciphertext was made under another ring degree."""
    big = CkksParameters(n, (40, 20, 40) if n == 4096 else (60, 40, 40), 40)
    holder = CkksKeyHolder.generate(big, rid)
    real = CkksEncryptor(PARAMS, context, rid).context.fingerprint
    cts = [CkksEncryptor(big, holder.public_context, rid).context.encrypt(np.zeros(DIM + 1))]
    return _signed(rid, me, real, cts)


def _oversized(context: bytes, rid: bytes, me) -> bytes:
    return _wrong_parameters(context, rid, me, 16384)


def _truncated(context: bytes, rid: bytes, me) -> bytes:
    good = CkksEncryptor(PARAMS, context, rid)
    ct = good.context.encrypt(np.zeros(DIM + 1))
    return _signed(rid, me, good.context.fingerprint, [ct[:-200]])


def _padded(context: bytes, rid: bytes, me) -> bytes:
    good = CkksEncryptor(PARAMS, context, rid)
    ct = good.context.encrypt(np.full(DIM + 1, 5.0))
    return _signed(rid, me, good.context.fingerprint, [ct + b"xx"])  # protobuf skips it


def _compressed(context: bytes, rid: bytes, me) -> bytes:
    """The same fresh ciphertext in TenSEAL's default (zstd) encoding: a second encoding."""
    good = CkksEncryptor(PARAMS, context, rid)
    vector = good.context.load(good.context.encrypt(np.full(DIM + 1, 5.0)), slots_used=DIM + 1)
    return _signed(rid, me, good.context.fingerprint, [vector.serialize()])


@pytest.mark.parametrize(
    ("behaviour", "code", "expected"),
    [
        (_foreign_context, "INVALID_ARGUMENT", "another context"),
        (_wrong_parameters, "INVALID_ARGUMENT", "does not parse"),
        (_oversized, "RESOURCE_EXHAUSTED", "exceeds"),
        (_padded, "INVALID_ARGUMENT", "canonical"),
        (_compressed, "INVALID_ARGUMENT", "canonical"),
    ],
    ids=["foreign-context", "wrong-parameters", "oversized", "padded", "compressed"],
)
def test_a_bad_ciphertext_is_refused_and_the_round_completes(
    deployment, running, behaviour, code, expected
):
    dep = deployment(clients=5)
    _key_holder_last(dep, 5)
    app = running(dep.folder)
    began = time.monotonic()
    out: dict = {}
    threads, reports, errors = _run_clients(dep, ["client0", "client1", "client2", "client4"])
    threads.append(_raw_client(dep, "client3", behaviour, out))
    _finish(app, threads)
    assert not errors, errors
    assert out["code"] == getattr(grpc.StatusCode, code) and expected in out["detail"], out
    assert {r.outcome for r in reports.values()} == {"published"}, reports
    _, delta, _, _ = _published(dep)
    _check_mean(delta, [0, 1, 2])
    if code == "INVALID_ARGUMENT":  # refused after reading: the phase closes without waiting
        assert time.monotonic() - began < FAST["masked_input"] + 4


def test_a_model_above_the_budget_is_refused_naming_secagg_plus(deployment, running):
    dep = deployment(clients=4)
    _key_holder_last(dep, 4, budget_bytes=100_000)
    app = running(dep.folder)
    threads, ends = poll_round_ends(dep, sorted(dep.kits))  # refused before it starts
    _finish(app, threads)
    _, _, rounds, _ = _published(dep)
    assert rounds[-1].status == "aborted"
    assert {e.outcome for e in ends.values()} == {pb.RoundEnd.ABORTED}
    reason = next(iter(ends.values())).reason
    assert "size guard" in reason and "secagg+" in reason and "budget_bytes" in reason
