"""Bars judged on evidence: Wilson score bounds and PASS / INCONCLUSIVE / FAIL verdicts with their figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .resolved import BarRule
from .sequential import Figures


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Two-sided Wilson score interval of successes/n; (0, 1) when there is no evidence."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


class Verdict(IntEnum):
    """FAIL < INCONCLUSIVE < PASS: the worst verdict of a gate's bars is its `min()`."""

    FAIL = 0
    INCONCLUSIVE = 1
    PASS = 2


@dataclass(frozen=True, slots=True)
class Evidence:
    """One bar against the evidence at one close, with the verdict and the figures behind it."""

    bar: BarRule
    n: int
    successes: int
    verdict: Verdict
    lower: float
    upper: float
    test: Figures | None = None  # a sequential rule's figures (since the type entered its tier); None: v1

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    def message(self, rule: str) -> str:
        bar, n = self.bar, self.n
        if self.test is not None:
            return self.test_message()
        if self.verdict is Verdict.INCONCLUSIVE:
            return f"{bar.metric} inconclusive: n={n} < min_samples {bar.min_samples}"
        if rule == "keep":
            relation = "<" if self.verdict is Verdict.FAIL else "≥"
            return f"{bar.metric} rate {self.successes}/{n} {relation} target − margin {float(bar.keep_below):g}"
        relation = "≥" if self.verdict is Verdict.PASS else "<"
        return f"{bar.metric} lower bound {self.lower:.4f} {relation} target {bar.target:g} (n={n})"

    def test_message(self) -> str:
        """The verdict of a sequential rule in its own figures."""
        test, metric = self.test, self.bar.metric
        assert test is not None
        counted = f"n={test.n} since the test began"
        if self.verdict is Verdict.INCONCLUSIVE:
            return f"{metric} inconclusive: {counted} < min_samples {self.bar.min_samples}"
        if test.rule == "tripwire":
            return f"{metric} tripwire: {test.statistic:g} failures in a row ≥ {test.threshold:g} ({counted})"
        if test.rule == "sprt":
            relation = "≥" if self.verdict is Verdict.FAIL else "<"
            return f"{metric} sequential test {test.statistic:.3f} {relation} threshold {test.threshold:g} ({counted})"
        statistic = f"{metric} log e-value {test.statistic:.3f}"
        if self.verdict is Verdict.FAIL:
            return f"{statistic} < ln(1/alpha) {test.threshold:.3f} ({counted})"
        if test.statistic >= test.threshold:
            return f"{statistic} ≥ ln(1/alpha) {test.threshold:.3f} ({counted})"
        return f"{statistic} ≥ 0, passing since it reached ln(1/alpha) {test.threshold:.3f} ({counted})"

    def record(self) -> dict[str, Any]:
        rate = self.rate
        record = {
            "metric": self.bar.metric,
            "n": self.n,
            "successes": self.successes,
            "rate": None if rate is None else round(rate, 6),
            "lower": round(self.lower, 6),
            "upper": round(self.upper, 6),
            "target": self.bar.target,
            "min_samples": self.bar.min_samples,
            "passed": self.verdict is Verdict.PASS,
        }
        return record if self.test is None else record | {"test": self.test.record()}


def passes(bar: BarRule, successes: int, n: int, z: float) -> bool:
    """The promote rule alone, without the figures: the fold's hot path at every close. The lower bound
    never exceeds the point rate, so a rate below target fails without computing it."""
    return n >= bar.min_samples and successes >= bar.target * n and wilson(successes, n, z)[0] >= bar.target


def falls(bar: BarRule, successes: int, n: int) -> bool:
    """The keep rule alone: enough samples and a point rate below target − margin, exactly."""
    below = bar.keep_below
    return n >= bar.min_samples and successes * below.denominator < below.numerator * n


def judge_promote(bar: BarRule, successes: int, n: int, z: float) -> Evidence:
    """PASS when n ≥ min_samples and the Wilson lower bound reaches the target."""
    lower, upper = wilson(successes, n, z)
    if n < bar.min_samples:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.PASS if passes(bar, successes, n, z) else Verdict.FAIL
    return Evidence(bar, n, successes, verdict, lower, upper)


def judge_keep(bar: BarRule, successes: int, n: int, z: float) -> Evidence:
    """FAIL when n ≥ min_samples and the point rate is below target − margin, compared exactly."""
    lower, upper = wilson(successes, n, z)
    if n < bar.min_samples:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.FAIL if falls(bar, successes, n) else Verdict.PASS
    return Evidence(bar, n, successes, verdict, lower, upper)


def judged_by_test(bar: BarRule, successes: int, n: int, z: float, verdict: Verdict, test: Figures) -> Evidence:
    """A bar judged by a sequential rule: the verdict and figures are the rule's; n, successes and the
    Wilson bounds are the lookback's, as for every bar."""
    lower, upper = wilson(successes, n, z)
    return Evidence(bar, n, successes, verdict, lower, upper, test)
