"""The sequential tests of models/sequential.py: their figures by hand, and the laws that make them sound."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiergate.models.sequential import KeepState, KeepTest, PromoteTest, SequentialState, tripped

UNFLOORED = -1e9  # far below anything a test reaches: the statistics as pure likelihood ratios


def keep_test(threshold: float = 2.0, floor: float = -4.0, min_samples: int = 20) -> KeepTest:
    return KeepTest.between(0.90, 0.80, threshold, floor, min_samples)


# -- keep: the SPRT ------------------------------------------------------------------------------------


def test_a_failure_and_a_success_move_the_keep_statistic_by_their_log_likelihood_ratios() -> None:
    """Against a keep target of 0.90 and an alternative of 0.80, a failure adds ln 2 and a success ln(8/9)."""
    test = keep_test()
    assert test.failure_step == pytest.approx(math.log(2))
    assert test.success_step == pytest.approx(math.log(8 / 9))
    assert test.update(0.0, 3, 1) == pytest.approx(2 * math.log(2) + math.log(8 / 9))


def test_the_keep_statistic_never_falls_below_its_floor() -> None:
    """A long healthy run leaves the statistic at the floor, so a later regression is answered in bounded time."""
    assert keep_test(floor=-4.0).update(0.0, 1000, 1000) == -4.0


def test_demotion_needs_both_min_samples_and_the_threshold() -> None:
    """The statistic at the threshold on 19 outcomes is inconclusive; on 20 it demotes; below it never does."""
    test = keep_test(threshold=2.0, min_samples=20)
    assert not test.falls(KeepState(19, 10, 2.5))
    assert test.falls(KeepState(20, 10, 2.0))
    assert not test.falls(KeepState(500, 400, 1.99))


@pytest.mark.parametrize(
    ("target", "alternative", "threshold", "floor"),
    [(0.9, 0.95, 2.0, -4.0), (0.1, -0.0, 2.0, -4.0), (1.0, 0.9, 2.0, -4.0), (0.9, 0.8, 0.0, -4.0), (0.9, 0.8, 2, 1)],
)
def test_a_keep_test_out_of_range_is_refused_with_the_fix(
    target: float, alternative: float, threshold: float, floor: float
) -> None:
    """An alternative not below the target, a target of 1, a threshold ≤ 0 or a floor > 0 cannot make a test."""
    with pytest.raises(ValueError, match=r"target|threshold"):
        KeepTest.between(target, alternative, threshold, floor, 20)


@given(
    st.floats(0.5, 0.99),
    st.floats(0.05, 0.45),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=20),
)
def test_without_a_floor_the_keep_statistic_is_the_same_however_outcomes_fall_into_windows(
    target: float, gap: float, windows: list[tuple[int, int]]
) -> None:
    """Summed window by window or all at once, the unfloored statistic is one log-likelihood ratio."""
    test = KeepTest.between(target, target * (1 - gap), 2.0, UNFLOORED, 1)
    statistic = 0.0
    for failures, successes in windows:
        statistic = test.update(statistic, failures + successes, successes)
    failures = sum(f for f, _ in windows)
    successes = sum(s for _, s in windows)
    assert statistic == pytest.approx(test.update(0.0, failures + successes, successes), abs=1e-6)


@given(st.floats(0.5, 0.99), st.floats(0.05, 0.45), st.integers(1, 60))
def test_at_the_keep_target_the_keep_likelihood_ratio_is_a_martingale(target: float, gap: float, n: int) -> None:
    """E[exp(statistic)] after n outcomes at exactly the keep target is 1: the SPRT's error bound holds."""
    test = KeepTest.between(target, target * (1 - gap), 2.0, UNFLOORED, 1)
    expected = sum(
        math.comb(n, s) * target**s * (1 - target) ** (n - s) * math.exp(test.update(0.0, n, s)) for s in range(n + 1)
    )
    assert expected == pytest.approx(1.0, rel=1e-9)


@given(st.integers(0, 40), st.integers(0, 40))
def test_one_more_failure_in_place_of_a_success_never_lowers_the_keep_statistic(n: int, successes: int) -> None:
    """The statistic is monotone in failures: a worse window can only bring demotion closer."""
    successes = min(successes, n)
    test = keep_test()
    if successes:
        assert test.update(0.0, n, successes - 1) >= test.update(0.0, n, successes)


# -- promote: the mixture e-value ----------------------------------------------------------------------


def test_no_evidence_is_an_e_value_of_one() -> None:
    """Before any outcome the e-value is 1 (log 0): nothing is known either way."""
    test = PromoteTest.against(0.9, 0.2, -4.0, 50)
    assert test.log_evalue(test.start().logs) == 0.0


def test_one_alternative_gives_the_plain_likelihood_ratio() -> None:
    """With a single alternative (half the target's failures: 0.95 against 0.90) ten successes give 10·ln(0.95/0.9)."""
    test = PromoteTest.against(0.9, 0.2, UNFLOORED, 1, shares=(0.5,))
    logs = test.update(test.start().logs, 10, 10)
    assert test.log_evalue(logs) == pytest.approx(10 * math.log(0.95 / 0.9))
    assert test.threshold == pytest.approx(math.log(5))


