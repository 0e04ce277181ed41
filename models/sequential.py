"""Sequential tests for the bars: statistics that may be looked at at every close.

The v1 rules judge each close's lookback afresh, as if it were the only look: the point rate of a keep bar
against target − margin (`demotion.rule: point`), the Wilson lower bound of a promote bar against its target
(`promotion.rule: wilson`). Looked at every hour, a healthy type is eventually demoted by chance and a
borderline one promoted by chance. The tests here accumulate the evidence since the type entered its tier,
window by window, and bound their error rates however often they are looked at:

- **Keep (`demotion.rule: sprt`)**: the log-likelihood ratio of "the rate is target − 2·margin" against "the
  rate is the keep target", summed over the outcomes since the type entered its tier and never below
  `floor` (so a type healthy for months still answers a regression quickly). Demote when it reaches
  `threshold` on at least `min_samples` outcomes.
- **Promote (`promotion.rule: mixture`)**: an e-value against "the rate is at most the target": the mean,
  over a few alternatives above the target, of each one's likelihood ratio against the target (each never
  below e^`floor`). Under any rate at or below the target it is a supermartingale, so the chance that it
  ever reaches 1/`alpha` is at most `alpha`, whatever the hold and however long the type waits. A bar
  starts passing when it does, and keeps passing while the e-value stays at or above 1.
- **Tripwire (`demotion.tripwire: k`)**: `k` failures in a row on a kept metric demote at once, at the
  outcome, not at the next close (models/tripwire.py).

The state is a few ints and floats per bar, JSON-ready (it lives in the key state and its snapshots);
every operation is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The alternatives of the promote mixture, as the share of the target's failure rate that they remove:
# 0.5 is "half the failures the target allows". Equal weights.
ALTERNATIVES: tuple[float, ...] = (0.25, 0.5, 0.75)


def _log_ratio(numerator: float, denominator: float) -> float:
    return math.log(numerator / denominator)


@dataclass(frozen=True, slots=True)
class Figures:
    """What a decision's evidence records of a bar's rule: its statistic against its threshold, on the
    outcomes since the type entered its tier, and the rule's own parameters."""

    rule: str
    statistic: float
    threshold: float
    n: int
    successes: int
    extra: tuple[tuple[str, Any], ...] = ()

    def record(self) -> dict[str, Any]:
        figures = {
            "rule": self.rule,
            "statistic": round(self.statistic, 6),
            "threshold": round(self.threshold, 6),
            "n": self.n,
            "successes": self.successes,
        }
        return figures | dict(self.extra)


@dataclass(slots=True)
class KeepState:
    """One keep bar's figures since the type entered its tier, and its failures in a row (the tripwire)."""

    n: int = 0
    successes: int = 0
    statistic: float = 0.0
    run: int = 0


@dataclass(slots=True)
class PromoteState:
    """One promote bar's figures since the type entered its tier: each alternative's log-likelihood ratio."""

    logs: tuple[float, ...]
    n: int = 0
    successes: int = 0
    passing: bool = False


@dataclass(frozen=True, slots=True)
class KeepTest:
    """One keep bar's sequential test: an SPRT of `alternative` against `target`, floored."""

    target: float
    alternative: float  # target − 2·margin
    threshold: float  # demote at a log-likelihood ratio ≥ threshold
    floor: float  # the statistic never falls below it (≤ 0)
    min_samples: int
    failure_step: float  # ln((1 − p1)/(1 − p0)): what one failure adds
    success_step: float  # ln(p1/p0): what one success adds (negative)

    @classmethod
    def between(cls, target: float, alternative: float, threshold: float, floor: float, min_samples: int) -> KeepTest:
        """The test of `alternative` (a worse rate) against `target`; ValueError names what is out of range
        (the policy loader checks the same first, with the field to fix)."""
        if not 0 < alternative < target < 1:
            raise ValueError(
                f"the keep test needs 0 < target − 2·margin < target < 1, got target {target} and "
                f"alternative {alternative}: lower the margin or the target"
            )
        if threshold <= 0 or floor > 0:
            raise ValueError(f"threshold must be > 0 and floor ≤ 0, got {threshold} and {floor}")
        return cls(
            target=target,
            alternative=alternative,
            threshold=threshold,
            floor=floor,
            min_samples=min_samples,
            failure_step=_log_ratio(1 - alternative, 1 - target),
            success_step=_log_ratio(alternative, target),
        )

    def update(self, statistic: float, n: int, successes: int) -> float:
        """The statistic after a closed window with `n` outcomes of which `successes` succeeded."""
        moved = statistic + (n - successes) * self.failure_step + successes * self.success_step
        return max(self.floor, moved)

    def observe(self, state: KeepState, n: int, successes: int) -> None:
        """Add a closed window's outcomes of the bar's metric."""
        if n:
            state.n += n
            state.successes += successes
            state.statistic = self.update(state.statistic, n, successes)

    def falls(self, state: KeepState) -> bool:
        """Demote: enough outcomes since the type entered its tier, and the statistic at the threshold."""
        return state.n >= self.min_samples and state.statistic >= self.threshold

    def figures(self, state: KeepState) -> Figures:
        extra = (("floor", self.floor), ("alternative", round(self.alternative, 6)))
        return Figures("sprt", state.statistic, self.threshold, state.n, state.successes, extra)


