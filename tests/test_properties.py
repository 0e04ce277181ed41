"""The core's laws, for any event log (hypothesis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.models import State, closes, fold, tier_records
from tiergate.models.decisions import TierRecord
from tiergate.models.durations import parse_duration
from tiergate.models.wire import TIER_INDEX, event_from_dict, format_ts, parse_ts
from tiergate.streams.activation import Catalog, policy_events

from .builders import T0, policy

# A short lookback so that the log's bad spells (see `build`) really demote.
POLICY = policy(allowed_lateness="10m", lookback="3h", demotion={"cooldown": "3h"})
TYPES = ("t", "capped", "ro", "t")  # "t" twice: most traffic goes to the fully evaluated type
KINDS = ("review",) * 6 + ("internal",) * 4 + ("customer",) * 4 + ("action", "action", "tick", "tick", "override")
OPS = ("promote",) * 3 + ("demote",) * 2 + ("pin", "unpin", "unpin", "cap") + ("uncap",) * 3

step_strategy = st.tuples(
    st.sampled_from(tuple(range(13)) * 3 + (95, 250, 1500)),  # minutes since the previous event; now and
    # then a quiet spell of hours, in which runs of empty windows close
    st.sampled_from((0, 0, 0, 0, -5, -30, -200)),  # arrival skew: in order, jittered, or late
    st.sampled_from(KINDS),
    st.integers(0, 9),  # the outcome is good below a threshold that depends on the hour
    st.sampled_from(("crawl", "crawl", "walk", "run")),
    st.sampled_from(TYPES),
    st.sampled_from(OPS),
    st.integers(1, 12),  # outcomes: how many alike in a burst
)


def build(steps: list[tuple[int, int, str, int, str, str, str, int]]) -> list[dict[str, Any]]:
    """Turn drawn steps into wire events with unique ids and mostly increasing time.

    Outcomes are good nine times in ten, except in a bad spell of two hours in every six."""
    minutes, events = 0, []
    good_results = {
        "review": ("accepted", "rejected"),
        "internal": ("completed", "failed"),
        "customer": ("success", "failure"),
    }
    for i, (gap, skew, kind, quality, tier, action_type, op, burst) in enumerate(steps):
        minutes += gap
        ts = T0 + 60 * max(0, minutes + skew)
        event: dict[str, Any] = {"event_id": f"e{i}", "ts": format_ts(ts), "action_type": action_type}
        if kind == "action":
            event |= {"type": "action", "action_id": f"a{i}", "tier": tier}
        elif kind == "tick":
            event |= {"type": "tick"}
        elif kind == "override":
            event |= {"type": "override", "op": op, "actor": "ops", "reason": "property"}
            if op in ("pin", "cap") or (op == "demote" and quality > 7):
                event["tier"] = tier
        else:
            pair = good_results[kind]
            good = quality < (2 if minutes // 60 % 6 >= 4 else 9)
            event |= {"type": "outcome", "tier": tier, "kind": kind, "result": pair[0] if good else pair[1]}
            events.extend(event | {"event_id": f"e{i}.{n}", "action_id": f"a{i}.{n}"} for n in range(burst))
            continue
        events.append(event)
    return events


def models(events: list[dict[str, Any]]) -> list[Any]:
    return [event_from_dict(e) for e in events]


def lines(events: list[dict[str, Any]], state: State | None = None) -> list[str]:
    return [d.to_json() for d in fold(models(events), POLICY, state)[1]]


# Long logs on purpose: promotions need tens of outcomes over several hours of event time.
logs = st.one_of(st.lists(step_strategy, max_size=20), st.lists(step_strategy, min_size=80, max_size=300)).map(build)
fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(logs)
def test_the_same_log_gives_byte_identical_decisions(events: list[dict[str, Any]]) -> None:
    """Determinism: folding one log twice writes the same bytes."""
    assert lines(events) == lines(events)


@fast
@given(logs, st.data())
def test_duplicated_events_change_nothing(events: list[dict[str, Any]], data: st.DataObject) -> None:
    """Redelivering any events, anywhere after the original, leaves the decision log and the state unchanged."""
    redelivered = list(events)
    for _ in range(data.draw(st.integers(0, 20)) if events else 0):
        original = data.draw(st.integers(0, len(events) - 1))
        position = redelivered.index(events[original])
        redelivered.insert(data.draw(st.integers(position + 1, len(redelivered))), events[original])
    assert lines(redelivered) == lines(events)
    assert fold(models(redelivered), POLICY)[0].to_dict() == fold(models(events), POLICY)[0].to_dict()


@fast
@given(logs, st.data())
def test_folding_a_prefix_then_the_rest_from_the_saved_state_equals_folding_the_whole(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """fold(a + b) == fold(b, from=fold(a)), with the state saved to JSON and restored in between."""
    cut = data.draw(st.integers(0, len(events)))
    state, head = fold(models(events[:cut]), POLICY)
    restored = State.from_dict(json.loads(json.dumps(state.to_dict())))
    whole_state, whole = fold(models(events), POLICY)
    tail_state, tail = fold(models(events[cut:]), POLICY, restored)
    assert [d.to_json() for d in head + tail] == [d.to_json() for d in whole]
    assert tail_state.to_dict() == whole_state.to_dict()


@fast
@given(logs)
def test_automatic_moves_are_one_tier_and_only_on_conclusive_evidence(events: list[dict[str, Any]]) -> None:
    """No tier is skipped upward; nothing is promoted on fewer than min_samples or before the hold;
    nothing is demoted unless a keep bar with enough samples is below target − margin."""
    margin = Fraction("0.05")
    for decision in fold(models(events), POLICY)[1]:
        record = decision.record()
        if decision.kind == "promote":
            assert decision.to_tier == decision.from_tier + 1
            assert all(bar["passed"] and bar["n"] >= bar["min_samples"] for bar in record["evidence"])
            hold = record["hold"]
            assert parse_ts(record["at"]) - parse_ts(hold["passing_since"]) >= parse_duration(hold["required"])
        if decision.kind == "demote":
            assert decision.to_tier == decision.from_tier - 1
            assert any(
                bar["n"] >= bar["min_samples"]
                and Fraction(bar["successes"], bar["n"]) < Fraction(str(bar["target"])) - margin
                for bar in record["evidence"]
            )


@fast
@given(logs)
def test_versions_count_tier_changes_and_tiers_stay_within_ceilings(events: list[dict[str, Any]]) -> None:
    """Each key's version rises by one exactly when its tier changes; a max_tier walk type never reaches run;
    a violation never moves a tier."""
    last: dict[str, tuple[int, int]] = {}
    for decision in fold(models(events), POLICY)[1]:
        tier, version = last.get(decision.action_type, (decision.from_tier, decision.version))
        if decision.kind != "initial":
            assert decision.from_tier == tier
            assert decision.version == version + (decision.to_tier != decision.from_tier)
        if decision.kind == "violation":
            assert decision.to_tier == decision.from_tier
        if decision.action_type == "capped":
            assert decision.to_tier <= TIER_INDEX["walk"]
        if decision.action_type == "ro":
            assert decision.kind == "initial"
        last[decision.action_type] = (decision.to_tier, decision.version)


@fast
@given(logs)
def test_passing_over_quiet_windows_changes_no_decision(events: list[dict[str, Any]]) -> None:
    """The fold's shortcut over runs of closes where nothing can happen gives exactly the decisions and
    the state of closing every window one by one."""
    quick_state, quick = fold(models(events), POLICY)
    with patch.object(closes, "next_event", lambda step: step.key.next_close):
        slow_state, slow = fold(models(events), POLICY)
    assert [d.to_json() for d in quick] == [d.to_json() for d in slow]
    assert quick_state.to_dict() == slow_state.to_dict()


def tier_moves(decisions: list[Any]) -> list[tuple[str, str, int | None, int | None, int | None]]:
    """What moved, when: every decision but the activations' own, without the policy stamps."""
    return [
        (d.action_type, d.kind, d.from_tier, d.to_tier, d.at)
        for d in decisions
        if d.kind not in ("policy", "initial") or d.from_tier != d.to_tier
    ]


