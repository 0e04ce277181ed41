"""A simulated agent fleet: realistic event histories for the demo, the example data and the benchmarks.

Each action type has a `Profile` of how good the agent is at it (per outcome kind, possibly changing over
time). The fleet acts at the tier the tier map holds for the type at that moment (it asks `tier_of`),
humans review suggestions at Crawl, staff complete or correct work at Walk, customers succeed or fail
at Walk and Run. Delivery is imperfect on purpose: some events arrive out of order within the allowed
lateness, some arrive late, some twice, and some outcomes may be reported again later (a re-report: the
same id, a later ts). Seeded, so a history is reproducible.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiergate.models.fold import initial_state, step
from tiergate.models.policy import Policy
from tiergate.models.wire import TIERS, event_from_dict, format_ts, parse_ts

HOUR = 3600
TierOf = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Quality:
    """Success probabilities for each kind of outcome."""

    acceptance: float = 0.97
    completion: float = 0.98
    customer: float = 0.995


@dataclass(frozen=True, slots=True)
class Profile:
    """How often an action type happens and how good the agent is at it; `after` changes it at a time."""

    actions_per_hour: float = 6.0
    quality: Quality = Quality()
    after: tuple[int, Quality] | None = None  # (unix seconds, quality from then on)

    def at(self, ts: int) -> Quality:
        return self.after[1] if self.after is not None and ts >= self.after[0] else self.quality


@dataclass(slots=True)
class Delivery:
    """Imperfect delivery: shares of events that arrive out of order, late, or twice."""

    jitter: float = 0.05  # arrive up to `jitter_seconds` after their ts, out of order
    jitter_seconds: int = 300
    late: float = 0.012  # arrive `late_seconds` after their ts: after their window closed
    late_seconds: int = 3 * HOUR
    duplicate: float = 0.002
    rereport: float = 0.0  # outcomes reported again later (same event_id, a later ts), after an hour and
    rereport_seconds: int = 48 * HOUR  # within this: once the first report's window has closed


@dataclass
class Fleet:
    """Generates the event stream of a fleet hour by hour, in arrival order."""

    profiles: dict[str, Profile]
    seed: int = 7
    delivery: Delivery = field(default_factory=Delivery)
    overrides: list[dict[str, Any]] = field(default_factory=list)  # operator events, delivered at their ts
    maturity: dict[str, int] = field(default_factory=dict)  # types whose customer failures come late (seconds)
    feed_delay: int = 2 * HOUR  # how far behind the clock the customer feed's checkpoints say it is complete
    _rng: random.Random = field(init=False)
    _pending: list[tuple[int, int, dict[str, Any]]] = field(init=False, default_factory=list)
    _counter: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for override in self.overrides:
            self._push(parse_ts(override["ts"]), override)

    def _push(self, arrival: int, event: dict[str, Any]) -> None:
        self._counter += 1
        heapq.heappush(self._pending, (arrival, self._counter, event))

    def _deliver(self, event: dict[str, Any], ts: int) -> None:
        roll, delivery = self._rng.random(), self.delivery
        if roll < delivery.late:
            arrival = ts + delivery.late_seconds
        elif roll < delivery.late + delivery.jitter:
            arrival = ts + self._rng.randrange(delivery.jitter_seconds)
        else:
            arrival = ts
        self._push(arrival, event)
        if self._rng.random() < delivery.duplicate:
            self._push(arrival + self._rng.randrange(60, 600), event)

    def _act(self, name: str, tier: str, ts: int) -> None:
        rng, quality = self._rng, self.profiles[name].at(ts)
        self._counter += 1
        action_id = f"{name}-{ts}-{self._counter}"
        base = {"ts": format_ts(ts), "action_type": name, "action_id": action_id, "tier": tier}
        self._deliver({"type": "action", "event_id": f"{action_id}/action", **base, "agent": "sim-bot"}, ts)

        def outcome(kind: str, result: str, delay: int, **extra: Any) -> None:
            moment = ts + delay
            event = {
                "type": "outcome",
                "event_id": f"{action_id}/{kind}",
                **base,
                "ts": format_ts(moment),
                "kind": kind,
                "result": result,
                **extra,
            }
            self._deliver(event, moment)
            if self.delivery.rereport and rng.random() < self.delivery.rereport:
                again = moment + rng.randrange(HOUR, self.delivery.rereport_seconds)
                self._push(again, {**event, "ts": format_ts(again)})

        if tier == "crawl":
            accepted = rng.random() < quality.acceptance
            outcome("review", "accepted" if accepted else rng.choice(("edited", "rejected")), rng.randrange(60, 900))
        if tier == "walk":
            done = rng.random() < quality.completion
            outcome("internal", "completed" if done else rng.choice(("corrected", "failed")), rng.randrange(60, 1800))
        if tier in ("walk", "run"):
            ok = rng.random() < quality.customer
            reason = {} if ok else {"reason": rng.choice(("reopened", "chargeback", "flagged"))}
            maturity = self.maturity.get(name)
            if maturity is None:
                outcome("customer", "success" if ok else "failure", rng.randrange(600, 2 * HOUR), **reason)
            elif not ok:  # known late, success is the absence of a failure: only failures are reported
                outcome(
                    "customer", "failure", rng.randrange(HOUR, maturity * 4 // 5), action_ts=format_ts(ts), **reason
                )

    def act(self, start: int, tier_of: TierOf) -> None:
        """Act for one hour of event time from `start`, at the tiers `tier_of` answers at its start."""
        for name in sorted(self.profiles):
            expected = self.profiles[name].actions_per_hour
            count = int(expected) + (self._rng.random() < expected - int(expected))
            tier = tier_of(name)
            for offset in sorted(self._rng.randrange(HOUR) for _ in range(count)):
                self._act(name, tier, start + offset)
        for name in sorted(self.maturity):  # the customer feed says how far its failures are complete
            through = format_ts(start + HOUR - self.feed_delay)
            checkpoint = {
                "type": "checkpoint",
                "event_id": f"checkpoint/{name}/customer/{through}",
                "ts": format_ts(start + HOUR - 1),
                "action_type": name,
                "kind": "customer",
                "through": through,
            }
            self._push(start + HOUR - 1, checkpoint)

    def arrivals(self, until: int) -> Iterator[dict[str, Any]]:
        """Everything that arrives before `until`, in arrival order."""
        while self._pending and self._pending[0][0] < until:
            yield heapq.heappop(self._pending)[2]

    def hour(self, start: int, tier_of: TierOf) -> Iterator[dict[str, Any]]:
        """Act for one hour of event time from `start`, then yield everything that arrives in it."""
        self.act(start, tier_of)
        yield from self.arrivals(start + HOUR)


def history(
    fleet: Fleet, policy: Policy | None, start: int, hours: int, activation: Sequence[dict[str, Any]] = ()
) -> Iterator[dict[str, Any]]:
    """A fleet's events over `hours` from `start`, acting at the tiers a fold of its own output decides:
    a log that begins with `activation` (the log carries its policy), or an old log folded under `policy`."""
    state = initial_state(policy)
    for event in activation:
        step(state, event_from_dict(event))

    def tier_of(name: str) -> str:
        key = state.keys.get(name)
        return "crawl" if key is None else TIERS[key.tier]  # a type outside the catalog is crawl: fail closed

    for hour in range(hours):
        for event in fleet.hour(start + hour * HOUR, tier_of):
            step(state, event_from_dict(event))
            yield event


def override(ts: int, action_type: str, op: str, reason: str, tier: str | None = None) -> dict[str, Any]:
    """An operator's override event, as an operations console would send it."""
    event = {
        "type": "override",
        "event_id": f"override-{action_type}-{ts}-{op}",
        "ts": format_ts(ts),
        "action_type": action_type,
        "op": op,
        "actor": "ops@example.com",
        "reason": reason,
    }
    return event if tier is None else {**event, "tier": tier}


