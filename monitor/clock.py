"""The Clock seam: wall time for timestamps and monotonic time for deadlines."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where time comes from; tests substitute a clock that jumps."""

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC: for timestamps people read."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never jumps: for deadlines."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Wall-clock time in UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()