def activation_chain(versions: int) -> list[list[dict[str, Any]]]:
    """Activations of the property policy's own rules under new versions, each replacing the one before (the
    rules the log folds under before them: its unnamed bar rules are v1)."""
    chain, parent = [], None
    for n in range(versions):
        renamed = policy(
            allowed_lateness="10m", lookback="3h", demotion={"cooldown": "3h"}, policy_version=f"v{n}"
        ).before_activations
        catalog = Catalog({name: parent for name in renamed.types}, frozenset(renamed.types))
        chain.append(policy_events(renamed, catalog, f"act-{n}", "ops", "same rules, new version", T0))
        parent = renamed.sha256
    return chain


@fast
@given(logs, st.data())
def test_an_activation_that_changes_only_the_version_changes_no_tier(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """The same rules under new versions, activated anywhere in the log (and redelivered), move no type and
    change no later tier change: the hold streaks and the evidence carry over."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=1, max_size=4)))
    activated: list[dict[str, Any]] = []
    for n, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(events)], strict=True)):
        activated += events[start:end] + (activation_chain(len(cuts))[n] if n < len(cuts) else [])
    baseline = tier_moves(fold(models(events), POLICY)[1])
    assert tier_moves(fold(models(activated), POLICY)[1]) == baseline
    redelivered = activated + [e for e in activated if e["type"] == "policy"]
    assert [d.to_json() for d in fold(models(redelivered), POLICY)[1]] == [
        d.to_json() for d in fold(models(activated), POLICY)[1]
    ]


@fast
@given(logs, st.data())
def test_the_tier_map_published_from_decisions_is_the_states_tier_map(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """What a live runtime publishes (each tier-changing decision's record, the newest per type) is what a
    runtime rebuilt from the state publishes (`tier_records`), activations anywhere in the log: a record
    names the decision that set the tier and the policy that decision was made under, not a later one."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=1, max_size=4)))
    activated: list[dict[str, Any]] = []
    for n, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(events)], strict=True)):
        activated += events[start:end] + (activation_chain(len(cuts))[n] if n < len(cuts) else [])
    state, decisions = fold(models(activated), POLICY)
    published = {d.action_type: TierRecord.from_decision(d).record() for d in decisions if d.moves}
    assert published == {r.action_type: r.record() for r in tier_records(state)}


