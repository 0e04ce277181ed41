"""Where the runtimes read time. Only runtimes read a clock, and what they read goes into the log as a
tick, so replay sees the same time (the pure core never reads one)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int:
        """Unix seconds."""
        ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())


@dataclass
class AcceleratedClock:
    """Event time that runs `speed` times faster than the wall clock from `start` (the demo's clock)."""

    start: int
    speed: float
    _origin: float = field(default_factory=time.monotonic)

    def now(self) -> int:
        return self.start + int((time.monotonic() - self._origin) * self.speed)


@dataclass
class ManualClock:
    """A clock that moves only when told: for tests and for driving a runtime from a script."""

    current: int

    def now(self) -> int:
        return self.current

    def advance(self, seconds: int) -> None:
        self.current += seconds
