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
bound is measured, not assumed.
"""

from __future__ import annotations

import bisect
import tracemalloc
from collections.abc import Iterable, Sequence

import numpy as np

from sealagg.crypto.mask_slice import apply_mask_range
from sealagg.kernels import dequantize, mod_add_into


class StripeRefusedError(ValueError):
    """A chunk or a call that does not fit the stripe's round; nothing was changed."""


class Stripe:
    """Coordinates ``start .. start+length`` of one round's sum (see the module doc)."""

    def __init__(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        self._round: bytes | None = None

    def begin(self, round_id: bytes, start: int, length: int) -> None:
        """Start a round: a fresh accumulator for ``[start, start+length)``; forgets the last."""
        if start < 0 or length < 1:
            raise StripeRefusedError("a stripe owns a non-empty range at a non-negative offset")
        self._acc: np.ndarray | None = None
        self._round, self._start, self._length = bytes(round_id), start, length
        self._staged: dict[int, np.ndarray] = {}
        self._covered: dict[int, list[tuple[int, int]]] = {}
        self._filled: dict[int, int] = {}
        self._committed = False
        self._unmasked = False
        # Measure this round only: the peak above what the process held at its start
        # (Ray, numpy and numba keep tens of MB of Python objects of their own).
        tracemalloc.reset_peak()
        self._baseline = tracemalloc.get_traced_memory()[0]

    def put(self, round_id: bytes, client: int, offset: int, chunk: bytes) -> None:
        """Stage ``chunk`` (little-endian uint32) of ``client``'s masked input at ``offset``
        (a coordinate of the whole vector, inside this stripe). Overlaps, strays and chunks
        after the commit are refused: a coordinate counts once, before the list is fixed."""
        self._require_round(round_id)
        if self._committed:
            raise StripeRefusedError("the survivor list is committed: no more chunks")
        if len(chunk) % 4 or not chunk:
            raise StripeRefusedError("a chunk is a non-empty whole number of uint32 coordinates")
        lo, hi = offset - self._start, offset - self._start + len(chunk) // 4
        if lo < 0 or hi > self._length:
            raise StripeRefusedError(f"chunk [{offset}, ..) lies outside this stripe's range")
        spans = self._covered.setdefault(client, [])
        i = bisect.bisect_left(spans, (lo, hi))
        if (i > 0 and spans[i - 1][1] > lo) or (i < len(spans) and spans[i][0] < hi):
            raise StripeRefusedError(f"client {client} sent overlapping chunks")
        staged = self._staged.get(client)
        if staged is None:
            staged = self._staged[client] = np.empty(self._length, dtype=np.uint32)
        staged[lo:hi] = np.frombuffer(chunk, dtype="<u4")
        spans.insert(i, (lo, hi))
        self._filled[client] = self._filled.get(client, 0) + (hi - lo)

    def complete(self, round_id: bytes) -> list[int]:
        """Clients whose chunks cover the whole range (the coordinator intersects these)."""
        self._require_round(round_id)
        return sorted(u for u, n in self._filled.items() if n == self._length)

    def commit(self, round_id: bytes, survivors: Sequence[int]) -> None:
        """Add the survivors' staged ranges and drop every staged chunk. Refused (nothing
        added) unless every survivor is complete here: the coordinator's list is the one
        list for all stripes, and a stripe never adds a partial input."""
        self._require_round(round_id)
        if self._committed:
            raise StripeRefusedError("the survivor list was already committed")
        missing = [u for u in survivors if self._filled.get(u) != self._length]
        if missing:
            raise StripeRefusedError(f"survivors {missing} are incomplete on this stripe")
        acc = np.zeros(self._length, dtype=np.uint32)
        for u in sorted(survivors):
            mod_add_into(acc, self._staged.pop(u))
        self._acc, self._committed = acc, True
        self._drop_staged()

    def unmask(self, round_id: bytes, masks: Iterable[tuple[bytes, int]]) -> bytes:
        """Remove this range of every mask of the plan; the stripe's slice of the sum."""
        self._require_round(round_id)
        if not self._committed or self._acc is None or self._unmasked:
            raise StripeRefusedError("unmasking needs a committed, not yet unmasked, stripe")
        apply_mask_range(self._acc, list(masks), self._start)
        self._unmasked = True
        return self._acc.tobytes()

    def dequantized(self, round_id: bytes, scale: float, bits: int = 32) -> np.ndarray:
        """The unmasked range read back as reals (weighted sums: divide by Σw after)."""
        self._require_round(round_id)
        if not self._unmasked or self._acc is None:
            raise StripeRefusedError("dequantize after unmasking")
        return dequantize(self._acc, scale, bits)

    def abort(self, round_id: bytes) -> None:
        """Forget the round: staged chunks and the accumulator go, nothing is returned."""
        if self._round == round_id:
            self._drop_staged()
            self._acc = None
            self._round = None

    def node_id(self) -> str:
        """The Ray node this stripe runs on (for operators and the node-loss tests)."""
        import ray  # only here: the stripe itself runs without Ray in unit tests

        return str(ray.get_runtime_context().get_node_id())

    def memory(self) -> dict[str, int]:
        """This round's traced peak and current allocation (Python objects and numpy
        arrays) above what the process held when the round began, in bytes."""
        current, peak = tracemalloc.get_traced_memory()
        base = getattr(self, "_baseline", 0)
        return {"peak": peak - base, "current": current - base}

    def _drop_staged(self) -> None:
        self._staged.clear()
        self._covered.clear()
        self._filled.clear()

    def _require_round(self, round_id: bytes) -> None:
        if self._round is None or round_id != self._round:
            raise StripeRefusedError("this stripe is not serving that round")
