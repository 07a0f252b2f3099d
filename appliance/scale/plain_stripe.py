"""One plaintext stripe: a coordinate range of every client's update, and the rules over it.

Plaintext and attested rounds on ``[scale]`` (issue 22): a stripe stages each client's
float32 range (chunks at offsets; overlaps, strays and NaN/Inf refused), and only after the
coordinator commits the round's one member list does it keep those clients' ranges, as a
``(k, length)`` matrix in the committed order, and drop every other staged chunk. Then it
answers, over its range only, with the existing kernels:

* ``mean``: the weighted float64 sum in the committed (arrival) order, as
  :class:`appliance.rounds.WeightedSum` adds it, and that sum over the total weight as
  float32: per coordinate the same operations in the same order, so bit for bit the
  one-process :class:`~appliance.rounds.PlainRound`'s range.
* ``median`` / ``trimmed_mean``: :func:`kernels.coordinate_median` /
  :func:`kernels.trimmed_mean`: per-coordinate order statistics, so bit for bit the range
  of the kernel applied to the whole matrix.
* Krum and Multi-Krum: the partial ``k x k`` squared-distance matrix over the range
  (:func:`kernels.pairwise_sq_distances`; squared distances add over disjoint ranges); the
  coordinator adds the partials and scores them, then asks for its chosen rows' mean
  (:func:`kernels.weighted_mean` with 0/1 weights: per coordinate what the kernel computes).
* geometric median: one Weiszfeld step at a time: the weighted mean of the rows with the
  coordinator's weights (a candidate) and each client's partial squared distance to it;
  the coordinator adds the partials (the distances are all a step needs) and says whether
  the candidate is kept.

What a stripe's operator sees: the clients' plaintext updates on this range (and the
aggregate on it), which is what the appliance itself sees in plaintext mode; nothing of
any other range, no key. Attested mode: see :mod:`.plain_round` (only a local cluster,
inside the attested machine).

Plain Python: the coordinator runs it as a Ray actor (:func:`plain_stripe_actor_class`),
the unit tests run it in process. Memory: the staged ranges (4 bytes per coordinate per
client), then the committed matrix built row by row while the staged ranges are dropped,
plus one rule's output and scratch (a ``k x 8192`` float64 block at most).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealagg import kernels

#: Coordinates per block of the partial squared distances (bounds the float64 scratch).
DISTANCE_BLOCK = 1 << 13


class PlainStripeRefusedError(ValueError):
    """A chunk or a call that does not fit the stripe's round; nothing was changed."""


