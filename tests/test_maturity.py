"""Given/when/then for delayed customer outcomes (a maturity): units, failures, checkpoints, what counts when."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.models import Decision, State, fold
from tiergate.models.fold import step
from tiergate.models.maturity import pending

from .builders import HOUR, T0, Log, at, moves, policy

# Walk → Run needs completion ≥ 0.5 and customer success ≥ 0.5 on 10 samples each, held 2h; customer
# outcomes mature 3h after their action.
MATURE = policy(outcomes={"customer": {"maturity": "3h"}})


def walking(pol: Any = MATURE) -> Log:
    """A log whose `t` is at Walk from 00:06 (an operator's promote), under `pol`."""
    return Log().activate(0, pol, "a1").override(0.1, "promote")


def acting(log: Log, hour: float, n: int, failures: int = 0, failed_at: float | None = None) -> Log:
    """`n` actions at walk in `hour`, with staff completing them; `failures` of them fail for the customer at
    `failed_at` (the same hour by default), reported with their action's ts."""
    for i in range(n):
        log.action(hour, tier="walk", action_id=f"w{hour}-{i}")
        log.internal(hour, completed=1)
    for i in range(failures):
        log.outcome(
            failed_at if failed_at is not None else hour,
            "customer",
            "failure",
            tier="walk",
            action_id=f"w{hour}-{i}",
            action_ts=at(hour),
            event_id=f"w{hour}-{i}/customer",
        )
    return log


def folded(log: Log) -> tuple[State, list[Decision]]:
    return fold(log.models())


def results_of(log: Log) -> list[tuple[str, str | None]]:
    state = State({})
    return [(s.result, s.reason) for s in (step(state, e) for e in log.models())]


def customer_evidence(state: State) -> tuple[int, int]:
    """(n, successes) of t's customer_success_rate at walk over its lookback."""
    return state.keys["t"].lookback.pair(1, 2)


def test_units_wait_for_their_maturity_and_the_feeds_checkpoint() -> None:
    """Actions of hour 1 are units of one cell; at 05:00 (end of hour 1 + 3h) they are old enough, but only
    a checkpoint covering 05:00 lets them count: n = units, successes = units − failures."""
    log = walking()
    acting(log, 1.5, 10, failures=2).tick(6.1)
    state, _ = folded(log)
    assert customer_evidence(state) == (0, 0) and pending(state.keys["t"]) == {1: 10}
    log.checkpoint(6.2, through=5.0).tick(7.1)
    state, _ = folded(log)
    assert customer_evidence(state) == (10, 8) and pending(state.keys["t"]) == {}


def test_a_failure_just_before_maturity_counts_and_one_at_it_is_late() -> None:
    """A failure at action ts + maturity − 1s marks its unit failed; one at ts + maturity is late, and its
    reason gives both moments in RFC 3339, as every message does."""
    log = walking()
    acting(log, 1.5, 10)
    log.tick(3.5)
    just_before = {"action_ts": at(1.5), "action_id": "w1.5-0", "event_id": "w1.5-0/customer"}
    log.outcome(1.5 + 3 - 1 / 3600, "customer", "failure", tier="walk", **just_before)
    on_time = {"action_ts": at(1.5), "action_id": "w1.5-1", "event_id": "w1.5-1/customer"}
    log.outcome(4.5, "customer", "failure", tier="walk", **on_time)
    outcomes = results_of(log)
    assert outcomes[-2][0] == "applied"
    assert outcomes[-1] == (
        "late",
        "after maturity: the action of 2026-11-02T01:30:00Z was final at 2026-11-02T04:30:00Z (its maturity had "
        "passed); a failure this late no longer counts",
    )
    log.checkpoint(6, through=6).tick(6.1)
    assert customer_evidence(folded(log)[0]) == (10, 9)


def test_customer_successes_change_nothing_and_leave_no_id() -> None:
    """Under a maturity a success report is accepted and ignored; the real failure with the same derived id
    (action/kind) still counts."""
    log = walking()
    acting(log, 1.5, 10)
    early = {"action_ts": at(1.5), "action_id": "w1.5-0", "event_id": "w1.5-0/customer"}
    log.outcome(1.6, "customer", "success", tier="walk", **early)
    log.outcome(2.5, "customer", "failure", tier="walk", **early)
    assert [r for r, _ in results_of(log)[-2:]] == ["applied", "applied"]
    log.checkpoint(6, through=6).tick(6.1)
    assert customer_evidence(folded(log)[0]) == (10, 9)


def test_a_failure_may_arrive_before_its_action() -> None:
    """Failure and action land in the same cell whichever comes first."""
    log = walking()
    first = {"action_ts": at(1.5), "action_id": "w1.5-0", "event_id": "w1.5-0/customer"}
    log.outcome(1.4, "customer", "failure", tier="walk", **first)
    acting(log, 1.5, 10).checkpoint(6, through=6).tick(6.1)
    assert customer_evidence(folded(log)[0]) == (10, 9)


def test_more_failures_than_units_count_the_units_only() -> None:
    """Three failures for a cell of two actions: the cell counts 2 failed of 2; the excess is counted aside."""
    log = walking()
    acting(log, 1.5, 2, failures=2)
    extra = {"action_ts": at(1.5), "action_id": "ghost", "event_id": "ghost/customer"}
    log.outcome(1.6, "customer", "failure", tier="walk", **extra)
    log.checkpoint(6, through=6).tick(6.1)
    state, _ = folded(log)
    assert customer_evidence(state) == (2, 0) and state.keys["t"].unmatched == 1


def test_a_silent_feed_leaves_units_pending_and_a_resumed_one_releases_them() -> None:
    """No checkpoint past 02:00: hours of units stay pending and nothing is presumed a success; the feed
    resumes and they all count at the next close."""
    log = walking()
    for hour in range(1, 5):
        acting(log, hour + 0.5, 5)
    log.checkpoint(3, through=2).tick(12.1)
    state, _ = folded(log)
    assert customer_evidence(state) == (0, 0) and sum(pending(state.keys["t"]).values()) == 20
    log.checkpoint(12.2, through=12).tick(13.1)
    state, _ = folded(log)
    assert customer_evidence(state) == (20, 20) and not state.keys["t"].cells


def test_a_late_action_is_no_unit() -> None:
    """An action whose window has closed is late, and adds no unit."""
    log = walking()
    acting(log, 2.5, 3).tick(4.1)
    log.action(1.5, tier="walk", action_id="late")
    assert results_of(log)[-1][0] == "late"
    assert pending(folded(log)[0].keys["t"]) == {1: 3}


def test_units_of_the_old_tier_mature_after_a_promotion_but_count_for_that_tier_only() -> None:
    """Walk units pending when the type reaches Run mature into walk's slot: Run's evidence never sees them."""
    log = walking()
    acting(log, 1.5, 10)
    log.override(2.0, "promote").checkpoint(6, through=6).tick(6.1)
    state, _ = folded(log)
    t = state.keys["t"]
    assert t.tier == 2 and not t.cells and t.lookback.pair(2, 2) == (0, 0)


def test_a_changed_maturity_applies_to_later_cells() -> None:
    """A cell keeps the maturity it began with; units after an activation lowering it to 1h mature sooner."""
    log = walking()
    acting(log, 1.5, 5)
    sooner = policy(outcomes={"customer": {"maturity": "1h"}})
    log.apply(1.8, sooner, "a2")
    acting(log, 2.5, 5).checkpoint(4.5, through=4.5).tick(4.6)
    state, _ = folded(log)
    assert customer_evidence(state) == (5, 5)  # hour 2's cell (end 03:00 + 1h) matured; hour 1's (+3h) not
    assert state.keys["t"].cells[((T0 + HOUR) // HOUR, 1)].maturity == 3 * HOUR


def in_time_order(log: Log) -> Log:
    """The log's events sorted by their ts (stably): what a producer delivering on time would send."""
    log.events.sort(key=lambda event: event["ts"])
    return log


def test_a_type_that_looks_ready_on_early_outcomes_is_held_until_its_reversals_arrive() -> None:
    """Every refund is reported a customer success at once; six in ten are reversed two hours later. Counted
    as they come (no maturity), the early successes win (a reversal is then a duplicate of the success's
    id) and the type is promoted to Run; under a 3h maturity successes count for nothing, the reversals
    are counted, and it is held at Walk."""
    promoted = []
    for pol in (policy(), MATURE):
        log = walking(pol)
        for hour in range(1, 8):
            acting(log, hour + 0.5, 10, failures=6, failed_at=hour + 2.5)
            for i in range(10):
                receipt = {"action_ts": at(hour + 0.5), "action_id": f"w{hour + 0.5}-{i}"}
                log.outcome(
                    hour + 0.5, "customer", "success", tier="walk", event_id=f"w{hour + 0.5}-{i}/customer", **receipt
                )
        in_time_order(log).checkpoint(12, through=12).tick(12.1)
        promoted.append([m[1:3] for m in moves(folded(log)[1]) if m[0] == "promote"])
    assert promoted == [[("walk", "run")], []]


def _story(successes: list[int]) -> Log:
    log = walking()
    for hour in range(1, 6):
        acting(log, hour + 0.5, 6, failures=1)
        for i in range(successes[hour - 1]):
            early = {"action_ts": at(hour + 0.5), "action_id": f"w{hour + 0.5}-{i}"}
            log.outcome(hour + 0.7, "customer", "success", tier="walk", event_id=f"s{hour}-{i}", **early)
    return in_time_order(log).checkpoint(10, through=10).tick(10.1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 6), min_size=5, max_size=5))
def test_under_a_maturity_success_reports_change_no_decision(successes: list[int]) -> None:
    """Adding or removing customer success events changes no decision."""
    with_reports = [d.to_json() for d in folded(_story(successes))[1]]
    assert with_reports == [d.to_json() for d in folded(_story([0] * 5))[1]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.01, 2.9), min_size=5, max_size=5))
