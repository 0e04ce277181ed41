"""Given/when/then over events: a small policy with readable numbers and a builder for event logs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from tiergate.models import Decision, State, fold
from tiergate.models.fold import Event, step
from tiergate.models.policy import Policy, deep_merge
from tiergate.models.wire import event_from_dict, format_ts, parse_ts
from tiergate.streams.activation import Catalog, policy_events
from tiergate.streams.policy_file import policy_from_mapping

T0 = parse_ts("2026-11-02T00:00:00Z")
HOUR = 3600

# Numbers small enough to follow by hand: 10 of 10 accepted gives a Wilson lower bound of 0.72 ≥ 0.5.
BASE_POLICY: dict[str, Any] = {
    "policy_version": "test-1",
    "window": "1h",
    "lookback": "1d",
    "confidence": 0.95,
    "demotion": {"margin": 0.05, "min_samples": 10, "cooldown": "0s"},
    "tiers": {
        "crawl": {"promote": {"hold": "2h", "bars": [{"metric": "acceptance_rate", "target": 0.5, "min_samples": 10}]}},
        "walk": {
            "keep": [{"metric": "completion_rate", "target": 0.5}],
            "promote": {
                "hold": "2h",
                "bars": [
                    {"metric": "completion_rate", "target": 0.5, "min_samples": 10},
                    {"metric": "customer_success_rate", "target": 0.5, "min_samples": 10},
                ],
            },
        },
        "run": {"keep": [{"metric": "customer_success_rate", "target": 0.5}]},
    },
    "action_types": {"t": {}, "capped": {"max_tier": "walk"}, "ro": {"read_only": True}},
}


def policy(**changes: Any) -> Policy:
    """The test policy with `changes` deep-merged in (mappings merge, everything else replaces)."""
    return policy_from_mapping(deep_merge(copy.deepcopy(BASE_POLICY), changes))


def policy_without(*names: str, **changes: Any) -> Policy:
    """The test policy (with `changes`) whose catalog leaves out `names`."""
    raw = deep_merge(copy.deepcopy(BASE_POLICY), changes)
    raw["action_types"] = {name: spec for name, spec in raw["action_types"].items() if name not in names}
    return policy_from_mapping(raw)


def at(hours: float) -> str:
    return format_ts(T0 + round(hours * HOUR))


def end_of_hour(hour: int) -> str:
    """The RFC 3339 end of window `hour` (counted from T0), where its close decisions are dated."""
    return format_ts(T0 + (hour + 1) * HOUR)


@dataclass
class Log:
    """Builds an event log; every event gets a fresh id unless one is given."""

    action_type: str = "t"
    events: list[dict[str, Any]] = field(default_factory=list)
    _n: int = 0

    def add(self, **event: Any) -> Log:
        self._n += 1
        event.setdefault("event_id", f"e{self._n}")
        event.setdefault("action_type", self.action_type)
        self.events.append(event)
        return self

    def action(self, hour: float, tier: str = "crawl", action_id: str | None = None, **extra: Any) -> Log:
        return self.add(type="action", ts=at(hour), tier=tier, action_id=action_id or f"a{self._n}", **extra)

    def outcome(self, hour: float, kind: str, result: str, tier: str = "crawl", **extra: Any) -> Log:
        extra.setdefault("action_id", f"a{self._n}")
        return self.add(type="outcome", ts=at(hour), tier=tier, kind=kind, result=result, **extra)

    def reviews(self, hour: float, accepted: int, rejected: int = 0, tier: str = "crawl", **extra: Any) -> Log:
        for _ in range(accepted):
            self.outcome(hour, "review", "accepted", tier, **extra)
        for _ in range(rejected):
            self.outcome(hour, "review", "rejected", tier, **extra)
        return self

    def internal(self, hour: float, completed: int, failed: int = 0, tier: str = "walk", **extra: Any) -> Log:
        for _ in range(completed):
            self.outcome(hour, "internal", "completed", tier, **extra)
        for _ in range(failed):
            self.outcome(hour, "internal", "failed", tier, **extra)
        return self

    def customer(self, hour: float, success: int, failure: int = 0, tier: str = "walk", **extra: Any) -> Log:
        for _ in range(success):
            self.outcome(hour, "customer", "success", tier, **extra)
        for _ in range(failure):
            self.outcome(hour, "customer", "failure", tier, **extra)
        return self

    def override(self, hour: float, op: str, tier: str | None = None, **extra: Any) -> Log:
        event = {"type": "override", "ts": at(hour), "op": op, "actor": "ops@example.com", "reason": f"test {op}"}
        return self.add(**event, **({} if tier is None else {"tier": tier}), **extra)

    def checkpoint(self, hour: float, through: float, **extra: Any) -> Log:
        """The customer feed's word, at `hour`, that its failures are complete through `through`."""
        return self.add(type="checkpoint", ts=at(hour), kind="customer", through=at(through), **extra)

    def tick(self, hour: float, **extra: Any) -> Log:
        return self.add(type="tick", ts=at(hour), **extra)

    def apply(self, hour: float, pol: Policy, activation_id: str, reason: str = "test activation") -> Log:
        """An activation of `pol` over the catalog the log holds so far: what `tiergate policy apply` writes."""
        return self.activate(hour, pol, activation_id, Catalog.of(fold(self.models())[0]), reason)

    def activate(
        self,
        hour: float,
        pol: Policy,
        activation_id: str,
        catalog: Catalog | None = None,
        reason: str = "test activation",
    ) -> Log:
        """An activation of `pol` over `catalog` (default: a log with no activation yet), dated `hour`."""
        for event in policy_events(
            pol, catalog or Catalog(), activation_id, "ops@example.com", reason, T0 + round(hour * HOUR)
        ):
            self.events.append(event)
        return self

    def models(self) -> list[Event]:
        return [event_from_dict(e) for e in self.events]


def run(log: Log, pol: Policy | None = None) -> tuple[State, list[Decision]]:
    """Fold the log from the start; the initial decisions are dropped (every test knows them)."""
    state, decisions = fold(log.models(), pol or policy())
    return state, [d for d in decisions if d.kind != "initial"]


def results(log: Log, pol: Policy | None = None) -> list[tuple[str, str | None]]:
    """What became of each event of the log, in order."""
    pol = pol or policy()
    state, _ = fold([], pol)
    return [step(state, e)[1:] for e in log.models()]


def moves(decisions: list[Decision]) -> list[tuple[str, str | None, str | None, str | None]]:
    """(kind, from, to, at) of each decision: what a reader checks first (None: not in the catalog)."""
    tiers = ("crawl", "walk", "run")

    def name(tier: int | None) -> str | None:
        return None if tier is None else tiers[tier]

    return [(d.kind, name(d.from_tier), name(d.to_tier), None if d.at is None else format_ts(d.at)) for d in decisions]


def climb_to_walk(log: Log, start: int = 0) -> int:
    """Ten accepted reviews an hour from `start`, with a tick per hour, until the crawl hold (2h) is met.

    The first passing close is the end of hour `start`, the promotion comes at the end of `start + 2`.
    Returns the hour after the promotion."""
    for hour in range(start, start + 3):
        log.reviews(hour + 0.5, accepted=10)
    log.tick(start + 3.1)
    return start + 3
