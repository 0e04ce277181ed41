"""Given/when/then tests for each rule of the decision semantics."""

from __future__ import annotations

import json
from pathlib import Path

from tiergate.models import fold, tier_records
from tiergate.models.wire import TIERS

from .builders import HOUR, T0, Log, at, climb_to_walk, end_of_hour, moves, policy, results, run
from .pure_python import run_pure

# -- 1. windows, watermark, lateness -----------------------------------------------------------------


def test_a_window_closes_only_when_the_watermark_reaches_its_end() -> None:
    """Passing evidence in hour 0 is judged at its close, which the first event of hour 1 triggers."""
    log = Log().reviews(0.5, accepted=10)
    state, _ = run(log)
    assert state.keys["t"].passing_since is None
    state, _ = run(log.tick(1.0))
    assert state.keys["t"].passing_since is not None


def test_allowed_lateness_holds_a_window_open() -> None:
    """With 10m lateness an event at 00:55 still counts after one at 01:05 arrived."""
    pol = policy(allowed_lateness="10m")
    log = Log().reviews(0.5, accepted=1).tick(1 + 5 / 60).reviews(55 / 60, accepted=1)
    assert [r for r, _ in results(log, pol)] == ["applied", "applied", "applied"]


def test_an_event_in_a_closed_window_is_late_and_kept_with_its_reason() -> None:
    """Once hour 0 is closed, an outcome dated in it is late: not aggregated, reported with why."""
    log = Log().reviews(0.5, accepted=1).tick(1.5).reviews(0.7, accepted=1)
    outcome, reason = results(log)[-1]
    assert outcome == "late"
    assert reason is not None and "closed at watermark" in reason


def test_windows_before_the_first_watermark_count_as_closed() -> None:
    """A key's windows begin with the one holding its first watermark; anything earlier is late."""
    log = Log().tick(5.5).reviews(2.5, accepted=1)
    assert results(log)[-1][0] == "late"


def test_empty_windows_close_in_order_and_hold_time_runs_on_ticks() -> None:
    """Ticks alone close windows, so a type whose evidence keeps passing is promoted with no new traffic."""
    log = Log().reviews(0.5, accepted=10).tick(1.1).tick(2.1)
    _, decisions = run(log)
    assert decisions == []
    _, decisions = run(log.tick(3.1))
    assert moves(decisions) == [("promote", "crawl", "walk", end_of_hour(2))]


IDLE_FOR_FIFTY_YEARS = """
import json, sys
from tiergate.models import closes
from tests.builders import Log, moves, run

print(sys.modules["tiergate.models.fold"].__file__)
closed, original = [], closes.close
closes.close = lambda step, index: closed.append(index) or original(step, index)
_, decisions = run(Log().reviews(0.5, accepted=10).tick(1.1).tick(50 * 365 * 24))
print(json.dumps({"closes": len(closed), "moves": moves(decisions)}))
"""


def test_a_long_idle_run_of_empty_windows_is_passed_over_at_once(tmp_path: Path) -> None:
    """Fifty years of silence close in a handful of steps, not one per hour (the run holds no evidence, no
    expiry and no hold that ends), with the same decisions as a close per window would give. The closes are
    counted in the plain-Python fold (the compiled one calls `close` directly)."""
    watched = json.loads(run_pure(tmp_path, IDLE_FOR_FIFTY_YEARS))
    assert [tuple(move) for move in watched["moves"]] == [("promote", "crawl", "walk", end_of_hour(2))]
    assert 0 < watched["closes"] < 10
    _, decisions = run(Log().reviews(0.5, accepted=10).tick(1.1).tick(50 * 365 * 24))
    assert moves(decisions) == [("promote", "crawl", "walk", end_of_hour(2))]  # compiled, the same


