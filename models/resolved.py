"""The rules as the fold reads them: the metrics' places in a window's counters, and one action type's
`Rules`, resolved (models/rules.py builds them from a policy's schema and validates them).

Kept apart from the pydantic schema so that it is compiled with the fold (setup.py): the fold reads these
fields at every event and every window close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from .sequential import KeepTest, PromoteTest

Metric = Literal["acceptance_rate", "completion_rate", "customer_success_rate"]
METRICS: tuple[Metric, ...] = ("acceptance_rate", "completion_rate", "customer_success_rate")
METRIC_OF_KIND = {"review": "acceptance_rate", "internal": "completion_rate", "customer": "customer_success_rate"}
METRIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(METRICS)}


def slot(tier: int, metric: int) -> int:
    """Where the (n, successes) pair of one tier and metric starts in a window's counters (models/windows.py)."""
    return (tier * len(METRICS) + metric) * 2


# The rules a bar is judged by (models/rules.py: their parameters and defaults).
PromotionRule = Literal["mixture", "wilson"]
DemotionRule = Literal["sprt", "point"]


@dataclass(frozen=True, slots=True)
class BarRule:
    """A bar resolved for the fold: indices instead of names, thresholds as exact fractions."""

    metric: str
    metric_index: int
    target: float
    min_samples: int
    keep_below: Fraction  # demote when successes/n < keep_below (target − margin), exactly


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything the fold needs to judge one action type, merged and validated."""

    window: int
    allowed_lateness: int
    lookback: int
    confidence: float
    z: float
    minor_edits_accepted: bool
    read_only: bool
    max_tier: int
    promote_bars: tuple[tuple[BarRule, ...], ...]  # per tier; empty = no way up from that tier
    hold: tuple[int, ...]  # per tier
    keep_bars: tuple[tuple[BarRule, ...], ...]  # per tier
    cooldown: int
    maturity: int | None  # customer outcomes known only this long after their action (None: as they come)
    mapping: Mapping[str, Any]  # the same rules in the policy's vocabulary, normalised (what the log keeps)
    promotion_rule: PromotionRule
    demotion_rule: DemotionRule
    tripwire: int  # failures in a row on a kept metric that demote at once (0: no tripwire)
    promote_tests: tuple[tuple[PromoteTest, ...], ...]  # per tier, under `mixture` (else empty)
    keep_tests: tuple[tuple[KeepTest, ...], ...]  # per tier, under `sprt` (else empty)
    # derived once here, read at every event or close of the fold:
    sequential_promotion: bool  # promotion.rule is mixture
    sequential_demotion: bool  # demotion.rule is sprt
    lookback_windows: int
    tripwire_bars: tuple[Mapping[str, tuple[int, ...]], ...]  # per tier: outcome kind -> keep bars on its metric
    keep_slots: tuple[tuple[int, ...], ...]  # per tier: where each keep bar's (n, successes) is in a window's counters
    promote_slots: tuple[tuple[int, ...], ...]  # per tier: the same for each promote bar
