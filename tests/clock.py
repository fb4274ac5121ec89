"""A test clock: wall time moves only when a test says so; monotonic time is real."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class ManualClock:
    """Starts at the real now (the stores prune by age); set or shift ``at`` to move it."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()
