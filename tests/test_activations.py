"""Given/when/then for policy activations in the log: what carries over, what moves at once, what is refused."""

from __future__ import annotations

from typing import Any

from tiergate.models import Decision, State, fold
from tiergate.models.decisions import TierRecord
from tiergate.models.fold import step, tier_records
from tiergate.models.wire import TIERS, event_from_dict, format_ts
from tiergate.streams.activation import Catalog

from .builders import BASE_POLICY, HOUR, T0, Log, at, climb_to_walk, end_of_hour, moves, policy, policy_without

V1 = policy()


def log_with(pol: Any = V1, activation_id: str = "a1") -> Log:
    """A log that begins with the activation of `pol`."""
    return Log().activate(0, pol, activation_id)


def fold_log(log: Log) -> tuple[State, list[Decision]]:
    return fold(log.models())


def after_start(decisions: list[Decision]) -> list[Decision]:
    """Every decision but the first activation's `initial` ones."""
    return [d for d in decisions if not (d.kind == "initial" and d.details.get("activation_id") == "a1")]


def results_of(log: Log) -> list[tuple[str, str | None]]:
    state = State({})
    return [(s.result, s.reason) for s in (step(state, e) for e in log.models())]


def test_the_first_activation_brings_every_type_in_at_its_starting_tier() -> None:
    """A log that carries its policy starts with one `initial` decision per type, in name order, with the
    activation's actor, reason and id; a read-only type starts at run and says why."""
    _, decisions = fold_log(log_with())
    assert [(d.action_type, d.kind, d.from_tier, TIERS[d.to_tier or 0]) for d in decisions] == [
        ("capped", "initial", None, "crawl"),
        ("ro", "initial", None, "run"),
        ("t", "initial", None, "crawl"),
    ]
    record = decisions[1].record()
    assert record["actor"] == "ops@example.com" and record["activation_id"] == "a1"
    assert record["reason"].startswith("read_only: a bad action harms no one") and record["at"] is None


def test_a_new_type_starts_at_crawl_and_nothing_else_is_reset() -> None:
    """Adding a type to a running log: it starts at Crawl, version 0; `t` keeps its tier, version and evidence."""
    log = log_with()
    climb_to_walk(log)
    log.reviews(3.5, accepted=0, tier="walk")  # keep the key busy
    grown = policy(action_types={**BASE_POLICY["action_types"], "new_type": {}})
    log.apply(4.2, grown, "a2")
    state, decisions = fold_log(log)
    new = [d for d in decisions if d.action_type == "new_type"]
    assert [(d.kind, d.from_tier, d.to_tier, d.version, d.seq) for d in new] == [("initial", None, 0, 0, 0)]
    t = state.keys["t"]
    assert (TIERS[t.tier], t.version) == ("walk", 1)
    policy_decisions = [d for d in decisions if d.kind == "policy"]
    assert {d.action_type for d in policy_decisions} == {"t", "capped", "ro"}
    assert all(d.from_tier == d.to_tier for d in policy_decisions)


def test_a_policy_event_moves_no_time_and_is_dated_at_the_last_close() -> None:
    """An activation dated days ahead (a skewed clock) closes no window: events after it are not late; its
    decision is dated the end of the key's last closed window."""
    log = log_with()
    log.reviews(0.5, accepted=5).tick(1.1)
    log.apply(24 * 5, V1, "a2")  # ts five days on
    log.reviews(1.5, accepted=5)
    state, decisions = fold_log(log)
    assert results_of(log)[-1][0] == "applied"  # hour 1 is still open
    dated = next(d for d in decisions if d.kind == "policy" and d.action_type == "t")
    assert format_ts(dated.at) == end_of_hour(0)  # type: ignore[arg-type]
    assert state.keys["t"].max_ts == T0 + round(1.5 * HOUR)


def test_a_version_only_activation_changes_no_tier_and_keeps_the_streak() -> None:
    """The same rules under a new version: the hold streak runs on, the promotion comes when it would have."""
    plain, changed = log_with(), log_with()
    for log in (plain, changed):
        log.reviews(0.5, accepted=10).reviews(1.5, accepted=10)
    changed.apply(1.7, policy(policy_version="test-2"), "a2")
    for log in (plain, changed):
        log.reviews(2.5, accepted=10).tick(3.1)
    promotions = [[(d.kind, d.at) for d in fold_log(log)[1] if d.kind == "promote"] for log in (plain, changed)]
    assert promotions[0] == promotions[1] == [("promote", T0 + 3 * HOUR)]
    after = next(d for d in fold_log(changed)[1] if d.kind == "promote")
    assert after.policy_version == "test-2" and after.details["activation_id"] == "a2"