def test_evidence_leaving_the_lookback_in_an_idle_spell_is_judged_at_the_close_where_it_leaves() -> None:
    """Hour 0's rejections hold the gate shut until they leave the 1d lookback at the close of hour 24;
    the streak starts there and the hold (2h) is met at the end of hour 26, though nothing arrives until 30:30."""
    log = Log().reviews(0.5, accepted=0, rejected=10)
    for hour in (20, 21, 22):
        log.reviews(hour + 0.5, accepted=4)
    _, decisions = run(log.tick(30.5))
    assert moves(decisions) == [("promote", "crawl", "walk", end_of_hour(26))]


# -- 2. evidence ---------------------------------------------------------------------------------------


def test_evidence_counts_only_outcomes_of_actions_at_the_current_tier() -> None:
    """Reviews of actions that ran at another tier are no evidence for Crawl."""
    log = Log().reviews(0.5, accepted=10, tier="walk").tick(1.1).tick(2.1).tick(3.1)
    assert run(log)[1] == []


def test_evidence_older_than_the_lookback_drops_out() -> None:
    """With a 1d lookback the passing streak breaks once the only evidence is a day old."""
    pol = policy(tiers={"crawl": {"promote": {"hold": "2d"}}})
    log = Log().reviews(0.5, accepted=10)
    for hour in range(1, 26):
        log.tick(hour + 0.1)
    state, decisions = run(log, pol)
    assert decisions == [] and state.keys["t"].passing_since is None


def test_evidence_restarts_at_a_tier_change() -> None:
    """After a promotion the new tier's bars see nothing from before it."""
    log = Log()
    hour = climb_to_walk(log)
    log.internal(hour + 0.5, completed=10).customer(hour + 0.5, success=10, tier="crawl").tick(hour + 1.1)
    state, _ = run(log)
    key = state.keys["t"]
    assert TIERS[key.tier] == "walk"
    assert key.passing_since is None  # the customer outcomes were of crawl actions: not walk evidence


def test_outcomes_in_open_windows_before_an_override_are_no_evidence_for_the_new_tier() -> None:
    """With lateness, an override can take effect beyond the oldest open window: what that window holds
    ran before the tier it set, so it cannot demote it (evidence starts at the window holding `since`)."""
    pol = policy(allowed_lateness="1h")
    log = Log().internal(0.7, completed=0, failed=20).override(1.5, "promote").tick(2.5).tick(3.5)
    state, decisions = run(log, pol)
    assert moves(decisions) == [("override", "crawl", "walk", at(1.5))]
    assert TIERS[state.keys["t"].tier] == "walk"


def test_evidence_in_the_window_holding_since_counts_for_the_new_tier() -> None:
    """The window that holds `since` is evidence whole: failures later in it demote."""
    pol = policy(allowed_lateness="1h")
    log = Log().override(1.5, "promote").internal(1.7, completed=0, failed=20).tick(3.5)
    assert [m[0] for m in moves(run(log, pol)[1])] == ["override", "demote"]


# -- 3. bars ---------------------------------------------------------------------------------------------


def test_fewer_samples_than_min_samples_never_promote() -> None:
    """Perfect reviews that never reach min_samples inside the lookback are inconclusive: no promotion."""
    pol = policy(
        tiers={"crawl": {"promote": {"bars": [{"metric": "acceptance_rate", "target": 0.5, "min_samples": 500}]}}}
    )
    log = Log()
    for hour in range(20):
        log.reviews(hour + 0.5, accepted=10)
    log.tick(21)
    assert run(log, pol)[1] == []


def test_a_bar_fails_when_the_wilson_lower_bound_is_below_target() -> None:
    """Six of ten accepted is a 0.6 rate but a 0.31 lower bound: below 0.5, no streak."""
    log = Log().reviews(0.5, accepted=6, rejected=4).tick(1.1)
    state, _ = run(log)
    assert state.keys["t"].passing_since is None


def test_minor_edits_count_as_accepted_only_when_the_policy_says_so() -> None:
    """An `edited` review with `edit: minor` passes the bar only under minor_edits_accepted."""
    log = Log()
    for hour in range(3):
        for _ in range(10):
            log.outcome(hour + 0.5, "review", "edited", edit="minor")
    log.tick(3.1)
    assert run(log)[1] == []
    lenient = policy(acceptance={"minor_edits_accepted": True})
    assert moves(run(log, lenient)[1]) == [("promote", "crawl", "walk", end_of_hour(2))]


