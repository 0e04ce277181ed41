"""Where each outcome counts, and the bars judged on a key's evidence.

Evidence is a success ratio per (tier the action ran at, metric) over the lookback's closed windows; an
outcome adds one to `n` and, if it is a success, one to `successes` of its pair.
"""

from __future__ import annotations

from collections.abc import Callable

from . import windows
from .resolved import METRIC_INDEX, METRIC_OF_KIND, BarRule
from .sequential import Figures, KeepState, KeepTest, PromoteState, PromoteTest
from .state import KeyState
from .stats import Evidence, Verdict, judge_keep, judge_promote, judged_by_test
from .wire import TIER_INDEX, TIERS

Judge = Callable[[BarRule, int, int, float], Evidence]
Score = dict[tuple[str, str, str | None, str], tuple[int, int]]


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


def keep_evidence(key: KeyState) -> tuple[Evidence, ...]:
    """The current tier's keep bars judged by the type's demotion rule."""
    rules, tier = key.rules, key.tier
    bars = rules.keep_bars[tier]
    if not rules.sequential_demotion:
        return judge_bars(key, bars, judge_keep)
    tests, states = rules.keep_tests[tier], key.sequential.keep
    return tuple(
        _by_test(key, bar, keep_verdict(test, state), test.figures(state))
        for bar, test, state in zip(bars, tests, states, strict=True)
    )


def promote_evidence(key: KeyState) -> tuple[Evidence, ...]:
    """The current tier's promote bars judged by the type's promotion rule."""
    rules, tier = key.rules, key.tier
    bars = rules.promote_bars[tier]
    if not rules.sequential_promotion:
        return judge_bars(key, bars, judge_promote)
    tests, states = rules.promote_tests[tier], key.sequential.promote
    return tuple(
        _by_test(key, bar, promote_verdict(test, state), test.figures(state))
        for bar, test, state in zip(bars, tests, states, strict=True)
    )


def tripwire_evidence(key: KeyState, bar: BarRule, state: KeepState) -> Evidence:
    """A keep bar whose tripwire fired: FAIL, with the run of failures against the tripwire."""
    figures = Figures("tripwire", float(state.run), float(key.rules.tripwire), state.n, state.successes)
    return _by_test(key, bar, Verdict.FAIL, figures)


def keep_verdict(test: KeepTest, state: KeepState) -> Verdict:
    if state.n < test.min_samples:
        return Verdict.INCONCLUSIVE
    return Verdict.FAIL if test.falls(state) else Verdict.PASS


def promote_verdict(test: PromoteTest, state: PromoteState) -> Verdict:
    if state.n < test.min_samples:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS if state.passing else Verdict.FAIL


def _by_test(key: KeyState, bar: BarRule, verdict: Verdict, figures: Figures) -> Evidence:
    n, successes = key.lookback.pair(key.tier, bar.metric_index)
    return judged_by_test(bar, successes, n, key.rules.z, verdict, figures)
