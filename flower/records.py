"""What sealagg's mod and workflow exchange inside Flower's messages (no Flower import here).

Every sealagg message rides in one ``ConfigRecord`` named :data:`RECORD` of a TRAIN message:
``stage`` says which step, ``payload`` is bytes. Protocol messages are sealagg's own typed,
versioned msgpack schema (:mod:`sealagg.crypto.messages`), so Flower only carries bytes and
every check (signatures, transcript, phase order) is sealagg's. The round's public
parameters travel as :func:`pack_offer` bytes; each client re-checks them against its own
policy before any key of its exists (:func:`check_offer`).
"""

from __future__ import annotations

import dataclasses

import msgpack

from sealagg.crypto.config import RoundConfig
from sealagg.crypto.encoding import QuantizationSpec
from sealagg.crypto.errors import MalformedMessageError, RoundParametersRefusedError
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy

RECORD = "sealagg"
#: The node's sealed round state in ``Context.state`` (:mod:`sealagg.flower.mod`).
STATE_RECORD = "sealagg.state"
STAGE = "stage"
PAYLOAD = "payload"

#: Stage 0: each sampled client makes a fresh Ed25519 identity and sends its verify key.
STAGE_IDENTIFY = "identify"
#: Stage 1: the round offer (config, quantization); the client checks it and advertises keys.
STAGE_OFFER = "offer"
#: Every later stage: one sealagg server message in, one client message out.
STAGE_PROTOCOL = "protocol"

OFFER_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Offer:
    """One round's public parameters as one client receives them."""

    config: RoundConfig
    index: int
    spec: QuantizationSpec
    max_weight: float


def pack_offer(offer: Offer) -> bytes:
    cfg = offer.config
    return msgpack.packb(
        {
            "v": OFFER_VERSION,
            "round_id": cfg.round_id,
            "identities": [[u, key] for u, key in sorted(cfg.identities.items())],
            "degree": cfg.degree,
            "threshold": cfg.threshold,
            "vector_length": cfg.vector_length,
            "minimum_survivors": cfg.minimum_survivors,
            "index": offer.index,
            "clip": offer.spec.clip,
            "max_clients": offer.spec.max_clients,
            "max_weight": offer.max_weight,
        },
        use_bin_type=True,
    )


def unpack_offer(data: bytes) -> Offer:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if raw["v"] != OFFER_VERSION:
            raise MalformedMessageError(f"round offer version {raw['v']} is not supported")
        config = RoundConfig(
            round_id=bytes(raw["round_id"]),
            identities={int(u): bytes(key) for u, key in raw["identities"]},
            degree=int(raw["degree"]),
            threshold=int(raw["threshold"]),
            vector_length=int(raw["vector_length"]),
            minimum_survivors=int(raw["minimum_survivors"]),
        )
        spec = QuantizationSpec(clip=float(raw["clip"]), max_clients=int(raw["max_clients"]))
        return Offer(config, int(raw["index"]), spec, float(raw["max_weight"]))
    except MalformedMessageError:
        raise
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as error:
        raise MalformedMessageError(f"malformed round offer: {error}") from None


def check_offer(offer: Offer, policy: FederationPolicy) -> None:
    """The client's own refusal of a round that would not protect its input.

    The server chose (k, t, quorum); a client runs the same policy check the workflow ran,
    so a server that skipped it (or lies) is refused before the client's keys exist. The
    quantization must hold every participant (``max_clients >= n``), or the sum wraps and
    the model is garbage.
    """
    cfg = offer.config
    n = len(cfg.identities)
    mode = "secagg" if cfg.is_complete else "secagg+"
    check_round_against_policy(policy, mode, n, cfg.degree, cfg.threshold, cfg.minimum_survivors)
    if offer.spec.max_clients < n:
        raise RoundParametersRefusedError(
            f"quantization sized for {offer.spec.max_clients} clients, the round has {n}: "
            "the sum would wrap"
        )
    if not offer.max_weight > 0:
        raise RoundParametersRefusedError("max_weight must be positive")
