"""sealagg's cryptography: pairwise-mask secure aggregation and its building blocks.

The public surface is deliberately small:

* :class:`RoundConfig` describes a round (who, which graph, threshold);
  :func:`find_parameters` picks the SecAgg+ degree and threshold for you.
* :class:`SecAggClient` and :class:`SecAggServer` run the protocol, transport-free.
* :func:`encode_update` / :func:`decode_sum` move float updates in and out of the ring.
* :class:`IdentityKey` is a participant's Ed25519 identity.

Primitives (X25519, AEAD, HKDF, PRG, Shamir) live in ``crypto._primitives`` and are
the only code that touches ``cryptography`` or PyNaCl.
"""

from crypto._primitives.signing import IdentityKey
from crypto.client import SecAggClient
from crypto.config import RING_BITS, RoundConfig
from crypto.encoding import QuantizationSpec, decode_sum, encode_update, encoded_length
from crypto.graph import CommunicationGraph, complete_graph, harary_graph
from crypto.messages import Message, Phase, decode
from crypto.params import SecAggParameters, find_parameters
from crypto.server import AggregateResult, SecAggServer

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
    "harary_graph",
]
