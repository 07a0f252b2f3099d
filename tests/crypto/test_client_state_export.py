"""A client's round state sealed between every phase: the round is still exact, and a state
for another round, node, key or format, or a tampered one, is refused."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from sealagg.crypto.client import SecAggClient
from sealagg.crypto.client_state import (
    PortableTranscriptLedger,
    new_state_key,
    open_identity,
    seal_identity,
)
from sealagg.crypto.errors import (
    DecryptionError,
    MalformedMessageError,
    OutOfPhaseError,
    ReplayedMessageError,
    TranscriptReusedError,
    UnsupportedVersionError,
)
from sealagg.crypto.server import SecAggServer
from sealagg.crypto.testing import make_round


def _carry(client: SecAggClient, key: bytes, u: int) -> SecAggClient:
    """Out and back in, as a fresh process would: nothing survives but the blob."""
    blob = client.export_state(key=key, context=b"node-%d" % u)
    round_id = client._ctx.config.round_id
    return SecAggClient.import_state(blob, key=key, round_id=round_id, context=b"node-%d" % u)


@pytest.mark.parametrize(("n", "degree", "drop"), [(5, None, ()), (8, None, (3,)), (16, 10, ())])
def test_a_round_carried_through_sealed_state_between_every_phase_is_exact(n, degree, drop):
    kit = make_round(n, threshold=3, degree=degree, seed=7)
    key = new_state_key()
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u in list(clients):
        clients[u] = _carry(clients[u], key, u)  # before advertising: identity only
        server.receive(u, clients[u].advertise_keys())
    while server.phase is not None:
        outgoing = server.close_phase()
        if server.phase is None:
            break
        for u, msg in outgoing.items():
            if u in drop and type(msg).__name__ == "ShareBundle":
                continue  # dropped before masking
            client = _carry(clients[u], key, u)
            if type(msg).__name__ == "ShareBundle":
                client.set_input(kit.inputs[u])
            reply = client.handle(msg)
            server.receive(u, reply)
            clients[u] = client
            if client.state == "done":
                with pytest.raises(OutOfPhaseError, match="nothing left to export"):
                    client.export_state(key=key)
    survivors = server.result.survivors
    assert set(survivors) == set(kit.identities) - set(drop)
    np.testing.assert_array_equal(server.result.total, kit.expected_sum(survivors))


def _advertised_client():
    kit = make_round(5, threshold=3)
    client = SecAggClient(kit.config, 1, kit.identities[1])
    client.advertise_keys()
    return kit, client


def test_a_state_for_another_round_node_key_or_version_is_refused():
    kit, client = _advertised_client()
    key = new_state_key()
    blob = client.export_state(key=key, context=b"run-1/node-1")
    rid = kit.config.round_id
    restored = SecAggClient.import_state(blob, key=key, round_id=rid, context=b"run-1/node-1")
    assert restored.state == "await_key_directory"
    with pytest.raises(ReplayedMessageError, match="another round"):
        SecAggClient.import_state(blob, key=key, round_id=bytes(len(rid)), context=b"run-1/node-1")
    with pytest.raises(DecryptionError):
        SecAggClient.import_state(blob, key=key, round_id=rid, context=b"run-1/node-2")
    with pytest.raises(DecryptionError):
        SecAggClient.import_state(blob, key=new_state_key(), round_id=rid, context=b"run-1/node-1")
    outer = msgpack.unpackb(blob)
    for field, value, error in (
        ("r", bytes(len(rid)), ReplayedMessageError),
        ("k", b"ledger", MalformedMessageError),
        ("v", 2, UnsupportedVersionError),
    ):
        forged = msgpack.packb({**outer, field: value})
        with pytest.raises(error):
            SecAggClient.import_state(forged, key=key, round_id=rid, context=b"run-1/node-1")
    # A flipped bit anywhere in the ciphertext: refused, never a different state.
    sealed = bytearray(outer["c"])
    for i in (0, len(sealed) // 2, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 1
        tampered = msgpack.packb({**outer, "c": bytes(bad)})
        with pytest.raises(DecryptionError):
            SecAggClient.import_state(tampered, key=key, round_id=rid, context=b"run-1/node-1")


def test_the_blob_holds_no_secret_in_the_clear_and_keys_still_refuse_pickling():
    _kit, client = _advertised_client()
    key = new_state_key()
    blob = client.export_state(key=key)
    secrets = client._state._secrets
    for raw in (
        secrets.cipher_key.export_private_bytes_for_sharing(),
        secrets.mask_key.export_private_bytes_for_sharing(),
        secrets.self_seed,
        bytes(secrets.identity._signing),
    ):
        assert raw not in blob
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secrets.mask_key)
    with pytest.raises(TypeError):
        pickle.dumps(client)
    with pytest.raises(ValueError, match="32 bytes"):
        client.export_state(key=b"short")


def test_identity_and_ledger_round_trip_sealed():
    kit = make_round(5, threshold=3)
    key = new_state_key()
    blob = seal_identity(kit.identities[2], key=key, context=b"n2")
    assert open_identity(blob, key=key, context=b"n2").verify_key_bytes == (
        kit.identities[2].verify_key_bytes
    )
    with pytest.raises(DecryptionError):
        open_identity(blob, key=key, context=b"n3")
    ledger = PortableTranscriptLedger()
    ledger.claim(b"r" * 16, b"h" * 32)
    again = PortableTranscriptLedger.restore(ledger.export(key=key, context=b"n2"), key=key,
                                             context=b"n2")  # fmt: skip
    with pytest.raises(TranscriptReusedError):
        again.claim(b"r" * 16, b"x" * 32)
    with pytest.raises(TranscriptReusedError):
        again.claim(b"s" * 16, b"h" * 32)
    again.claim(b"s" * 16, b"y" * 32)