# -- 4. promotion and hold ----------------------------------------------------------------------------


def test_promotion_waits_for_the_hold_and_moves_one_tier() -> None:
    """Passing from the close at 01:00, a 2h hold promotes at 03:00, not at 02:00."""
    log = Log()
    climb_to_walk(log)
    _, decisions = run(log)
    assert moves(decisions) == [("promote", "crawl", "walk", end_of_hour(2))]
    promoted = decisions[0]
    assert promoted.hold == {"passing_since": end_of_hour(0), "required": "2h"}
    assert promoted.evidence[0]["n"] == 30 and promoted.evidence[0]["passed"]


def test_a_failing_close_breaks_the_streak() -> None:
    """One bad hour in the middle restarts the hold."""
    log = Log().reviews(0.5, accepted=10).reviews(1.5, accepted=0, rejected=30).tick(2.1)
    state, _ = run(log)
    assert state.keys["t"].passing_since is None


def test_max_tier_blocks_the_move_but_not_the_streak() -> None:
    """A type whose ceiling is walk keeps passing at walk and stays there."""
    log = Log(action_type="capped")
    hour = climb_to_walk(log)
    for h in range(hour, hour + 4):
        log.internal(h + 0.5, completed=10).customer(h + 0.5, success=10)
    log.tick(hour + 4.1)
    state, decisions = run(log)
    assert [d[2] for d in moves(decisions)] == ["walk"]
    assert state.keys["capped"].passing_since is not None


def test_cooldown_blocks_automatic_promotion_only() -> None:
    """After a demotion, a passing type waits out the cooldown before it climbs again."""
    pol = policy(demotion={"cooldown": "10h"})
    log = Log().override(0.1, "promote").internal(0.5, completed=0, failed=10).tick(1.1)
    log.reviews(1.5, accepted=10).reviews(2.5, accepted=10).reviews(3.5, accepted=10).tick(4.1)
    _, decisions = run(log, pol)
    assert [d[0] for d in moves(decisions)] == ["override", "demote"]
    for hour in range(5, 12):
        log.tick(hour + 0.1)
    _, decisions = run(log, pol)
    assert moves(decisions)[-1] == ("promote", "crawl", "walk", end_of_hour(10))


# -- 5. demotion ---------------------------------------------------------------------------------------


def test_demotion_compares_the_point_rate_with_target_minus_margin_exactly() -> None:
    """With target 0.9 and margin 0.05, 17/20 (0.85) stays and 16/20 is demoted."""
    pol = policy(
        tiers={
            "walk": {
                "keep": [{"metric": "completion_rate", "target": 0.9, "min_samples": 20}],
                "promote": {
                    "bars": [
                        {"metric": "completion_rate", "target": 0.9, "min_samples": 10},
                        {"metric": "customer_success_rate", "target": 0.5, "min_samples": 10},
                    ]
                },
            }
        },
        action_types={"t": {}},
    )
    stays = Log().override(0.1, "promote").internal(0.5, completed=17, failed=3).tick(1.1)
    assert [d[0] for d in moves(run(stays, pol)[1])] == ["override"]
    drops = Log().override(0.1, "promote").internal(0.5, completed=16, failed=4).tick(1.1)
    assert moves(run(drops, pol)[1])[-1] == ("demote", "walk", "crawl", end_of_hour(0))


def test_thin_evidence_never_demotes() -> None:
    """Nine failures are fewer than demotion.min_samples (10): inconclusive, no move."""
    log = Log().override(0.1, "promote").internal(0.5, completed=0, failed=9).tick(1.1)
    assert [d[0] for d in moves(run(log)[1])] == ["override"]


