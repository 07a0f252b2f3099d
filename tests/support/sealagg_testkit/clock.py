"""A deterministic clock for stores and audit logs under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """One second per call, from a fixed instant: deterministic timestamps."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now
