"""The two clocks the proxy reads: monotonic for intervals, wall for sleep-safe expiry checks."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of time; tests pass a controllable one."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (stops while the machine sleeps)."""

    def wall(self) -> float:
        """Seconds since the epoch (keeps counting while the machine sleeps)."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def wall(self) -> float:
        """`time.time()`."""
        return time.time()