def test_a_raised_bar_restarts_the_hold_streak() -> None:
    """A changed promote bar of the current tier clears the streak: the hold counts again from the next
    passing close (the end of hour 1, not of hour 0), so the promotion comes an hour later than under the
    old bar, judged on the new one."""
    bar = {"metric": "acceptance_rate", "target": 0.6, "min_samples": 10}
    raised = policy(tiers={"crawl": {"promote": {"hold": "2h", "bars": [bar]}}})
    promotions = []
    for change in (None, raised):
        log = log_with()
        log.reviews(0.5, accepted=10).reviews(1.5, accepted=10)
        if change is not None:
            log.apply(1.7, change, "a2")
        for hour in range(2, 6):
            log.reviews(hour + 0.5, accepted=10)
        promotions.append([d for d in fold_log(log.tick(6.1))[1] if d.kind == "promote"])
    assert [format_ts(d.at) for d in promotions[0]] == [end_of_hour(2)]  # type: ignore[arg-type]
    assert [format_ts(d.at) for d in promotions[1]] == [end_of_hour(3)]  # type: ignore[arg-type]
    assert promotions[1][0].evidence[0]["target"] == 0.6


def test_a_lowered_ceiling_moves_the_type_down_at_once_with_its_pin() -> None:
    """max_tier crawl for a type pinned at walk: it drops to crawl at once (a downward move: cooldown
    starts) and the pin drops with it."""
    log = log_with()
    log.override(0.1, "promote").override(0.2, "pin", tier="walk").tick(1.1)
    lowered = policy(action_types={**BASE_POLICY["action_types"], "t": {"max_tier": "crawl"}})
    log.apply(1.5, lowered, "a2")
    state, decisions = fold_log(log)
    moved = [d for d in decisions if d.kind == "policy" and d.action_type == "t"]
    assert moves(moved) == [("policy", "walk", "crawl", end_of_hour(0))]
    t = state.keys["t"]
    assert (t.pinned, t.last_demotion, t.version) == (0, T0 + HOUR, 2)


def test_read_only_on_takes_a_type_to_run_or_its_cap_and_off_back_to_crawl() -> None:
    """A type that becomes read-only goes to Run (to its cap if capped); one that stops being read-only
    goes to Crawl with empty evidence, `since` set and no cooldown."""
    log = log_with()
    log.override(0.1, "cap", tier="walk").reviews(0.5, accepted=10).tick(1.1)
    read_only = policy(action_types={**BASE_POLICY["action_types"], "t": {"read_only": True}})
    log.apply(1.2, read_only, "a2")
    state, decisions = fold_log(log)
    assert moves([d for d in decisions if d.kind == "policy" and d.action_type == "t"]) == [
        ("policy", "crawl", "walk", end_of_hour(0))
    ]
    log.tick(2.1).apply(2.2, V1, "a3")
    state, decisions = fold_log(log)
    assert moves([d for d in decisions if d.kind == "policy" and d.action_type == "t"][-1:]) == [
        ("policy", "walk", "crawl", end_of_hour(1))
    ]
    t = state.keys["t"]
    assert (TIERS[t.tier], t.since, t.last_demotion) == ("crawl", T0 + 2 * HOUR, None)
    assert not t.lookback.windows and not t.open


def test_a_retired_type_leaves_the_map_and_its_events_are_rejected_without_moving_time() -> None:
    """Retirement: a `retire` decision (no tier after), out of the tier map; an action at crawl is rejected
    `retired`, one above crawl is also a violation; neither moves event time."""
    log = log_with()
    log.reviews(0.5, accepted=3)
    log.apply(0.6, policy_without("t"), "a2").action(5.5, tier="crawl").action(6.5, tier="walk")
    state, decisions = fold_log(log)
    retire = [d for d in decisions if d.action_type == "t" and d.kind in ("retire", "violation")]
    assert [(d.kind, d.from_tier, d.to_tier, d.version) for d in retire] == [
        ("retire", 0, None, 1),
        ("violation", None, None, 1),
    ]
    assert [r for r, _ in results_of(log)[-2:]] == ["rejected", "rejected"]
    assert "retired: t left the catalog in activation a2" in (results_of(log)[-1][1] or "")
    assert state.keys["t"].max_ts == T0 + round(0.5 * HOUR)
    from tiergate.models.fold import tier_records

    assert "t" not in {r.action_type for r in tier_records(state)}