@given(st.floats(0.5, 0.99), st.integers(1, 60), st.floats(0.0, 0.2))
def test_at_or_below_the_target_the_mixture_never_grows_in_expectation(target: float, n: int, below: float) -> None:
    """E[e-value] after n outcomes is 1 at the target and at most 1 below it: Ville's inequality then bounds
    by alpha the chance that an unfloored e-value ever reaches 1/alpha."""
    test = PromoteTest.against(target, 0.2, UNFLOORED, 1)
    rate = target * (1 - below)
    expected = sum(
        math.comb(n, s)
        * rate**s
        * (1 - rate) ** (n - s)
        * math.exp(test.log_evalue(test.update(test.start().logs, n, s)))
        for s in range(n + 1)
    )
    assert expected <= 1.0 + 1e-9
    if below == 0.0:
        assert expected == pytest.approx(1.0, rel=1e-9)


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=5))
def test_the_mixture_lies_between_its_best_alternative_and_that_less_ln_k(logs: list[float]) -> None:
    """An equal-weight mixture of k likelihood ratios is at most the largest and at least the largest / k."""
    test = PromoteTest.against(0.9, 0.2, -4.0, 1, shares=tuple(0.1 + 0.1 * i for i in range(len(logs))))
    mixed = test.log_evalue(tuple(logs))
    assert max(logs) - math.log(len(logs)) - 1e-9 <= mixed <= max(logs) + 1e-9


def test_a_promote_bar_passes_from_the_threshold_and_keeps_passing_while_the_e_value_is_at_least_one() -> None:
    """Hysteresis: it starts passing at 1/alpha, stays passing between 1 and 1/alpha, stops below 1."""
    test = PromoteTest.against(0.9, 0.2, -4.0, 50, shares=(0.5,))
    below_threshold, above_one, below_one = (math.log(4),), (math.log(1.5),), (math.log(0.9),)
    at_threshold = (math.log(5),)
    assert not test.passes(below_threshold, 100, passing=False)
    assert test.passes(at_threshold, 100, passing=False)
    assert test.passes(above_one, 100, passing=True)
    assert not test.passes(above_one, 100, passing=False)
    assert not test.passes(below_one, 100, passing=True)
    assert not test.passes(at_threshold, 49, passing=False)  # thin evidence never passes


def test_a_promote_state_observes_windows_and_judges_itself_at_each() -> None:
    """Fed 60 successes against 0.90, the bar passes; an empty window keeps its verdict."""
    test = PromoteTest.against(0.9, 0.2, -4.0, 50)
    state = test.start()
    test.observe(state, 60, 60)
    assert (state.n, state.successes, state.passing) == (60, 60, True)
    test.observe(state, 0, 0)
    assert state.passing
    assert test.figures(state).record()["statistic"] == pytest.approx(test.log_evalue(state.logs), abs=1e-6)


@pytest.mark.parametrize(("target", "alpha", "floor"), [(1.0, 0.2, -4.0), (0.9, 0.0, -4.0), (0.9, 0.2, 0.5)])
def test_a_promote_test_out_of_range_is_refused(target: float, alpha: float, floor: float) -> None:
    """A target of 1 can never be shown; alpha must be in (0, 1); the floor must be ≤ 0."""
    with pytest.raises(ValueError, match=r"target|alpha"):
        PromoteTest.against(target, alpha, floor, 50)


# -- the tripwire and the state --------------------------------------------------------------------------


def test_the_tripwire_counts_failures_in_a_row_and_a_success_resets_it() -> None:
    """Three failures in a row trip a tripwire of 3; a success in between starts the count again; 0 is off."""
    run, fired = 0, False
    for success in (False, False, True, False, False):
        run, fired = tripped(run, success, 3)
    assert (run, fired) == (2, False)
    assert tripped(run, False, 3) == (3, True)
    assert tripped(99, False, 0) == (100, False)


def test_the_sequential_state_round_trips_through_json() -> None:
    """Saved and restored, the state is equal: it can live in the key state and the changelog."""
    keep, promote = keep_test(), PromoteTest.against(0.9, 0.2, -4.0, 50)
    state = SequentialState.fresh(1, (promote,))
    keep.observe(state.keep[0], 30, 25)
    state.keep[0].run = 2
    promote.observe(state.promote[0], 80, 79)
    restored = SequentialState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert restored.keep[0] == KeepState(30, 25, state.keep[0].statistic, 2)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=30))
def test_keep_figures_add_up_to_what_was_observed(windows: list[tuple[int, int]]) -> None:
    """n and successes since entry are the sums of the windows; the statistic stays within [floor, ∞)."""
    test, state = keep_test(), KeepState()
    for n, successes in windows:
        test.observe(state, n + successes, successes)
    assert state.n == sum(n + s for n, s in windows)
    assert state.successes == sum(s for _, s in windows)
    assert state.statistic >= test.floor
    assert test.figures(state).n == state.n
