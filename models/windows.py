"""Event-time windows and their integer aggregates.

Window *k* is `[k·size, (k+1)·size)` in Unix seconds. A window's aggregate is a flat list of integer
counters, one (n, successes) pair per (tier, metric): outcomes are counted under the tier their action
ran at, because evidence only ever counts outcomes of actions that ran at the current tier.
No raw event is kept.
"""

from __future__ import annotations

from collections import deque

from .resolved import METRICS
from .resolved import slot as slot  # the counters' layout, defined beside the metrics
from .wire import TIERS

Counters = list[int]
WIDTH = len(TIERS) * len(METRICS) * 2


def window_for(ts: int, size: int) -> int:
    """The index of the window holding `ts`."""
    return ts // size


def empty() -> Counters:
    return [0] * WIDTH


def merge(a: Counters, b: Counters) -> Counters:
    return [n + b[i] for i, n in enumerate(a)]


def subtract(a: Counters, b: Counters) -> Counters:
    return [n - b[i] for i, n in enumerate(a)]


class Lookback:
    """The closed windows inside the lookback that hold anything, oldest first, with their running total.

    After the close of window *k* the lookback covers windows `[k + 1 − length, k]`; `horizon` is the
    first of them, and it only ever rises. Empty windows take no room, so closing a run of them costs
    nothing here. The total is kept exact by integer subtraction, so judging a bar at a close costs the
    same whatever the lookback.
    """

    __slots__ = ("horizon", "length", "revision", "totals", "windows")

    def __init__(self, length: int, horizon: int | None = None) -> None:
        self.length = length
        self.horizon = horizon  # windows below it have left the lookback (None: nothing closed yet)
        self.windows: deque[tuple[int, Counters]] = deque()
        self.totals: Counters = empty()
        self.revision = 0  # changes whenever the totals may have: verdicts on equal revisions are equal

    def push(self, index: int, counters: Counters | None) -> None:
        """Close window `index` (None: it was empty) and drop what left the lookback."""
        self.advance(index + 1)
        if counters is not None:
            self.windows.append((index, counters))
            self.totals = merge(self.totals, counters)
            self.revision += 1

    def advance(self, next_close: int) -> None:
        """Every window below `next_close` is closed: move the horizon and drop what fell below it."""
        horizon = next_close - self.length
        if self.horizon is not None and horizon <= self.horizon:
            return
        self.horizon = horizon
        windows = self.windows
        while windows and windows[0][0] < horizon:
            _, dropped = windows.popleft()
            self.totals = subtract(self.totals, dropped)
            self.revision += 1

    def clear(self) -> None:
        """Forget every closed window: evidence restarts at the window that holds a tier change."""
        self.windows.clear()
        self.totals = empty()
        self.revision += 1

    def pair(self, tier: int, metric: int) -> tuple[int, int]:
        """(n, successes) over the lookback for one tier and metric."""
        i = slot(tier, metric)
        return self.totals[i], self.totals[i + 1]