def test_a_pinned_type_is_not_demoted() -> None:
    """A pin suspends automatic moves, downward ones included."""
    log = Log().override(0.1, "pin", tier="walk").internal(0.5, completed=0, failed=20).tick(1.1)
    state, decisions = run(log)
    assert [d[0] for d in moves(decisions)] == ["override"] and TIERS[state.keys["t"].tier] == "walk"


def test_demotion_sets_since_and_last_demotion_and_resets_the_streak() -> None:
    """A demotion at close W records W as the new `since` and as the start of the cooldown."""
    log = Log().override(0.1, "promote").internal(0.5, completed=0, failed=20).tick(1.1)
    state, _ = run(log)
    key = state.keys["t"]
    assert key.since == key.last_demotion == state.keys["t"].since
    assert key.passing_since is None and key.version == 2


def test_inside_the_margin_band_the_tier_does_not_flap() -> None:
    """A walk type whose completion sits between target − margin and target for a day neither moves nor bounces."""
    pol = policy(tiers={"walk": {"keep": [{"metric": "completion_rate", "target": 0.5}]}})
    log = Log().override(0.1, "promote")
    for hour in range(24):
        log.internal(hour + 0.5, completed=47, failed=53)  # 0.47: below 0.5, above 0.45
    log.tick(24.5)
    assert [d[0] for d in moves(run(log, pol)[1])] == ["override"]


# -- 6. overrides ----------------------------------------------------------------------------------------


def test_an_override_takes_effect_no_earlier_than_the_last_closed_window() -> None:
    """An override dated in a closed window is not late: it applies at that window's end."""
    log = Log().tick(2.5).override(0.2, "promote")
    _, decisions = run(log)
    assert moves(decisions) == [("override", "crawl", "walk", end_of_hour(1))]


def test_pin_holds_and_moves_up_one_tier_at_most() -> None:
    """A pin one above the current tier moves there; two above is rejected with the reason."""
    log = Log().override(0.1, "pin", tier="run")
    assert results(log)[0][0] == "rejected"
    log = Log().override(0.1, "pin", tier="walk")
    assert moves(run(log)[1]) == [("override", "crawl", "walk", at(0.1))]


def test_a_pin_suspends_promotion_but_the_streak_counts() -> None:
    """Pinned at crawl a passing type stays; unpinned after the hold it climbs at the next close."""
    log = Log().override(0.1, "pin", tier="crawl")
    climb_to_walk(log)
    state, decisions = run(log)
    assert [d[0] for d in moves(decisions)] == ["override"] and state.keys["t"].passing_since is not None
    log.override(3.2, "unpin").reviews(3.5, accepted=10).tick(4.1)
    assert moves(run(log)[1])[-1] == ("promote", "crawl", "walk", end_of_hour(3))


def test_cap_demotes_at_once_and_blocks_promotion() -> None:
    """A cap below the current tier is a downward move now; later passing evidence cannot lift it."""
    log = Log().override(0.1, "promote").override(0.2, "cap", tier="crawl")
    climb_to_walk(log)
    state, decisions = run(log)
    assert [m[2] for m in moves(decisions)] == ["walk", "crawl"]
    assert state.keys["t"].last_demotion is not None and TIERS[state.keys["t"].tier] == "crawl"


def test_a_cap_above_the_current_tier_sets_that_ceiling_and_moves_nothing() -> None:
    """Capped at walk while at crawl, a type still climbs to walk, may be pinned there, and stops there."""
    log = Log().override(0.1, "cap", tier="walk")
    after = climb_to_walk(log)
    log.override(after + 0.1, "pin", tier="walk").override(after + 0.2, "unpin").override(after + 0.3, "promote")
    state, decisions = run(log)
    assert [(d.kind, d.to_tier) for d in decisions][:3] == [("override", 0), ("promote", 1), ("override", 1)]
    assert [r for r, _ in results(log)][-3:] == ["applied", "applied", "rejected"]  # promote: above the cap
    assert state.keys["t"].cap == TIERS.index("walk") and TIERS[state.keys["t"].tier] == "walk"


