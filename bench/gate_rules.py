"""Prototype: the sequential rules of models/sequential.py inside the fold, measured by `tiergate oc`.

    python bench/gate_rules.py examples/policy.yaml            # the proposed rules (their defaults)
    python bench/gate_rules.py POLICY.yaml --reps 40 --json     # any `tiergate oc` flag

This is the measuring rig of the rules before they are integrated into the evaluator; it is not how they
will be integrated. It subclasses the evaluator's per-step view (`_Fold`) and repeats its `step` with two
hooks: each closed window also feeds the sequential figures of the current tier's bars, and each outcome
feeds the tripwire. The verdicts at a close come from the rules named in the policy:

    promotion: {rule: mixture, alpha: 0.2, floor: -10.0}      # or rule: wilson (v1)
    demotion: {rule: sprt, threshold: 2.0, floor: -4.0, tripwire: 6, margin: …, min_samples: …, cooldown: …}
                                                              # or rule: point (v1), tripwire: 0 (off)

Both may be given globally and per action type (deep-merged like the rest of the policy). Absent options
take the defaults above: the proposal is that new policies get the sound rules. With `rule: wilson` and
`rule: point` and `tripwire: 0` the rig decides exactly what the evaluator decides (tests/test_oc.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tiergate.models import windows
from tiergate.models.decisions import Decision
from tiergate.models.evaluator import (
    SCORES,
    Event,
    KeyState,
    State,
    _Fold,
    starting_tier,
)
from tiergate.models.policy import METRIC_INDEX, Policy, deep_merge, load_policy
from tiergate.models.sequential import KeepTest, PromoteTest, SequentialState, tripped
from tiergate.models.wire import TIER_INDEX, Action, Outcome, Override
from tiergate.streams import oc

PROMOTION_DEFAULTS: dict[str, Any] = {"rule": "mixture", "alpha": 0.2, "floor": -10.0}
DEMOTION_DEFAULTS: dict[str, Any] = {"rule": "sprt", "threshold": 2.0, "floor": -4.0, "tripwire": 6}
DEMOTION_RULE_KEYS = frozenset(DEMOTION_DEFAULTS)


@dataclass(frozen=True, slots=True)
class TypeRules:
    """The rule options of one action type, and its tests resolved per tier."""

    promotion: dict[str, Any]
    demotion: dict[str, Any]  # the rule options only (margin, min_samples, cooldown stay in the policy)
    keep_tests: tuple[tuple[KeepTest, ...], ...]  # per tier
    promote_tests: tuple[tuple[PromoteTest, ...], ...]  # per tier

    @property
    def sprt(self) -> bool:
        return bool(self.demotion["rule"] == "sprt")

    @property
    def mixture(self) -> bool:
        return bool(self.promotion["rule"] == "mixture")


def split_rules(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(the policy without rule options, promotion options per type, demotion rule options per type)."""
    raw = copy.deepcopy(raw)
    promotion = {**PROMOTION_DEFAULTS, **raw.pop("promotion", {})}
    demotion = raw.setdefault("demotion", {})
    demotion_rules = {**DEMOTION_DEFAULTS, **{k: demotion.pop(k) for k in list(demotion) if k in DEMOTION_RULE_KEYS}}
    per_promotion, per_demotion = {}, {}
    for name, spec in (raw.get("action_types") or {}).items():
        spec = spec or {}
        per_promotion[name] = deep_merge(promotion, spec.pop("promotion", {}))
        own = spec.get("demotion") or {}
        per_demotion[name] = {**demotion_rules, **{k: own.pop(k) for k in list(own) if k in DEMOTION_RULE_KEYS}}
        raw["action_types"][name] = spec or None
    return raw, per_promotion, per_demotion


def resolve(policy: Policy, name: str, promotion: dict[str, Any], demotion: dict[str, Any]) -> TypeRules:
    type_policy = policy.types[name]
    margin = type_policy.demotion.margin
    keep = tuple(
        tuple(
            KeepTest.between(
                bar.target, bar.target - 2 * margin, demotion["threshold"], demotion["floor"], bar.min_samples
            )
            for bar in bars
        )
        for bars in type_policy.keep_bars
    )
    promote = tuple(
        tuple(PromoteTest.against(bar.target, promotion["alpha"], promotion["floor"], bar.min_samples) for bar in bars)
        for bars in type_policy.promote_bars
    )
    return TypeRules(promotion, demotion, keep, promote)


@dataclass(slots=True)
class RuledKey(KeyState):
    """The evaluator's key state and the sequential figures of the current tier's bars."""

    sequential: SequentialState = field(default_factory=SequentialState)


