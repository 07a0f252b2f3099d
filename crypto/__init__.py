"""sealagg's cryptography: pairwise-mask secure aggregation and its building blocks.

The public surface is deliberately small:

* :class:`RoundConfig` describes a round (who, which graph, threshold);
  :func:`find_parameters` picks the SecAgg+ degree and threshold for you.
* :class:`SecAggClient` and :class:`SecAggServer` run the protocol, transport-free.
* :func:`encode_update` / :func:`decode_sum` move float updates in and out of the ring.
* :class:`IdentityKey` is a participant's Ed25519 identity; :func:`verify_signature` checks
  one of its signatures (it raises, never returns a bool a caller could ignore).

Primitives (X25519, AEAD, HKDF, PRG, Shamir) live in ``crypto._primitives`` and are
the only code that touches ``cryptography`` or PyNaCl.
"""

from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.client import SecAggClient
from sealagg.crypto.config import RING_BITS, RoundConfig
from sealagg.crypto.encoding import QuantizationSpec, decode_sum, encode_update, encoded_length
from sealagg.crypto.graph import CommunicationGraph, complete_graph, random_graph
from sealagg.crypto.messages import Message, Phase, decode
from sealagg.crypto.params import SecAggParameters, find_parameters
from sealagg.crypto.server import AggregateResult, SecAggServer

__all__ = [
    "RING_BITS",
    "AggregateResult",
    "CommunicationGraph",
    "IdentityKey",
    "Message",
    "Phase",
    "QuantizationSpec",
    "RoundConfig",
    "SecAggClient",
    "SecAggParameters",
    "SecAggServer",
    "complete_graph",
    "decode",
    "decode_sum",
    "encode_update",
    "encoded_length",
    "find_parameters",
    "random_graph",
    "verify_signature",
]
