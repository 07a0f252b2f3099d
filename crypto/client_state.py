"""A client's round state as one sealed blob, for runtimes that keep no process between messages.

:class:`~sealagg.crypto.client.SecAggClient` holds its secrets in memory and its key objects
refuse pickling: a secret written out by accident (a pickled object in a cache, a crash
dump of an app's state) outlives the round. Some runtimes (Flower's deployment engine, which
starts one ClientApp process per message) keep nothing in memory between two messages of
one round, so the client needs an explicit, narrow export: :func:`export_client_state`
writes exactly what the next phase needs, :func:`import_client_state` rebuilds the client.

What is exported, per state: the round's public config, the client's index, the secrets the
remaining phases use (raw key bytes: identity seed, the two X25519 private keys, the
self-mask seed, derived pairwise keys, the shares held for neighbours) and the public
facts the checks need (transcript hash, neighbours, advertised keys, signed survivor list).
Never the quantized input (set it again before the share bundle: the runtime calls the
training in that very message), never a finished or aborted round (nothing left to do;
export is refused so a caller drops the round instead of keeping dead secrets).

The blob is sealed (ChaCha20-Poly1305) under a 32-byte ``key`` the caller keeps on the data
owner's machine, with associated data binding the format version, the caller's ``context``
(e.g. run and node) and the round id. So a blob from another round, node or run, or one with
a flipped bit, is refused (:class:`ReplayedMessageError`, :class:`DecryptionError`), and
whoever stores the blob holds ciphertext only. What sealing cannot stop: the holder handing
back an *older* blob of the same round (a rollback); the runtime that stores the blob must be
the data owner's own (see the caller's security argument), and a durable
:class:`PortableTranscriptLedger` kept by the caller still refuses a second claim of a round.
Nothing here logs a value; key objects still refuse pickling.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from sealagg.crypto import client as cl
from sealagg.crypto._primitives.aead import open_sealed, seal
from sealagg.crypto._primitives.agreement import AgreementKey
from sealagg.crypto._primitives.signing import IdentityKey
from sealagg.crypto.config import RoundConfig
from sealagg.crypto.errors import (
    MalformedMessageError,
    OutOfPhaseError,
    ReplayedMessageError,
    UnsupportedVersionError,
)
from sealagg.crypto.ledger import InMemoryTranscriptLedger, TranscriptLedger
from sealagg.crypto.messages import PeerKeys

__all__ = [
    "STATE_KEY_BYTES",
    "STATE_VERSION",
    "PortableTranscriptLedger",
    "export_client_state",
    "import_client_state",
    "new_state_key",
    "open_identity",
    "seal_identity",
]

#: Bumped whenever the exported layout changes; an older or newer blob is refused.
STATE_VERSION = 1
STATE_KEY_BYTES = 32
_LABEL = b"sealagg/client-state"


def new_state_key() -> bytes:
    """A fresh sealing key from the OS CSPRNG."""
    return os.urandom(STATE_KEY_BYTES)


def _ad(kind: bytes, context: bytes, round_id: bytes) -> bytes:
    """Associated data: label, version, kind, then length-prefixed context and round id
    (length prefixes: no two different (context, round id) pairs give the same bytes)."""
    return b"".join(
        (
            _LABEL,
            struct.pack(">H", STATE_VERSION),
            kind,
            struct.pack(">I", len(context)),
            context,
            struct.pack(">I", len(round_id)),
            round_id,
        )
    )


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != STATE_KEY_BYTES:
        raise ValueError(f"a state key is {STATE_KEY_BYTES} bytes")


def _seal(kind: bytes, body: dict[str, Any], key: bytes, context: bytes, round_id: bytes) -> bytes:
    _check_key(key)
    plain = msgpack.packb(body, use_bin_type=True)
    sealed = seal(key, plain, _ad(kind, context, round_id))
    return msgpack.packb({"v": STATE_VERSION, "k": kind, "r": round_id, "c": sealed})


def _open(kind: bytes, blob: bytes, key: bytes, context: bytes, round_id: bytes) -> dict:
    _check_key(key)
    try:
        outer = msgpack.unpackb(blob, raw=False, strict_map_key=True)
        version, got_kind, got_round, sealed = outer["v"], outer["k"], outer["r"], outer["c"]
    except (KeyError, TypeError, ValueError, msgpack.UnpackException):
        raise MalformedMessageError("not a sealed sealagg client state") from None
    if version != STATE_VERSION:
        raise UnsupportedVersionError(f"client state version {version} is not supported")
    if got_kind != kind:
        raise MalformedMessageError("the sealed state is of another kind")
    if not isinstance(got_round, bytes) or not hmac.compare_digest(got_round, round_id):
        raise ReplayedMessageError("the sealed client state belongs to another round")
    plain = open_sealed(key, bytes(sealed), _ad(kind, context, round_id))  # DecryptionError
    body = msgpack.unpackb(plain, raw=False, strict_map_key=False)
    if not isinstance(body, dict):
        raise MalformedMessageError("sealed client state without a body")
    return body


def _identity_seed(identity: IdentityKey) -> bytes:
    # nacl's SigningKey is its 32-byte seed; read here only to seal it.
    return bytes(identity._signing)


# --- an identity alone (before the round's config exists) ---------------------------------


def seal_identity(identity: IdentityKey, *, key: bytes, context: bytes) -> bytes:
    """Seal a fresh identity between the moment it is made and the round offer (no round id
    yet: ``context`` alone binds it)."""
    return _seal(b"identity", {"seed": _identity_seed(identity)}, key, context, b"")


def open_identity(blob: bytes, *, key: bytes, context: bytes) -> IdentityKey:
    body = _open(b"identity", blob, key, context, b"")
    return IdentityKey.from_seed(bytes(body["seed"]))


# --- the client's round state ---------------------------------------------------------------


def _pack_config(cfg: RoundConfig) -> dict[str, Any]:
    if cfg.buffer is not None:
        raise ValueError("an asynchronous buffer's round state is not exportable")
    return {
        "round_id": cfg.round_id,
        "identities": [[u, k] for u, k in sorted(cfg.identities.items())],
        "degree": cfg.degree,
        "threshold": cfg.threshold,
        "vector_length": cfg.vector_length,
        "minimum_survivors": cfg.minimum_survivors,
        "roster_version": cfg.roster_version,
    }


def _unpack_config(raw: dict[str, Any]) -> RoundConfig:
    return RoundConfig(
        round_id=bytes(raw["round_id"]),
        identities={int(u): bytes(k) for u, k in raw["identities"]},
        degree=int(raw["degree"]),
        threshold=int(raw["threshold"]),
        vector_length=int(raw["vector_length"]),
        minimum_survivors=int(raw["minimum_survivors"]),
        roster_version=int(raw["roster_version"]),
    )


def _pk(keys: PeerKeys) -> list[bytes]:
    return [
        keys.cipher_public,
        keys.mask_public,
        keys.seed_commitment,
        keys.coin_commitment,
        keys.signature,
    ]


def _unpk(raw: list) -> PeerKeys:
    return PeerKeys(*(bytes(b) for b in raw))


def _pk_map(m: Mapping[int, PeerKeys]) -> list:
    return [[u, _pk(k)] for u, k in sorted(m.items())]


def _unpk_map(raw: list) -> dict[int, PeerKeys]:
    return {int(u): _unpk(k) for u, k in raw}


def _bytes_map(m: Mapping[int, bytes]) -> list:
    return [[u, bytes(v)] for u, v in sorted(m.items())]


def _unbytes_map(raw: list) -> dict[int, bytes]:
    return {int(u): bytes(v) for u, v in raw}


def _pack_secrets(s: cl._Secrets) -> dict[str, bytes]:
    return {
        "identity": _identity_seed(s.identity),
        "cipher": s.cipher_key.export_private_bytes_for_sharing(),
        "mask": s.mask_key.export_private_bytes_for_sharing(),
        "self_seed": s.self_seed,
    }


def _unpack_secrets(raw: dict[str, Any]) -> cl._Secrets:
    return cl._Secrets(
        IdentityKey.from_seed(bytes(raw["identity"])),
        AgreementKey.from_private_bytes(bytes(raw["cipher"])),
        AgreementKey.from_private_bytes(bytes(raw["mask"])),
        bytes(raw["self_seed"]),
    )


def _pack_round(r: cl._Round) -> dict[str, Any]:
    packed: dict[str, Any] = {"transcript": r.transcript, "neighbours": sorted(r.neighbours)}
    if r.committee is not None:  # the signing committee (crypto.committee), sparse rounds
        packed["committee"] = sorted(r.committee)
    return packed


def _unpack_round(raw: dict[str, Any]) -> cl._Round:
    committee = raw.get("committee")
    return cl._Round(
        bytes(raw["transcript"]),
        frozenset(int(v) for v in raw["neighbours"]),
        None if committee is None else frozenset(int(v) for v in committee),
    )


def _held(m: Mapping[int, tuple[bytes, bytes]]) -> list:
    return [[v, bytes(a), bytes(b)] for v, (a, b) in sorted(m.items())]


def _unheld(raw: list) -> dict[int, tuple[bytes, bytes]]:
    return {int(v): (bytes(a), bytes(b)) for v, a, b in raw}


def _pack_state(state: cl._State) -> dict[str, Any]:
    """Exactly the fields of ``state`` (no others exist), secrets as raw bytes."""
    if isinstance(state, cl._AdvertiseKeys):
        return {"identity": _identity_seed(state._identity)}
    if isinstance(state, cl._AwaitKeyDirectory):
        return {
            "secrets": _pack_secrets(state._secrets),
            "coin": state._coin,
            "own": _pk(state._own),
        }
    if isinstance(state, cl._AwaitCoins):
        return {
            "secrets": _pack_secrets(state._secrets),
            "transcript": state._transcript,
            "advertised": _pk_map(state._advertised),
        }
    if isinstance(state, cl._AwaitShareBundle):
        return {
            "round": _pack_round(state._round),
            "secrets": _pack_secrets(state._secrets),
            "peers": _pk_map(state._peers),
            "share_keys": _bytes_map(state._share_keys),
            "mask_keys": _bytes_map(state._mask_keys),
        }
    if isinstance(state, cl._AwaitSurvivorList):
        return {
            "round": _pack_round(state._round),
            "identity": _identity_seed(state._identity),
            "sharers": sorted(state._sharers),
            "held": _held(state._held),
        }
    if isinstance(state, cl._AwaitUnmaskRequest):
        return {
            "round": _pack_round(state._round),
            "survivors": list(state._survivors),
            "held": _held(state._held),
        }
    raise OutOfPhaseError(
        f"a client in state {state.name} has nothing left to export: drop the round"
    )


_BUILDERS: dict[str, Callable[[cl._Context, dict[str, Any]], cl._State]] = {
    cl._AdvertiseKeys.name: lambda ctx, f: cl._AdvertiseKeys(
        ctx, IdentityKey.from_seed(bytes(f["identity"]))
    ),
    cl._AwaitKeyDirectory.name: lambda ctx, f: cl._AwaitKeyDirectory(
        ctx, _unpack_secrets(f["secrets"]), bytes(f["coin"]), _unpk(f["own"])
    ),
    cl._AwaitCoins.name: lambda ctx, f: cl._AwaitCoins(
        ctx, _unpack_secrets(f["secrets"]), bytes(f["transcript"]), _unpk_map(f["advertised"])
    ),
    cl._AwaitShareBundle.name: lambda ctx, f: cl._AwaitShareBundle(
        ctx,
        _unpack_round(f["round"]),
        _unpack_secrets(f["secrets"]),
        _unpk_map(f["peers"]),
        _unbytes_map(f["share_keys"]),
        _unbytes_map(f["mask_keys"]),
    ),
    cl._AwaitSurvivorList.name: lambda ctx, f: cl._AwaitSurvivorList(
        ctx,
        _unpack_round(f["round"]),
        IdentityKey.from_seed(bytes(f["identity"])),
        frozenset(int(v) for v in f["sharers"]),
        _unheld(f["held"]),
    ),
    cl._AwaitUnmaskRequest.name: lambda ctx, f: cl._AwaitUnmaskRequest(
        ctx,
        _unpack_round(f["round"]),
        tuple(int(v) for v in f["survivors"]),
        _unheld(f["held"]),
    ),
}


def export_client_state(client: cl.SecAggClient, *, key: bytes, context: bytes = b"") -> bytes:
    """Seal ``client``'s state for the next phase (see the module docstring for what is in it).

    ``context`` names where the state belongs (e.g. run and node ids); the same bytes must be
    given to :func:`import_client_state`. Refused (:class:`OutOfPhaseError`) once the client
    finished or aborted the round, and for an asynchronous buffer's round (``ValueError``).
    """
    ctx = client._ctx
    body = {
        "state": client._state.name,
        "me": ctx.me,
        "config": _pack_config(ctx.config),
        "fields": _pack_state(client._state),
    }
    return _seal(b"client", body, key, context, ctx.config.round_id)


def import_client_state(
    blob: bytes,
    *,
    key: bytes,
    round_id: bytes,
    context: bytes = b"",
    ledger: TranscriptLedger | None = None,
) -> cl.SecAggClient:
    """Rebuild the client :func:`export_client_state` sealed, for round ``round_id`` only.

    Raises :class:`ReplayedMessageError` for a state of another round,
    :class:`DecryptionError` for a tampered blob or another key or context,
    :class:`UnsupportedVersionError` for another format version. ``ledger``: the client's
    transcript ledger (its claims span rounds, so it is the caller's, not the blob's).
    """
    body = _open(b"client", blob, key, context, round_id)
    try:
        config = _unpack_config(body["config"])
        if not hmac.compare_digest(config.round_id, round_id):  # sealed, so never: belt and braces
            raise ReplayedMessageError("the sealed client state belongs to another round")
        build = _BUILDERS[body["state"]]
        ctx = cl._Context(
            config, int(body["me"]), ledger if ledger is not None else InMemoryTranscriptLedger()
        )
        state = build(ctx, body["fields"])
    except (KeyError, TypeError, ValueError) as error:
        raise MalformedMessageError(f"malformed client state: {error}") from None
    client = cl.SecAggClient.__new__(cl.SecAggClient)
    client._ctx = ctx
    client._state = state
    client._input = None
    return client


# --- a ledger that can be carried between processes -----------------------------------------


class PortableTranscriptLedger(InMemoryTranscriptLedger):
    """:class:`InMemoryTranscriptLedger` plus a sealed export, for a runtime whose only memory
    between messages is a state the caller stores (a run's node context). Its claims and the
    reveal budget then span the rounds of that state's lifetime instead of one client object.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)

    def export(self, *, key: bytes, context: bytes = b"") -> bytes:
        with self._lock:
            body = {
                "rounds": [[r, h] for r, h in sorted(self._by_round.items())],
                "unfinished": self._unfinished,
                "last_claim": self._last_claim,
            }
        return _seal(b"ledger", body, key, context, b"")

    @classmethod
    def restore(
        cls,
        blob: bytes,
        *,
        key: bytes,
        context: bytes = b"",
        clock: Callable[[], float] = time.time,
    ) -> PortableTranscriptLedger:
        body = _open(b"ledger", blob, key, context, b"")
        ledger = cls(clock)
        try:
            ledger._by_round = {bytes(r): bytes(h) for r, h in body["rounds"]}
            ledger._hashes = set(ledger._by_round.values())
            ledger._unfinished = int(body["unfinished"])
            ledger._last_claim = float(body["last_claim"])
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedMessageError(f"malformed ledger state: {error}") from None
        return ledger