@dataclass(frozen=True, slots=True)
class PromoteTest:
    """One promote bar's e-value against "rate ≤ target": a mixture over alternatives above it."""

    target: float
    alpha: float
    floor: float  # each alternative's log-likelihood ratio never falls below it (≤ 0)
    min_samples: int
    steps: tuple[tuple[float, float], ...]  # per alternative: (what a success adds, what a failure adds)
    threshold: float = field(init=False)  # ln(1/alpha): the log e-value at which the bar starts passing

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", -math.log(self.alpha))

    @classmethod
    def against(
        cls, target: float, alpha: float, floor: float, min_samples: int, shares: tuple[float, ...] = ALTERNATIVES
    ) -> PromoteTest:
        """The test of "rate ≤ target" at level `alpha`; ValueError names what is out of range (the policy
        loader checks the same first, with the field to fix)."""
        if not 0 < target < 1:
            raise ValueError(f"the promote test needs 0 < target < 1, got {target}: a target of 1 can never be shown")
        if not 0 < alpha < 1 or floor > 0:
            raise ValueError(f"alpha must be in (0, 1) and floor ≤ 0, got {alpha} and {floor}")
        if not shares or not all(0 < share < 1 for share in shares):
            raise ValueError(f"alternatives must be shares in (0, 1), got {shares}")
        steps = []
        for share in shares:
            rate = target + (1 - target) * share
            steps.append((_log_ratio(rate, target), _log_ratio(1 - rate, 1 - target)))
        return cls(target=target, alpha=alpha, floor=floor, min_samples=min_samples, steps=tuple(steps))

    def start(self) -> PromoteState:
        return PromoteState((0.0,) * len(self.steps))

    def update(self, logs: tuple[float, ...], n: int, successes: int) -> tuple[float, ...]:
        """Each alternative's log-likelihood ratio after a closed window of `n` outcomes, never below the floor.
        (It runs at every close of every bar: a plain indexed loop costs least here.)"""
        failures, floor, steps = n - successes, self.floor, self.steps
        moved = []
        for i, log in enumerate(logs):
            up, down = steps[i]
            log = log + successes * up + failures * down  # this association: equal logs replay equal
            moved.append(log if log > floor else floor)
        return tuple(moved)

    def log_evalue(self, logs: tuple[float, ...]) -> float:
        """ln of the equal-weight mixture: the log of the mean of exp(logs), computed without overflow."""
        top, exp, total = max(logs), math.exp, 0.0
        for log in logs:
            total += exp(log - top)
        return top + math.log(total / len(logs))

    def passes(self, logs: tuple[float, ...], n: int, passing: bool) -> bool:
        """Passing from the close at which the e-value reaches 1/alpha, while it stays ≥ 1."""
        if n < self.min_samples or (not passing and max(logs) < self.threshold):
            return False  # the mixture's log is at most its largest term's: it cannot reach the threshold
        log_e = self.log_evalue(logs)
        return log_e >= self.threshold or (passing and log_e >= 0)

    def observe(self, state: PromoteState, n: int, successes: int) -> None:
        """Add a closed window's outcomes of the bar's metric and judge the bar again."""
        if n:
            state.n += n
            state.successes += successes
            state.logs = self.update(state.logs, n, successes)
        state.passing = self.passes(state.logs, state.n, state.passing)

    def figures(self, state: PromoteState) -> Figures:
        extra = (("floor", self.floor), ("passing", state.passing))
        return Figures("mixture", self.log_evalue(state.logs), self.threshold, state.n, state.successes, extra)


def tripped(run: int, success: bool, failures: int) -> tuple[int, bool]:
    """The run of failures in a row after one more outcome, and whether it reached `failures` (0 = off)."""
    run = 0 if success else run + 1
    return run, failures > 0 and run >= failures


@dataclass(slots=True)
class SequentialState:
    """The sequential figures of one action type at its current tier, one per bar of the tier (in the
    rules' order); restarted at every tier change and by an activation that changes what they test."""

    keep: list[KeepState] = field(default_factory=list)
    promote: list[PromoteState] = field(default_factory=list)

    @classmethod
    def fresh(cls, keep: int, promote: tuple[PromoteTest, ...]) -> SequentialState:
        """Nothing observed yet: `keep` keep bars (their tripwire runs are kept under either demotion rule)
        and one state per promote test."""
        return cls([KeepState() for _ in range(keep)], [test.start() for test in promote])

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": [[s.n, s.successes, s.statistic, s.run] for s in self.keep],
            "promote": [[s.n, s.successes, list(s.logs), s.passing] for s in self.promote],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequentialState:
        return cls(
            [KeepState(n, successes, statistic, run) for n, successes, statistic, run in data["keep"]],
            [PromoteState(tuple(logs), n, successes, passing) for n, successes, logs, passing in data["promote"]],
        )