class RuledFold(_Fold):
    """The evaluator's per-step view, judging bars by the type's rules."""

    __slots__ = ("rules",)

    def __init__(self, policy: Policy, key: KeyState, out: list[Decision], rules: TypeRules) -> None:
        super().__init__(policy, key, out)
        self.rules = rules

    @property
    def ruled(self) -> RuledKey:
        assert isinstance(self.key, RuledKey)
        return self.key

    def restart(self) -> None:
        """Fresh sequential figures for the current tier (after every tier change)."""
        tier = self.key.tier
        self.ruled.sequential = SequentialState.fresh(self.rules.keep_tests[tier], self.rules.promote_tests[tier])

    def close(self, index: int) -> None:
        counters = self.key.open.get(index)
        since = self.key.since
        if since is None or index >= windows.window_for(since, self.policy.window):  # evidence of this tier
            self.observe(counters)
        else:
            self.observe(None)
        super().close(index)

    def observe(self, counters: windows.Counters | None) -> None:
        key, tp, sequential = self.key, self.type_policy, self.ruled.sequential
        tier = key.tier
        for bar, test, state in zip(tp.keep_bars[tier], self.rules.keep_tests[tier], sequential.keep, strict=True):
            at = windows.slot(tier, bar.metric_index)
            if counters is not None:
                state.observe(test, counters[at], counters[at + 1])
        for bar, ptest, pstate in zip(
            tp.promote_bars[tier], self.rules.promote_tests[tier], sequential.promote, strict=True
        ):
            at = windows.slot(tier, bar.metric_index)
            n, successes = (0, 0) if counters is None else (counters[at], counters[at + 1])
            pstate.observe(ptest, n, successes)

    def verdicts(self) -> tuple[bool, bool]:
        falling, passing = super().verdicts()
        key, sequential = self.key, self.ruled.sequential
        if self.rules.sprt:
            tests = self.rules.keep_tests[key.tier]
            falling = any(t.falls(s.statistic, s.n) for t, s in zip(tests, sequential.keep, strict=True))
        if self.rules.mixture:
            passing = bool(sequential.promote) and all(s.passing for s in sequential.promote)
        return falling, passing

    def move(self, kind: str, to: int, at: int, reason: str, **extra: Any) -> None:
        super().move(kind, to, at, reason, **extra)
        self.restart()

    def trip(self, event: Outcome, slot: int, success: int) -> None:
        """The tripwire: `tripwire` failures in a row on a kept metric demote at once."""
        key, tp = self.key, self.type_policy
        failures = int(self.rules.demotion["tripwire"])
        if failures <= 0 or slot // 2 // len(METRIC_INDEX) != key.tier or key.pinned is not None:
            return
        since = key.since
        if since is not None and event.ts < windows.window_for(since, self.policy.window) * self.policy.window:
            return
        metric = slot // 2 % len(METRIC_INDEX)
        for bar, state in zip(tp.keep_bars[key.tier], self.ruled.sequential.keep, strict=True):
            if bar.metric_index != metric:
                continue
            state.run, fired = tripped(state.run, bool(success), failures)
            if fired:
                assert key.next_close is not None
                at = max(event.ts, key.next_close * self.policy.window)
                reason = f"tripwire: {failures} {bar.metric} failures in a row"
                figures = ({"metric": bar.metric, "rule": "tripwire", "run": state.run, "threshold": failures},)
                self.move("demote", key.tier - 1, at, reason, evidence=figures)
                return


def initial_key(policy: Policy, name: str, rules: TypeRules) -> RuledKey:
    type_policy = policy.types[name]
    tier = starting_tier(type_policy)
    key = RuledKey(name, tier, windows.Lookback(policy.lookback // policy.window), read_only=type_policy.read_only)
    key.sequential = SequentialState.fresh(rules.keep_tests[tier], rules.promote_tests[tier])
    return key


def step(state: State, event: Event, policy: Policy, rules: TypeRules) -> tuple[Decision, ...]:
    """The evaluator's `step` (its short path left out), with RuledFold and the tripwire hook."""
    key = state.keys.get(event.action_type)
    if key is None or key.read_only:
        return ()
    out: list[Decision] = []
    fold_view = RuledFold(policy, key, out, rules)
    if isinstance(event, Override):
        fold_view.override(event)
        return tuple(out)
    if any(event.event_id in ids for ids in key.open_ids.values()):
        return ()
    fold_view.advance(event.ts)
    index = event.ts // policy.window
    assert key.next_close is not None
    if index < key.next_close:
        return tuple(out)
    key.open_ids.setdefault(index, set()).add(event.event_id)
    if isinstance(event, Outcome):
        at, success = SCORES[policy.minor_edits_accepted][event.kind, event.result, event.edit, event.tier]
        counters = key.open.setdefault(index, windows.empty())
        counters[at] += 1
        counters[at + 1] += success
        if TIER_INDEX[event.tier] == key.tier:
            fold_view.trip(event, at, success)
    elif isinstance(event, Action) and TIER_INDEX[event.tier] > key.tier:
        fold_view.violation(event)
    return tuple(out)


@dataclass
class RuledEvaluator:
    """An oc `Judge` folding with the rig."""

    policy: Policy
    type_rules: dict[str, TypeRules]

    @classmethod
    def load(cls, path: Path) -> RuledEvaluator:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        bare, promotion, demotion = split_rules(raw)
        policy = load_policy(bare)
        rules = {name: resolve(policy, name, promotion[name], demotion[name]) for name in policy.catalog}
        return cls(policy, rules)

    @property
    def version(self) -> str:
        return self.policy.version

    def catalog(self) -> list[str]:
        return self.policy.catalog

    def rules(self, name: str) -> dict[str, Any]:
        rules = oc.Evaluator(self.policy).rules(name)
        type_rules = self.type_rules[name]
        return {**rules, "promotion": type_rules.promotion, "demotion": {**rules["demotion"], **type_rules.demotion}}

    def start(self, name: str) -> State:
        return State({name: initial_key(self.policy, name, self.type_rules[name])})

    def fold(self, events: list[Event], state: State) -> list[Decision]:
        decisions: list[Decision] = []
        for event in events:
            decisions.extend(step(state, event, self.policy, self.type_rules[event.action_type]))
        return decisions


def main(argv: list[str]) -> int:
    top = argparse.ArgumentParser(prog="bench/gate_rules.py")
    commands = top.add_subparsers(dest="command")
    oc.add_command(commands)
    args = top.parse_args(["oc", *argv])
    return oc.report(RuledEvaluator.load(Path(args.policy)), args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