DETERMINISM_SCRIPT = """
import json, sys
from tests.test_properties import POLICY, fold, models
events = json.load(sys.stdin)
for decision in fold(models(events), POLICY)[1]:
    print(decision.to_json())
print(json.dumps(fold(models(events), POLICY)[0].to_dict(), sort_keys=True))
"""


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs)
def test_the_same_log_gives_the_same_bytes_under_another_hash_seed(events: list[dict[str, Any]]) -> None:
    """Determinism across processes: string hashing is randomised per process (PYTHONHASHSEED), so a fold
    that let set or dict order leak into its output would differ between these two runs."""
    outputs = [
        subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            input=json.dumps(events),
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "4242")
    ]
    assert outputs[0] == outputs[1] and outputs[0].count("\n") >= 4


# -- the sound bar rules: the same laws for logs that begin with their activation -----------------

SOUND = policy(allowed_lateness="10m", lookback="3h", demotion={"cooldown": "3h", "tripwire": 20})
SOUND_ACTIVATION = policy_events(SOUND, Catalog(), "sound", "ops", "the sound rules", T0)


def sound(events: list[dict[str, Any]]) -> list[Any]:
    """The log under the sound rules: their activation first (the policy names no rule, so they are its)."""
    return models(SOUND_ACTIVATION + events)


@fast
@given(logs, st.data())
def test_sequential_figures_survive_a_snapshot_and_restore(events: list[dict[str, Any]], data: st.DataObject) -> None:
    """Under the sound rules fold(a + b) == fold(b, from=fold(a)) with the state saved to JSON in between: the
    statistics are deterministic and all in the state."""
    whole_log = sound(events)
    cut = data.draw(st.integers(0, len(whole_log)))
    state, head = fold(whole_log[:cut])
    restored = State.from_dict(json.loads(json.dumps(state.to_dict())))
    whole_state, whole = fold(whole_log)
    tail_state, tail = fold(whole_log[cut:], state=restored)
    assert [d.to_json() for d in head + tail] == [d.to_json() for d in whole]
    assert tail_state.to_dict() == whole_state.to_dict()
    assert [d.to_json() for d in fold(whole_log)[1]] == [d.to_json() for d in whole]


@fast
@given(logs)
def test_sound_moves_are_one_tier_and_only_on_their_rules_figures(events: list[dict[str, Any]]) -> None:
    """Under the sound rules a promotion comes only with every promote bar's e-value passing on min_samples
    since its test began, after the hold; a demotion only with a keep bar's test at its threshold on
    min_samples, or its tripwire's run at the tripwire."""
    for decision in fold(sound(events))[1]:
        record = decision.record()
        if decision.kind == "promote":
            assert decision.to_tier == decision.from_tier + 1
            tests = [bar["test"] for bar in record["evidence"]]
            assert all(t["rule"] == "mixture" and t["passing"] and t["statistic"] >= 0 for t in tests)
            assert all(bar["test"]["n"] >= bar["min_samples"] for bar in record["evidence"])
            hold = record["hold"]
            assert parse_ts(record["at"]) - parse_ts(hold["passing_since"]) >= parse_duration(hold["required"])
        if decision.kind == "demote":
            assert decision.to_tier == decision.from_tier - 1
            tests = [(bar["test"], bar["min_samples"]) for bar in record["evidence"]]
            assert any(
                ((t["rule"] == "sprt" and t["n"] >= least) or t["rule"] == "tripwire")
                and t["statistic"] >= t["threshold"]
                for t, least in tests
            )


@fast
@given(logs)
def test_passing_over_quiet_windows_changes_no_sound_decision(events: list[dict[str, Any]]) -> None:
    """Under the sound rules too, skipping the closes where nothing can happen changes no decision and no
    statistic: they move only with evidence."""
    quick_state, quick = fold(sound(events))
    with patch.object(closes, "next_event", lambda step: step.key.next_close):
        slow_state, slow = fold(sound(events))
    assert [d.to_json() for d in quick] == [d.to_json() for d in slow]
    assert quick_state.to_dict() == slow_state.to_dict()