def test_a_cap_lowers_a_pin_above_it() -> None:
    """A pin at walk under a later cap at crawl drops to crawl with the tier."""
    log = Log().override(0.1, "promote").override(0.2, "pin", tier="walk").override(0.3, "cap", tier="crawl")
    state, _ = run(log)
    assert state.keys["t"].pinned == 0 and state.keys["t"].tier == 0


def test_pin_above_a_cap_and_promote_at_the_ceiling_are_rejected() -> None:
    """Overrides that cannot apply are rejected with their reason and change nothing."""
    log = Log().override(0.1, "cap", tier="crawl").override(0.2, "pin", tier="walk").override(0.3, "promote")
    outcomes = results(log)
    assert [o for o, _ in outcomes] == ["applied", "rejected", "rejected"]
    assert "ceiling" in (outcomes[1][1] or "") and "ceiling" in (outcomes[2][1] or "")


def test_a_refusal_at_the_ceiling_names_the_limit_that_holds_it_and_its_fix() -> None:
    """At a ceiling that is the policy's max_tier, the fix is a new policy, not uncap (there is no cap to
    lift); at an operator's cap it is uncap; under both, both."""
    raise_it = "raise action_types.capped.max_tier in the policy and apply it"
    max_tier = f"the policy's max_tier (uncap does not lift it): {raise_it}"
    held = Log(action_type="capped").override(0.1, "promote").override(0.2, "promote").override(0.3, "uncap")
    held.override(0.4, "pin", tier="run").override(0.5, "cap", tier="crawl").override(0.6, "pin", tier="run")
    assert results(held)[1:] == [
        ("rejected", f"override promote rejected: already at the ceiling walk, {max_tier}"),
        ("rejected", f"override uncap rejected: the action type is not capped; its ceiling walk is {max_tier}"),
        ("rejected", f"override pin rejected: pin run is above the ceiling walk, {max_tier}"),
        ("applied", None),
        (
            "rejected",
            "override pin rejected: pin run is above the ceiling crawl, an operator's cap and the policy's max_tier "
            f"walk: uncap, and {raise_it}",
        ),
    ]
    capped = Log().override(0.1, "cap", tier="crawl").override(0.2, "promote")
    assert results(capped)[1] == (
        "rejected",
        "override promote rejected: already at the ceiling crawl, an operator's cap: uncap first",
    )


def test_unpin_and_uncap_need_a_pin_and_a_cap() -> None:
    """Lifting what is not there is rejected, not silently accepted."""
    assert [o for o, _ in results(Log().override(0.1, "unpin").override(0.2, "uncap"))] == ["rejected", "rejected"]


def test_human_demote_to_a_named_tier_and_promote_ignore_cooldown() -> None:
    """`demote` may skip tiers downward; `promote` right after it is not held by the cooldown."""
    pol = policy(demotion={"cooldown": "5d"})
    log = (
        Log()
        .override(0.1, "promote")
        .override(0.2, "promote")
        .override(0.3, "demote", tier="crawl")
        .override(0.4, "promote")
    )
    assert [m[1:3] for m in moves(run(log, pol)[1])] == [
        ("crawl", "walk"),
        ("walk", "run"),
        ("run", "crawl"),
        ("crawl", "walk"),
    ]


def test_overrides_on_a_read_only_type_are_rejected() -> None:
    """A read-only type is never evaluated, so there is nothing to override."""
    assert results(Log(action_type="ro").override(0.1, "cap", tier="crawl"))[0][0] == "rejected"


def test_overrides_carry_actor_and_reason() -> None:
    """The promotion log says who moved a type and why."""
    record = run(Log().override(0.1, "promote"))[1][0].record()
    assert record["actor"] == "ops@example.com" and record["reason"] == "test promote" and record["op"] == "promote"


# -- violations, duplicates, bad input ----------------------------------------------------------------


