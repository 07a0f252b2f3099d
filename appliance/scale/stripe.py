"""One stripe: a coordinate range of the round's sum, with its own modular accumulator.

A stripe stages each client's chunks of its range and adds nothing until the coordinator
commits the round's one survivor list; then it adds the survivors' staged ranges with the
existing kernel (:func:`kernels.mod_add_into`) and drops everything staged. Given the
unmask plan it removes exactly its range of every listed mask (:mod:`crypto.mask_slice`)
and hands back its slice of the sum. It knows no key, no share, no other stripe.

Plain Python: the coordinator runs it as a Ray actor, the unit tests run it in process.
Memory: the accumulator (4 bytes per coordinate) plus every staged client range (4 bytes
per coordinate per client) plus a constant (the PRG's 512 KiB scratch, one chunk in
flight): :meth:`Stripe.memory` reports the tracemalloc peak of the current round so the
bound is measured, not assumed. A grouped round's groups (appliance/grouped_round.py) are
held side by side, keyed by their round ids: one accumulator per group, and each client's
staged range in its own group only.
"""

from __future__ import annotations

import bisect
import dataclasses
import tracemalloc
from collections.abc import Iterable, Sequence

import numpy as np

from sealagg.crypto.mask_slice import apply_mask_range
from sealagg.kernels import dequantize, mod_add_into


class StripeRefusedError(ValueError):
    """A chunk or a call that does not fit the stripe's round; nothing was changed."""


@dataclasses.dataclass
class _Round:
    """One round's state on this stripe: its range, staged chunks, accumulator."""

    start: int
    length: int
    acc: np.ndarray | None = None
    staged: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    covered: dict[int, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    filled: dict[int, int] = dataclasses.field(default_factory=dict)
    committed: bool = False
    unmasked: bool = False

    def drop_staged(self) -> None:
        self.staged.clear()
        self.covered.clear()
        self.filled.clear()


class Stripe:
    """Coordinates ``start .. start+length`` of one round's sum (see the module doc).

    It holds one round, or the groups of one grouped round side by side (each group is a
    round of its own, with its own round id, accumulator and survivor list; they run in
    lockstep, appliance/grouped_round.py): :meth:`begin` keeps only the rounds it is told
    run ``alongside`` the new one, so nothing of an earlier round outlives the next."""

    def __init__(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        self._rounds: dict[bytes, _Round] = {}

    def begin(
        self, round_id: bytes, start: int, length: int, alongside: Sequence[bytes] = ()
    ) -> None:
        """Start a round: a fresh accumulator for ``[start, start+length)``; forgets every
        round but those in ``alongside`` (the other groups of the same grouped round)."""
        if start < 0 or length < 1:
            raise StripeRefusedError("a stripe owns a non-empty range at a non-negative offset")
        keep = {bytes(r) for r in alongside}
        self._rounds = {r: state for r, state in self._rounds.items() if r in keep}
        self._rounds[bytes(round_id)] = _Round(start, length)
        if not keep:
            # Measure this round only: the peak above what the process held at its start
            # (Ray, numpy and numba keep tens of MB of Python objects of their own).
            tracemalloc.reset_peak()
            self._baseline = tracemalloc.get_traced_memory()[0]

    def put(self, round_id: bytes, client: int, offset: int, chunk: bytes) -> None:
        """Stage ``chunk`` (little-endian uint32) of ``client``'s masked input at ``offset``
        (a coordinate of the whole vector, inside this stripe). Overlaps, strays and chunks
        after the commit are refused: a coordinate counts once, before the list is fixed."""
        r = self._round(round_id)
        if r.committed:
            raise StripeRefusedError("the survivor list is committed: no more chunks")
        if len(chunk) % 4 or not chunk:
            raise StripeRefusedError("a chunk is a non-empty whole number of uint32 coordinates")
        lo, hi = offset - r.start, offset - r.start + len(chunk) // 4
        if lo < 0 or hi > r.length:
            raise StripeRefusedError(f"chunk [{offset}, ..) lies outside this stripe's range")
        spans = r.covered.setdefault(client, [])
        i = bisect.bisect_left(spans, (lo, hi))
        if (i > 0 and spans[i - 1][1] > lo) or (i < len(spans) and spans[i][0] < hi):
            raise StripeRefusedError(f"client {client} sent overlapping chunks")
        staged = r.staged.get(client)
        if staged is None:
            staged = r.staged[client] = np.empty(r.length, dtype=np.uint32)
        staged[lo:hi] = np.frombuffer(chunk, dtype="<u4")
        spans.insert(i, (lo, hi))
        r.filled[client] = r.filled.get(client, 0) + (hi - lo)

    def complete(self, round_id: bytes) -> list[int]:
        """Clients whose chunks cover the whole range (the coordinator intersects these)."""
        r = self._round(round_id)
        return sorted(u for u, n in r.filled.items() if n == r.length)

    def commit(self, round_id: bytes, survivors: Sequence[int]) -> None:
        """Add the survivors' staged ranges and drop every staged chunk. Refused (nothing
        added) unless every survivor is complete here: the coordinator's list is the one
        list for all stripes, and a stripe never adds a partial input."""
        r = self._round(round_id)
        if r.committed:
            raise StripeRefusedError("the survivor list was already committed")
        missing = [u for u in survivors if r.filled.get(u) != r.length]
        if missing:
            raise StripeRefusedError(f"survivors {missing} are incomplete on this stripe")
        acc = np.zeros(r.length, dtype=np.uint32)
        for u in sorted(survivors):
            mod_add_into(acc, r.staged.pop(u))
        r.acc, r.committed = acc, True
        r.drop_staged()

    def unmask(self, round_id: bytes, masks: Iterable[tuple[bytes, int]]) -> bytes:
        """Remove this range of every mask of the plan; the stripe's slice of the sum."""
        r = self._round(round_id)
        if not r.committed or r.acc is None or r.unmasked:
            raise StripeRefusedError("unmasking needs a committed, not yet unmasked, stripe")
        apply_mask_range(r.acc, list(masks), r.start)
        r.unmasked = True
        return r.acc.tobytes()

    def dequantized(self, round_id: bytes, scale: float, bits: int = 32) -> np.ndarray:
        """The unmasked range read back as reals (weighted sums: divide by Σw after)."""
        r = self._round(round_id)
        if not r.unmasked or r.acc is None:
            raise StripeRefusedError("dequantize after unmasking")
        return dequantize(r.acc, scale, bits)

    def abort(self, round_id: bytes) -> None:
        """Forget the round: staged chunks and the accumulator go, nothing is returned."""
        r = self._rounds.pop(bytes(round_id), None)
        if r is not None:
            r.drop_staged()
            r.acc = None

    def rounds(self) -> list[bytes]:
        """The rounds this stripe holds now (one, or one grouped round's groups)."""
        return list(self._rounds)

    def node_id(self) -> str:
        """The Ray node this stripe runs on (for operators and the node-loss tests)."""
        import ray  # only here: the stripe itself runs without Ray in unit tests

        return str(ray.get_runtime_context().get_node_id())

    def memory(self) -> dict[str, int]:
        """This round's traced peak and current allocation (Python objects and numpy
        arrays) above what the process held when the round began, in bytes (a grouped
        round: all its groups together)."""
        current, peak = tracemalloc.get_traced_memory()
        base = getattr(self, "_baseline", 0)
        return {"peak": peak - base, "current": current - base}

    def _round(self, round_id: bytes) -> _Round:
        r = self._rounds.get(bytes(round_id))
        if r is None:
            raise StripeRefusedError("this stripe is not serving that round")
        return r
