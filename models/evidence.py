"""Where each outcome counts, and the bars judged on a key's evidence.

Evidence is a success ratio per (tier the action ran at, metric) over the lookback's closed windows; an
outcome adds one to `n` and, if it is a success, one to `successes` of its pair (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Callable

from . import windows
from .rules import METRIC_INDEX, BarRule
from .state import KeyState
from .stats import Evidence
from .wire import TIER_INDEX, TIERS

Judge = Callable[[BarRule, int, int, float], Evidence]
Score = dict[tuple[str, str, str | None, str], tuple[int, int]]

METRIC_OF_KIND = {"review": "acceptance_rate", "internal": "completion_rate", "customer": "customer_success_rate"}


def _scores(minor_edits_accepted: bool) -> Score:
    """(kind, result, edit, tier) -> (counter slot, 1 for a success)."""
    successes: dict[tuple[str, str, str | None], int] = {
        ("review", "accepted", None): 1,
        ("review", "rejected", None): 0,
        ("review", "edited", None): 0,  # an edit of unknown size counts as major
        ("review", "edited", "major"): 0,
        ("review", "edited", "minor"): int(minor_edits_accepted),
        ("internal", "completed", None): 1,
        ("internal", "corrected", None): 0,
        ("internal", "failed", None): 0,
        ("customer", "success", None): 1,
        ("customer", "failure", None): 0,
    }
    return {
        (kind, result, edit, tier): (windows.slot(TIER_INDEX[tier], METRIC_INDEX[METRIC_OF_KIND[kind]]), success)
        for (kind, result, edit), success in successes.items()
        for tier in TIERS
    }


SCORES: dict[bool, Score] = {False: _scores(False), True: _scores(True)}


def judge_bars(key: KeyState, bars: tuple[BarRule, ...], judge: Judge) -> tuple[Evidence, ...]:
    """Each bar judged on the key's evidence: the lookback's outcomes of actions at the current tier."""
    judged = []
    for bar in bars:
        n, successes = key.lookback.pair(key.tier, bar.metric_index)
        judged.append(judge(bar, successes, n, key.rules.z))
    return tuple(judged)
