"""Given/when/then for the tripwire: failures in a row on a kept metric demote at once."""

from __future__ import annotations

from typing import Any

from tiergate.models import Decision, State, fold
from tiergate.models.wire import format_ts

from .builders import Log, at, policy

# `t` keeps completion ≥ 0.5 at Walk; three failures in a row trip the wire.
TRIPWIRE = policy(demotion={"tripwire": 3})


def at_walk(pol: Any = TRIPWIRE) -> Log:
    """A log whose `t` is at Walk from 00:06 (an operator's promote), under `pol`'s activation."""
    return Log().activate(0, pol, "a1").override(0.1, "promote")


def demotions(log: Log) -> list[Decision]:
    return [d for d in fold(log.models())[1] if d.kind == "demote"]


def fails(log: Log, *hours: float) -> Log:
    for hour in hours:
        log.internal(hour, completed=0, failed=1)
    return log


def test_failures_in_a_row_demote_at_the_last_of_them() -> None:
    """The third failure in a row, at 01:40, demotes at 01:40 with the tripwire's figures; no close needed."""
    log = fails(at_walk().internal(0.5, completed=4), 1.2, 1.5, 1 + 40 / 60)
    (demotion,) = demotions(log)
    assert format_ts(demotion.at) == at(1 + 40 / 60) and (demotion.from_tier, demotion.to_tier) == (1, 0)
    assert demotion.evidence[0]["test"]["rule"] == "tripwire" and demotion.evidence[0]["passed"] is False
    assert "tripwire: 3 failures in a row" in demotion.reason


def test_a_success_between_failures_starts_the_run_again() -> None:
    """Two failures, a success, two failures: no run of three, no demotion."""
    log = fails(at_walk(), 1.1, 1.2).internal(1.3, completed=1)
    assert demotions(fails(log, 1.4, 1.5)) == []


def test_no_tripwire_and_a_pin_each_hold_the_type() -> None:
    """With tripwire 0 nothing trips; a pinned type is not moved by it (its run still counts: the next
    failure after the unpin trips it)."""
    assert demotions(fails(at_walk(policy(demotion={"tripwire": 0})), 1.1, 1.2, 1.3, 1.4)) == []
    pinned = fails(at_walk().override(1.0, "pin", tier="walk"), 1.1, 1.2, 1.3)
    assert demotions(pinned) == []
    (demotion,) = demotions(fails(pinned.override(1.6, "unpin"), 1.7))
    assert format_ts(demotion.at) == at(1.7)


def test_late_outcomes_and_outcomes_of_another_tier_do_not_count() -> None:
    """Failures in a window already closed (late) or of actions that ran at crawl are no run at walk."""
    log = at_walk().tick(2.0)
    fails(log, 1.2, 1.3, 1.4)  # late: hour 1 closed at 02:00
    log.internal(2.2, completed=0, failed=3, tier="crawl")
    assert demotions(log) == []
    assert demotions(fails(log, 2.3, 2.4, 2.5)) != []  # the same failures, on time and at walk, trip it


# -- under a customer maturity ------------------------------------------------------------------------------

# Walk keeps customer success ≥ 0.5; customer outcomes mature 3h after their action; tripwire 4.
MATURE = policy(
    outcomes={"customer": {"maturity": "3h"}},
    tiers={"walk": {"keep": [{"metric": "customer_success_rate", "target": 0.5}]}},
    demotion={"tripwire": 4},
)


def acted(log: Log, hour: float, units: int, failed: int, reported: float) -> Log:
    """`units` actions at walk in `hour`, `failed` of them reported failed by the customer at `reported`."""
    for i in range(units):
        log.action(hour, tier="walk", action_id=f"w{hour}-{i}")
    for i in range(failed):
        log.outcome(
            reported,
            "customer",
            "failure",
            tier="walk",
            action_id=f"w{hour}-{i}",
            action_ts=at(hour),
            event_id=f"w{hour}-{i}/customer",
        )
    return log


def test_under_a_maturity_units_in_a_row_that_all_failed_trip_it_before_they_mature() -> None:
    """Two windows whose every unit failed (2 + 2 units) are four failures in a row: the fourth failure,
    reported at 03:00, demotes at once, long before those units mature (05:00 and later)."""
    log = acted(at_walk(MATURE), 1.5, 2, 2, reported=2.0)
    log = acted(log, 2.5, 2, 2, reported=3.0)
    (demotion,) = demotions(log)
    assert format_ts(demotion.at) == at(3.0)
    assert demotion.evidence[0]["test"] | {"n": 0, "successes": 0} == {
        "rule": "tripwire",
        "statistic": 4.0,
        "threshold": 4.0,
        "n": 0,
        "successes": 0,
    }


def test_under_a_maturity_a_window_with_a_unit_not_failed_ends_the_run() -> None:
    """2 of 2 failed, then 2 of 3, then 2 of 2: no four units in a row have all failed."""
    log = acted(at_walk(MATURE), 1.5, 2, 2, reported=1.6)
    log = acted(log, 2.5, 3, 2, reported=2.6)
    log = acted(log, 3.5, 2, 2, reported=3.6)
    state: State = fold(log.models())[0]
    assert demotions(log) == [] and state.keys["t"].sequential.keep[0].run == 2
