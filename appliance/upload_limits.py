"""Uploads in flight: one client cannot hold the appliance's memory or stall a round.

Every upload is accounted from its declared size before its buffer exists:

* **per client**: at most ``[uploads].per_client`` uploads open (from the stream's first
  byte: before its header, waiting or receiving) and ``client_bytes`` declared bytes in
  flight; beyond that the upload is refused at once (RESOURCE_EXHAUSTED). One upload is
  always allowed, so a model larger than ``client_bytes`` still goes through. Without this,
  200 uploads declaring 1 MiB each, sent by one client and never finished, each held a 1 MiB
  buffer (RSS +244 MB).
* **in total**: the declared bytes being received are at most ``total_bytes``. An upload that
  does not fit waits, first come first served, until it does (one alone is admitted whatever
  its size) or until its phase's deadline. Waiting holds no buffer: gRPC's fixed 64 KiB
  stream window keeps the client's bytes in the transport (``grpc.http2.bdp_probe = 0``).
* **whole-upload deadline**: from the moment its memory is granted an upload must finish
  within ``grace_seconds + declared / min_rate``, and never after its phase's deadline. The
  per-chunk idle timer alone let a byte every few seconds hold a slot forever.

Memory held by uploads is therefore at most ``total_bytes`` (or one larger upload), and the
time one client can hold any of it is bounded by its own declared size. ``peak_bytes`` and
``client_peak`` record the high-water marks (the hardening tests read them; they are also
exported as metrics).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator

from sealagg.appliance.config import UploadsSection
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.rounds import UploadRefusedError


class UploadLimitError(UploadRefusedError):
    """An upload refused by an ``[uploads]`` bound; ``limit`` names the bound (audited)."""

    def __init__(self, code: str, limit: str, detail: str) -> None:
        super().__init__(code, detail)
        self.limit = limit


@dataclasses.dataclass
class _Waiter:
    name: str
    size: int
    granted: asyncio.Future[None]


class UploadBudget:
    """Accounts in-flight uploads by client and in total (one per appliance, event-loop only)."""

    def __init__(self, limits: UploadsSection, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self.in_flight_bytes = 0  # granted: buffers that may exist now
        self.peak_bytes = 0
        self._count: collections.Counter[str] = collections.Counter()
        self._declared: collections.Counter[str] = collections.Counter()
        self.client_peak: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[_Waiter] = collections.deque()

    def transfer_seconds(self, size: int) -> float:
        """The longest an upload of ``size`` bytes may take once its memory is granted."""
        return self.limits.grace_seconds + size / self.limits.min_rate

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[None]:
        """One open upload of ``name`` until the block ends; refused beyond ``per_client``."""
        if self._count[name] >= self.limits.per_client:
            raise UploadLimitError(
                "RESOURCE_EXHAUSTED",
                "per_client",
                f"{name} already has {self._count[name]} uploads in flight "
                f"([uploads].per_client = {self.limits.per_client}); finish or cancel one first",
            )
        self._count[name] += 1
        try:
            yield
        finally:
            self._count[name] -= 1
            if self._count[name] <= 0:
                del self._count[name]

    @contextlib.asynccontextmanager
    async def hold(self, name: str, size: int, wait_until: float | None) -> AsyncIterator[None]:
        """Reserve ``size`` bytes for an upload of ``name`` (inside :meth:`stream`).

        Refuses at once beyond the client's bytes; waits for room in the total until
        ``wait_until`` (event-loop time; None: the size-derived bound), then refuses.
        """
        if self._declared[name] and self._declared[name] + size > self.limits.client_bytes:
            raise UploadLimitError(
                "RESOURCE_EXHAUSTED",
                "client_bytes",
                f"{name} would have {self._declared[name] + size:,} bytes in flight "
                f"([uploads].client_bytes = {self.limits.client_bytes:,})",
            )
        self._declared[name] += size
        self.client_peak[name] = max(self.client_peak[name], self._declared[name])
        try:
            await self._grant(name, size, wait_until)
            try:
                yield
            finally:
                self._release_granted(size)
        finally:
            self._declared[name] -= size
            if self._declared[name] <= 0:
                del self._declared[name]

    async def _grant(self, name: str, size: int, wait_until: float | None) -> None:
        if not self._queue and self._fits(size):
            self._take(size)
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(name, size, loop.create_future())
        self._queue.append(waiter)
        until = loop.time() + self.transfer_seconds(size) if wait_until is None else wait_until
        try:
            async with asyncio.timeout_at(until):
                await waiter.granted
        except BaseException as error:  # timed out, or the call was cancelled
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._release_granted(size)  # granted just as the wait ended: give it back
            else:
                self._queue.remove(waiter)
                self._wake()
            if isinstance(error, TimeoutError):
                raise UploadLimitError(
                    "RESOURCE_EXHAUSTED",
                    "total_bytes",
                    f"the appliance's upload memory stayed full ([uploads].total_bytes = "
                    f"{self.limits.total_bytes:,}) until the phase's deadline",
                ) from None
            raise

    def _fits(self, size: int) -> bool:
        return self.in_flight_bytes == 0 or self.in_flight_bytes + size <= self.limits.total_bytes

    def _take(self, size: int) -> None:
        self.in_flight_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.in_flight_bytes)
        if self._metrics is not None:
            self._metrics.upload_bytes_in_flight.set(self.in_flight_bytes)

    def _release_granted(self, size: int) -> None:
        self.in_flight_bytes -= size
        if self._metrics is not None:
            self._metrics.upload_bytes_in_flight.set(self.in_flight_bytes)
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in arrival order while they fit (no overtaking: no starvation)."""
        while self._queue and self._fits(self._queue[0].size):
            waiter = self._queue.popleft()
            if not waiter.granted.done():
                self._take(waiter.size)
                waiter.granted.set_result(None)