def story_fleet(
    start: int, seed: int = 7, days: int = 40, scale: float = 1.0, maturity: dict[str, int] | None = None
) -> Fleet:
    """The four stories of the demo and the example history (examples/policy.yaml's catalog):

    reply_to_ticket climbs to Run; refund_up_to_50 is held at Walk by its customer outcomes although
    staff complete nearly all of it; refund_over_50 reaches Walk and is capped back to Crawl by an operator
    on day 6; escalate_to_human climbs, then regresses half-way through and is demoted.
    """
    day = 24 * HOUR
    return Fleet(
        profiles={
            "reply_to_ticket": Profile(8 * scale, Quality(acceptance=0.98, completion=0.99, customer=0.998)),
            "refund_up_to_50": Profile(8 * scale, Quality(acceptance=0.97, completion=0.995, customer=0.93)),
            "refund_over_50": Profile(6 * scale, Quality(acceptance=0.97, completion=0.97, customer=0.97)),
            "escalate_to_human": Profile(
                8 * scale,
                Quality(acceptance=0.98, completion=0.98, customer=0.99),
                after=(start + days * day // 2, Quality(acceptance=0.8, completion=0.75, customer=0.9)),
            ),
            "lookup_order": Profile(4 * scale),
        },
        seed=seed,
        overrides=[override(start + 6 * day, "refund_over_50", "cap", "finance review pending", tier="crawl")],
        maturity=dict(maturity or {}),
    )