class PlainStripe:
    """Coordinates ``start .. start+length`` of every client's update (see the module doc)."""

    def __init__(self) -> None:
        self._round: bytes | None = None

    def begin(self, round_id: bytes, start: int, length: int) -> None:
        """Start a round over ``[start, start+length)``; forgets the last one entirely."""
        if start < 0 or length < 1:
            raise PlainStripeRefusedError(
                "a stripe owns a non-empty range at a non-negative offset"
            )
        self._round, self._start, self._length = bytes(round_id), start, length
        self._staged: dict[int, np.ndarray] = {}
        self._covered: dict[int, list[tuple[int, int]]] = {}
        self._filled: dict[int, int] = {}
        self._rows: np.ndarray | None = None  # the committed (k, length) matrix
        self._z: np.ndarray | None = None  # geometric median: the kept iterate
        self._candidate: np.ndarray | None = None

    def put(self, round_id: bytes, client: int, offset: int, chunk: bytes) -> None:
        """Stage ``chunk`` (little-endian float32) of ``client``'s update at ``offset`` (a
        coordinate of the whole vector, inside this stripe). Refused: a chunk after the
        commit, overlapping another, outside the range, or holding NaN/Inf (a NaN must not
        reach an order statistic or a distance)."""
        self._require_round(round_id)
        if self._rows is not None:
            raise PlainStripeRefusedError("the member list is committed: no more chunks")
        if len(chunk) % 4 or not chunk:
            raise PlainStripeRefusedError("a chunk is a non-empty whole number of float32 values")
        lo, hi = offset - self._start, offset - self._start + len(chunk) // 4
        if lo < 0 or hi > self._length:
            raise PlainStripeRefusedError(f"chunk [{offset}, ..) lies outside this stripe's range")
        spans = self._covered.setdefault(client, [])
        i = bisect.bisect_left(spans, (lo, hi))
        if (i > 0 and spans[i - 1][1] > lo) or (i < len(spans) and spans[i][0] < hi):
            raise PlainStripeRefusedError(f"client {client} sent overlapping chunks")
        values = np.frombuffer(chunk, dtype="<f4")
        if not np.isfinite(values).all():
            raise PlainStripeRefusedError("update contains NaN or Inf; refused")
        staged = self._staged.get(client)
        if staged is None:
            staged = self._staged[client] = np.empty(self._length, dtype=np.float32)
        staged[lo:hi] = values
        spans.insert(i, (lo, hi))
        self._filled[client] = self._filled.get(client, 0) + (hi - lo)

    def discard(self, round_id: bytes, client: int) -> None:
        """Drop what ``client`` staged (a refused or broken upload; it may send again)."""
        self._require_round(round_id)
        if self._rows is None:
            self._staged.pop(client, None)
            self._covered.pop(client, None)
            self._filled.pop(client, None)

    def complete(self, round_id: bytes) -> list[int]:
        """Clients whose chunks cover the whole range."""
        self._require_round(round_id)
        return sorted(u for u, n in self._filled.items() if n == self._length)

    def commit(self, round_id: bytes, clients: Sequence[int]) -> None:
        """Keep exactly ``clients``' ranges, as rows in this order, and drop everything else.
        Refused (nothing changed) unless every one is complete here: the coordinator's list
        is the one list for all stripes, and a stripe never uses a partial update."""
        self._require_round(round_id)
        if self._rows is not None:
            raise PlainStripeRefusedError("the member list was already committed")
        if not clients or len(set(clients)) != len(clients):
            raise PlainStripeRefusedError("the member list is empty or names a client twice")
        missing = [u for u in clients if self._filled.get(u) != self._length]
        if missing:
            raise PlainStripeRefusedError(f"members {missing} are incomplete on this stripe")
        rows = np.empty((len(clients), self._length), dtype=np.float32)
        for r, u in enumerate(clients):  # each staged range goes as soon as it is copied
            rows[r] = self._staged.pop(u)
        self._staged.clear()
        self._covered.clear()
        self._filled.clear()
        self._rows = rows

    # ------------------------------------------------------------------ rules over the range

    def mean(self, round_id: bytes, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 weighted mean, float64 weighted sum) of the range: the rows added in the
        committed order with ``weights``, exactly as :class:`WeightedSum` adds updates."""
        rows = self._committed(round_id)
        if len(weights) != rows.shape[0]:
            raise PlainStripeRefusedError("one weight per committed member")
        acc = np.zeros(self._length, dtype=np.float64)
        total = 0.0
        for row, weight in zip(rows, weights, strict=True):
            acc += weight * row.astype(np.float64)
            total += weight
        return (acc / total).astype(np.float32), acc

    def median(self, round_id: bytes) -> np.ndarray:
        return kernels.coordinate_median(self._committed(round_id))

    def trimmed_mean(self, round_id: bytes, beta: float) -> np.ndarray:
        return kernels.trimmed_mean(self._committed(round_id), beta)

    def sq_distances(self, round_id: bytes) -> np.ndarray:
        """The ``k x k`` squared distances between the rows over this range only."""
        return kernels.pairwise_sq_distances(self._committed(round_id))

    def weighted_mean(self, round_id: bytes, weights: np.ndarray) -> np.ndarray:
        """:func:`kernels.weighted_mean` of the rows (Multi-Krum: 0/1 weights)."""
        return kernels.weighted_mean(self._committed(round_id), np.asarray(weights))

    def row(self, round_id: bytes, index: int) -> np.ndarray:
        """Row ``index`` on this range (Krum's choice)."""
        return self._committed(round_id)[index].copy()

    def weiszfeld(self, round_id: bytes, weights: np.ndarray, keep: bool) -> np.ndarray:
        """One Weiszfeld step on this range: ``keep`` the last candidate as the iterate (or
        not), take the rows' weighted mean as the new candidate, return each row's partial
        squared distance to it (float64, added over the range in fixed blocks)."""
        rows = self._committed(round_id)
        if keep:
            self._z = self._candidate
        self._candidate = kernels.weighted_mean(rows, np.asarray(weights))
        return _sq_distances(rows, self._candidate)

    def weiszfeld_result(self, round_id: bytes, keep: bool) -> np.ndarray:
        """The final iterate on this range (``keep``: the last candidate was kept)."""
        self._committed(round_id)
        if keep:
            self._z = self._candidate
        if self._z is None:
            raise PlainStripeRefusedError("no Weiszfeld iterate was kept")
        return self._z

    # ----------------------------------------------------------------------------- upkeep

    def abort(self, round_id: bytes) -> None:
        """Forget the round: staged chunks and rows go, nothing is returned."""
        if self._round == round_id:
            self._staged.clear()
            self._covered.clear()
            self._filled.clear()
            self._rows = self._z = self._candidate = None
            self._round = None

    def node_id(self) -> str:
        """The Ray node this stripe runs on (liveness probes, operators)."""
        import ray  # only here: the stripe itself runs without Ray in unit tests

        return str(ray.get_runtime_context().get_node_id())

    def _committed(self, round_id: bytes) -> np.ndarray:
        self._require_round(round_id)
        if self._rows is None:
            raise PlainStripeRefusedError("a rule runs after the member list is committed")
        return self._rows

    def _require_round(self, round_id: bytes) -> None:
        if self._round is None or round_id != self._round:
            raise PlainStripeRefusedError("this stripe is not serving that round")


def _sq_distances(rows: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Squared distances from ``z`` to each row, float64, in fixed blocks (bounded scratch)."""
    out = np.zeros(rows.shape[0], dtype=np.float64)
    for a in range(0, rows.shape[1], DISTANCE_BLOCK):
        diff = rows[:, a : a + DISTANCE_BLOCK].astype(np.float64)
        diff -= z[a : a + DISTANCE_BLOCK].astype(np.float64)
        out += np.einsum("ij,ij->i", diff, diff)
    return out


def plain_stripe_actor_class(**options: Any) -> Any:
    """:class:`PlainStripe` as a Ray actor class (as :func:`.coordinator.stripe_actor_class`:
    no CPU reserved, never restarted: a lost stripe aborts its round)."""
    import ray  # the stripe class itself runs without Ray

    remote = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(PlainStripe)
    return remote.options(**options) if options else remote