def test_moving_a_failure_earlier_within_the_maturity_changes_no_decision(delays: list[float]) -> None:
    """A failure counts for its action's cell whenever within the maturity it arrives (its own window must
    be open): when exactly changes nothing."""

    def story(at_delay: list[float]) -> list[str]:
        log = walking()
        for hour in range(1, 6):
            acting(log, hour + 0.5, 6, failures=2, failed_at=hour + 0.5 + at_delay[hour - 1])
        return [d.to_json() for d in folded(in_time_order(log).checkpoint(10, through=10).tick(10.1))[1]]

    assert story(delays) == story([2.9] * 5)


def test_a_re_sent_checkpoint_is_a_duplicate_and_one_from_the_future_is_refused() -> None:
    """The same checkpoint twice: the second is a duplicate. A checkpoint whose `through` is after its own
    `ts` would vouch for failures not yet possible: rejected with the fix, and the feed's mark unchanged."""
    log = walking().checkpoint(3, through=2, event_id="c1").checkpoint(3.5, through=2, event_id="c1")
    log.checkpoint(4, through=400, event_id="c2")
    assert [result for result, _ in results_of(log)][-3:] == ["applied", "duplicate", "rejected"]
    assert results_of(log)[-1][1] is not None and results_of(log)[-1][1].startswith("through: ")
    state, _ = folded(log)
    assert state.keys["t"].checkpoint == T0 + 2 * HOUR