def test_a_revived_type_starts_over_keeping_its_time_seq_version_and_ids() -> None:
    """Named again, a retired type is back at Crawl (version + 1, since null, no pin or evidence), its seq
    and remembered ids kept: an event seen before retirement is still a duplicate."""
    log = log_with()
    log.outcome(0.5, "review", "accepted", event_id="seen").tick(1.1)
    log.apply(1.2, policy_without("t"), "a2")
    log.apply(1.3, V1, "a3").outcome(1.5, "review", "accepted", event_id="seen")
    state, decisions = fold_log(log)
    revived = [d for d in decisions if d.action_type == "t"][-1]
    assert (revived.kind, revived.from_tier, revived.to_tier, revived.version) == ("initial", None, 0, 2)
    assert revived.seq == 2 and format_ts(revived.at) == end_of_hour(0)  # type: ignore[arg-type]
    assert results_of(log)[-1][0] == "duplicate"
    assert state.keys["t"].since is None and not state.keys["t"].retired
    live = TierRecord.from_decision(revived)  # what a runtime publishes as the decision is made
    assert live == next(r for r in tier_records(state) if r.action_type == "t")  # what a restart rebuilds


def test_a_changed_window_is_refused_and_changes_nothing() -> None:
    """An existing type's windows cannot be redrawn: the event is rejected with the reason; the key keeps its
    rules, tier and activation."""
    log = log_with()
    log.reviews(0.5, accepted=3)
    log.apply(0.6, policy(window="2h", lookback="2d"), "a2")
    outcomes = results_of(log)[-3:]
    assert all(r == "rejected" and "window cannot change" in (why or "") for r, why in outcomes)
    state, _ = fold_log(log)
    assert state.keys["t"].activation_id == "a1" and state.keys["t"].rules.window == HOUR


def test_a_stale_activation_is_refused_and_a_resumed_one_is_a_duplicate() -> None:
    """Two applies against the same parent: the second is stale for every key. The same events again (an
    interrupted apply resumed with its activation id) are duplicates."""
    log = log_with()
    stale_catalog = Catalog.of(fold(log.models())[0])
    log.apply(0.2, policy(policy_version="test-2"), "a2")
    log.activate(0.3, policy(policy_version="test-3"), "a3", stale_catalog)
    log.events += [dict(e) for e in log.events if e.get("activation_id") == "a2"]
    outcomes = results_of(log)
    assert all(r == "rejected" and "stale activation" in (why or "") for r, why in outcomes[6:9])
    assert [r for r, _ in outcomes[9:]] == ["duplicate"] * 3


def test_rules_this_tiergate_cannot_read_stop_the_key() -> None:
    """An unknown rules schema is never folded under older semantics: the key is halted, and every later
    event of it is rejected with why, until an upgrade and a refold."""
    log = log_with()
    future = dict(next(e for e in log.events if e["action_type"] == "t"))
    future |= {"event_id": "policy/a2/t", "activation_id": "a2", "parent_sha256": V1.sha256}
    future["rules"] = {**future["rules"], "schema": 2}
    log.events.append(future)
    log.reviews(0.5, accepted=1)
    outcomes = results_of(log)
    assert outcomes[-2][0] == "rejected" and "cannot read" in (outcomes[-2][1] or "")
    assert outcomes[-1][0] == "rejected" and (outcomes[-1][1] or "").startswith("halted:")


def test_invalid_rules_are_refused_like_bad_input() -> None:
    """Rules that break the method (a target above 1) are rejected; the key keeps its policy and goes on."""
    log = log_with()
    bad = dict(next(e for e in log.events if e["action_type"] == "t"))
    bad |= {"event_id": "policy/a2/t", "activation_id": "a2", "parent_sha256": V1.sha256}
    bad["rules"] = {**bad["rules"], "confidence": 2}
    log.events.append(bad)
    log.reviews(0.5, accepted=1)
    outcomes = results_of(log)
    assert outcomes[-2][0] == "rejected" and "invalid rules" in (outcomes[-2][1] or "")
    assert outcomes[-1][0] == "applied"


def test_a_policy_event_names_its_own_id() -> None:
    """The id of a policy event is policy/<activation id>/<type>; anything else is bad input."""
    event = dict(log_with().events[0]) | {"event_id": "whatever"}
    try:
        event_from_dict(event)
    except ValueError as error:
        assert "policy/a1/capped" in str(error)
    else:
        raise AssertionError("a policy event with a foreign id was accepted")


