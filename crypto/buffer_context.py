"""What an asynchronous buffer's secure-aggregation round fixes about staleness (issue 21).

In masked modes each buffer of an asynchronous run is one secure-aggregation round over the
clients that registered for it. The buffer's context is public and part of the round's
:class:`~crypto.config.RoundConfig`: the parent version the buffer's mean will be applied to,
every member's base version (the version it trained on) and the run's staleness function.

The rules, each with its reason:

- **The transcript fixes every member's staleness.** The context enters the transcript hash
  (:func:`crypto._transcript.transcript_hash`), which the consistency signatures bind and
  the SecAgg+ graph is drawn from, and each member signs its own base version and the parent
  into its key advertisement. A server that shows members different base versions (or a
  different parent or staleness function) gets different transcripts, and the round aborts at
  the consistency check; the audit keeps each member's own signed claim.
- **A client refuses a buffer that lists the wrong base version for it**
  (:meth:`BufferContext.check_own`): its weight ``s(tau)`` would be computed from a lie.
- **``tau = parent - base`` and ``s(tau)`` come from :mod:`crypto.staleness` alone**, the one
  rule plaintext buffers use on the appliance. A client folds ``w * s(tau)`` into the weight
  coordinate of its masked vector (:meth:`BufferContext.fold_weight`), so the unmasked sum is
  ``(sum of w s x, sum of w s)`` and the mean is the staleness-weighted mean.

The parent version is the appliance's word: a member checks only that it is not older than
its own base and within the maximum staleness. A lying appliance can skew the weights that
way (as it can publish any model it likes), the same for every member (the transcript), and
learns nothing more from it: the sum it unmasks covers the same survivors either way.

What no party can check: whether a client really folded ``s(tau)`` into its vector. The
weight rides inside the masked vector, which nobody but its owner sees; a malicious client
can skip ``s(tau)`` (count as if fresh) exactly as it can misstate its own weight ``w``. Its
influence stays bounded as in a synchronous round (``w <= 1``, the clip); secure aggregation
protects inputs, not the honesty of what is put in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping
from types import MappingProxyType

from sealagg.crypto.errors import BaseVersionRefusedError
from sealagg.crypto.staleness import StalenessPolicy, StaleUpdateError, staleness

__all__ = ["BufferContext"]

_KIND_CODES = {"constant": 0, "polynomial": 1, "exponential": 2, "hinge": 3}


@dataclasses.dataclass(frozen=True)
class BufferContext:
    """The public staleness facts of one buffer's round: parent, base versions, policy."""

    parent_version: int
    base_versions: Mapping[int, int]  # participant index -> the version it trained on
    policy: StalenessPolicy

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_versions", MappingProxyType(dict(self.base_versions)))
        if type(self.parent_version) is not int or self.parent_version < 0:
            raise ValueError("the parent version is a non-negative integer")
        for u, base in self.base_versions.items():
            if type(u) is not int or type(base) is not int:
                raise ValueError("base versions map participant indices to integers")
            try:  # every listed member is within the run's maximum staleness
                self.policy.check(staleness(self.parent_version, base))
            except StaleUpdateError as error:
                raise BaseVersionRefusedError(f"participant {u}: {error}") from None

    def staleness_of(self, client_id: int) -> int:
        """``tau`` of one member: parent - its base version."""
        return staleness(self.parent_version, self.base_versions[client_id])

    def weight_of(self, client_id: int) -> float:
        """``s(tau)`` of one member, by :mod:`crypto.staleness`."""
        return self.policy.weight(self.staleness_of(client_id))

    def fold_weight(self, client_id: int, weight: float) -> float:
        """The weight a member encodes into its masked vector: ``w * s(tau)``."""
        return float(weight) * self.weight_of(client_id)

    def check_own(self, client_id: int, trained_on: int) -> None:
        """Refuse a buffer that lists another base version for this client than the one it
        trained on (a server inflating or deflating its weight, or replaying it elsewhere)."""
        listed = self.base_versions.get(client_id)
        if listed != trained_on:
            raise BaseVersionRefusedError(
                f"the buffer lists base version {listed} for this client, which trained on "
                f"version {trained_on}; nothing was sent"
            )

    def digest(self) -> bytes:
        """What the transcript hash covers: parent, policy and every base version."""
        p = self.policy
        h = hashlib.sha256(b"sealagg/async-buffer/v1")
        h.update(
            struct.pack(
                ">QBQddQ",
                self.parent_version,
                _KIND_CODES[p.kind],
                p.max_staleness,
                p.a,
                p.alpha,
                p.b,
            )
        )
        h.update(struct.pack(">I", len(self.base_versions)))
        for u in sorted(self.base_versions):
            h.update(struct.pack(">IQ", u, self.base_versions[u]))
        return h.digest()

    def advertised(self, client_id: int) -> bytes:
        """What a member signs into its key advertisement: its own base version and the
        parent (a signed claim the audit can show, beside the transcript's binding)."""
        return b"sealagg/async-base/v1" + struct.pack(
            ">QQ", self.parent_version, self.base_versions[client_id]
        )