def test_an_action_above_the_tier_map_is_a_violation() -> None:
    """An agent acting at walk while the map holds crawl is logged as a violation; the tier does not move."""
    _, decisions = run(Log().action(0.5, tier="walk").action(0.6, tier="crawl"))
    assert moves(decisions) == [("violation", "crawl", "crawl", at(0.5))]
    assert decisions[0].details["action_id"] == "a0"


def test_a_duplicate_event_id_changes_nothing() -> None:
    """The first event with an id wins, whatever a second one says."""
    log = Log().reviews(0.5, accepted=10)
    log.add(type="outcome", event_id="e1", ts=at(0.6), action_id="x", tier="crawl", kind="review", result="rejected")
    assert results(log)[-1][0] == "duplicate"


def test_a_re_report_with_a_later_ts_is_a_duplicate_after_its_first_window_closed() -> None:
    """The id of an outcome is remembered until its first copy's window leaves the lookback (1d), so a
    re-report of the same outcome dated hours later is not a second sample."""
    log = Log().outcome(0.5, "review", "accepted", event_id="r1").tick(2.5)
    log.outcome(3.5, "review", "accepted", event_id="r1")
    outcome, reason = results(log)[-1]
    assert outcome == "duplicate" and reason is not None and "first copy" in reason
    state, _ = run(log.tick(4.5))
    assert sum(c[1] for _, c in state.keys["t"].lookback.windows) == 1  # one accepted review, not two


def test_an_id_is_forgotten_once_its_first_window_leaves_the_lookback() -> None:
    """After the lookback (1d) has passed its window, the same id is a new event: memory follows the lookback."""
    log = Log().outcome(0.5, "review", "accepted", event_id="r1").tick(25.5)
    log.outcome(25.6, "review", "accepted", event_id="r1")
    assert results(log)[-1][0] == "applied"
    state, _ = run(log)
    window = (T0 + 25 * HOUR) // HOUR  # hour 25, where both the tick and the second copy fall
    assert state.keys["t"].live_ids() == {"e2": window, "r1": window}


def test_resent_events_of_a_read_only_type_are_duplicates() -> None:
    """A read-only type is never evaluated, but a redelivered event of it is still a duplicate."""
    log = Log(action_type="ro").action(0.5, tier="run", action_id="x", event_id="a1")
    log.action(0.6, tier="run", action_id="x", event_id="a1")
    assert [r for r, _ in results(log)] == ["applied", "duplicate"]


def test_a_duplicate_override_is_not_applied_twice() -> None:
    """Overrides are never late, so their ids are remembered: a redelivered promote does nothing."""
    log = Log().override(0.1, "promote", event_id="o1").tick(5).override(0.1, "promote", event_id="o1")
    assert [d[0] for d in moves(run(log)[1])] == ["override"]


def test_an_unknown_action_type_is_rejected_with_the_fix() -> None:
    """Unknown types are bad input: rejected and kept, with what to do about it."""
    outcome, reason = results(Log(action_type="nope").tick(0.1))[0]
    assert outcome == "rejected" and reason is not None and "add it to the policy's action_types" in reason


# -- records ---------------------------------------------------------------------------------------------


def test_initial_decisions_cover_the_catalog_in_name_order() -> None:
    """Every catalog type starts at Crawl except the read-only one, which is Run and says why."""
    _, decisions = fold([], policy())
    assert [(d.action_type, TIERS[d.to_tier]) for d in decisions] == [
        ("capped", "crawl"),
        ("ro", "run"),
        ("t", "crawl"),
    ]
    assert "read_only" in decisions[1].reason and decisions[0].record()["from_tier"] is None


def test_the_tier_map_is_the_last_tier_change_with_its_version() -> None:
    """decision_id counts every decision of the key; version counts only tier changes."""
    log = Log().action(0.2, tier="walk").override(0.3, "promote")
    state, _ = run(log)
    record = next(r for r in tier_records(state) if r.action_type == "t").record()
    assert (record["tier"], record["version"], record["decision_id"], record["since"]) == ("walk", 1, "t/2", at(0.3))