def test_decisions_after_an_activation_carry_it() -> None:
    """Every later decision of a key carries the activation id, version and sha in force."""
    log = log_with()
    climb_to_walk(log)
    _, decisions = fold_log(log)
    promote = next(d for d in decisions if d.kind == "promote")
    assert promote.details["activation_id"] == "a1" and promote.policy_sha256 == V1.sha256
    assert at(0) == format_ts(T0)


# -- the bar rules in an activation --------------------------------------------------------------


def at_walk_with_figures() -> Log:
    """`t` climbs to Walk under the sound rules and builds figures there: completions with a few failures."""
    log = log_with()
    climb_to_walk(log)
    log.internal(3.5, completed=8, failed=4).customer(3.5, success=12)
    return log.tick(4.1)


def test_a_changed_demotion_parameter_restarts_only_the_keep_figures() -> None:
    """A new margin restarts the keep test (its alternative moved) but neither the promote figures nor the
    hold streak."""
    before, _ = fold_log(at_walk_with_figures())
    log = at_walk_with_figures().apply(4.2, policy(demotion={"margin": 0.1}), "a2")
    after, _ = fold_log(log)
    t0, t1 = before.keys["t"], after.keys["t"]
    assert t0.sequential.keep[0].n == 12 and t0.sequential.keep[0].statistic != 0
    assert (t1.sequential.keep[0].n, t1.sequential.keep[0].statistic) == (0, 0.0)
    assert t1.sequential.promote == t0.sequential.promote and t1.passing_since == t0.passing_since


def test_a_changed_rule_parameter_restarts_the_streak_and_every_figure() -> None:
    """A new alpha is a changed bar rule: the hold streak and all the tier's figures start again."""
    log = at_walk_with_figures().apply(4.2, policy(promotion={"alpha": 0.1}), "a2")
    t = fold_log(log)[0].keys["t"]
    assert t.passing_since is None
    assert [s.n for s in t.sequential.promote] == [0, 0] and t.sequential.keep[0].n == 0


def test_bars_listed_in_another_order_keep_their_figures() -> None:
    """Bars compare as a set: the same Walk gate with its bars swapped changes nothing, and each bar keeps
    its own figures in the new order."""
    gate = BASE_POLICY["tiers"]["walk"]["promote"]
    swapped = policy(tiers={"walk": {"promote": {"hold": gate["hold"], "bars": list(reversed(gate["bars"]))}}})
    before = fold_log(at_walk_with_figures())[0].keys["t"].sequential.promote
    after = fold_log(at_walk_with_figures().apply(4.2, swapped, "a2"))[0].keys["t"].sequential.promote
    assert after == list(reversed(before)) and before[0] != before[1]


def test_rules_written_before_the_rule_fields_are_the_v1_rules() -> None:
    """An activation whose rules name no bar rule (as every one did before they existed) is folded by v1:
    ten straight failures at Walk demote at the close, by the point rate, with no tripwire."""
    log = Log()
    for event in log_with().events:
        rules = event["rules"]
        rules.pop("promotion")
        rules["demotion"] = {k: v for k, v in rules["demotion"].items() if k in ("margin", "min_samples", "cooldown")}
        log.events.append(event)
    climb_to_walk(log)
    log.internal(3.5, completed=0, failed=10).tick(4.1)
    state, decisions = fold_log(log)
    rules = state.keys["t"].rules
    assert (rules.promotion_rule, rules.demotion_rule, rules.tripwire) == ("wilson", "point", 0)
    demotion = next(d for d in decisions if d.kind == "demote")
    assert format_ts(demotion.at) == end_of_hour(3) and "target − margin" in demotion.reason  # type: ignore[arg-type]
    assert "test" not in demotion.evidence[0]


def test_an_activation_after_an_override_is_dated_no_earlier_than_it() -> None:
    """An override takes effect at its own ts, after the last close; a policy move right after it is dated
    the last close or the key's `since`, whichever is later: the tier map's `since` never goes backwards."""
    log = log_with()
    log.reviews(0.5, accepted=1).tick(1.1)  # the window ending at hour 1 closes
    log.override(1.5, "promote")  # walk, dated 1.5h
    log.apply(1.6, policy(action_types={"t": {"max_tier": "crawl"}}), "a2")  # back to crawl
    state, decisions = fold_log(log)
    promoted, capped = [d for d in decisions if d.action_type == "t"][-2:]
    assert (promoted.kind, capped.kind, capped.to_tier) == ("override", "policy", 0)
    assert capped.at == promoted.at == state.keys["t"].since  # not the end of hour 1
