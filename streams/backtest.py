"""`tiergate backtest`: what a candidate policy would have done on a recorded history.

Two folds of one history run side by side, event by event, each with its own state:

- the **record**: the log folded as it is, its own activations included (what was decided);
- the **candidate**: each action type's log as recorded up to its *split* — its first event dated at or
  after `--from` (without `--from`, its first event) — then, at the split, the candidate activated on the
  type (the activation event `tiergate policy apply` would write, over the catalog folded so far),
  then the rest of the type's log without its recorded activations. With `--from`, the type's time is
  first brought to `--from` (a clock tick, as a runtime would send), so windows that ended before it are
  judged under the policy that was in force, exactly as recorded.

After the split the candidate's fold emits no violations (`step(..., violations=False)`): an action ran at
the tier the agents were given, not at the candidate's. Actions and outcomes are otherwise folded as they
are: outcomes (and, under a maturity, customer units) stay in the counters of the tier their action ran
at, and the fold judges a tier only on its own counters, so the candidate is judged on an outcome only
where it held the tier the action really ran at.
Recorded overrides go through the candidate's fold, which applies them where they can apply and rejects
them, with its reason, where they cannot.

Exposure: each recorded action after the split that ran at another tier than the candidate held then,
with the recorded outcomes of those actions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tiergate.models.decisions import Decision
from tiergate.models.fold import Event, Stepped, initial_decisions, initial_state, step
from tiergate.models.policy import Policy
from tiergate.models.results import APPLIED, DUPLICATE, REJECTED
from tiergate.models.state import KeyState, State
from tiergate.models.wire import (
    TIER_INDEX,
    TIERS,
    Action,
    Checkpoint,
    Outcome,
    Override,
    PolicyEvent,
    Tick,
    event_from_dict,
    format_ts,
)

from .activation import Catalog, policy_events
from .codec import EventError, decode
from .timeline import Changes, first_divergence, tier_name, time_at_tiers, without_evidence

ACTOR = "backtest"
SWEEP_MIN = 1024

DecisionSink = Callable[[Decision], object]


class BacktestError(ValueError):
    """A backtest that cannot answer: the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Question:
    """What to backtest: the candidate, the policy an old log's events fold under before their first
    activation, the moment the candidate takes over (None: the start), and the types to report (None: all)."""

    candidate: Policy
    fallback: Policy | None = None
    start: int | None = None
    types: frozenset[str] | None = None

    @property
    def activation_id(self) -> str:
        """Deterministic, so two runs write the same bytes: the candidate's identity, and when it takes over."""
        when = "start" if self.start is None else format_ts(self.start).replace("-", "").replace(":", "")
        return f"backtest-{self.candidate.sha256[:12]}-{when}"

    @property
    def reason(self) -> str:
        when = "the start of the log" if self.start is None else format_ts(self.start)
        return f"backtest: candidate {self.candidate.version} in force from {when}"


def clock_tick(name: str, ts: int) -> Tick:
    """The backtest's own clock at --from, for a type that has seen time (a runtime would have ticked it)."""
    return Tick.model_construct(type="tick", event_id=f"backtest/{name}/from", ts=ts, action_type=name)


class Side:
    """One fold of the history: its state and each type's tier changes."""

    def __init__(self, fallback: Policy | None) -> None:
        self.state: State = initial_state(fallback)
        self.changes: dict[str, Changes] = {}

    def take(self, decisions: Iterable[Decision], floor: int | None = None) -> None:
        """Note each tier change, taking effect at its decision's date, or at `floor` if that is later (the
        candidate's activation is dated the type's last close, but it takes over only at --from)."""
        for decision in decisions:
            if decision.moves:
                at = decision.at if floor is None or decision.at is None else max(decision.at, floor)
                self.changes.setdefault(decision.action_type, Changes()).add(decision, at)

    def tier(self, name: str) -> int | None:
        key = self.state.keys.get(name)
        return None if key is None or key.retired else key.tier

    def held(self, name: str) -> int:
        """The tier the agents get for a type: Crawl when it is out of the catalog (fail closed)."""
        tier = self.tier(name)
        return 0 if tier is None else tier


Held = tuple[int, int]  # the tiers the record and the candidate gave the agents for a type at one moment


@dataclass(slots=True)
class Exposed:
    """Recorded actions that ran at one tier while the candidate held another (and the record the tier it
    held), and the recorded outcomes of those actions."""

    actions: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unmatched: int = 0  # outcomes whose action the log did not hold (or no longer): attributed where they came

    def record(self, ran_at: int, held: Held) -> dict[str, Any]:
        return {
            "ran_at": TIERS[ran_at],
            "recorded": TIERS[held[0]],
            "candidate": TIERS[held[1]],
            "actions": self.actions,
            "outcomes": dict(sorted(self.outcomes.items())),
            "outcomes_without_action": self.unmatched,
        }


def result_name(event: Outcome) -> str:
    """`customer failure`, `review edited (minor)`: an outcome's kind and result, as counted."""
    edit = "" if event.edit is None else f" ({event.edit})"
    return f"{event.kind} {event.result}{edit}"


class Exposure:
    """One type's exposure. The tiers held when each recorded action ran are remembered as long as the
    candidate's fold remembers ids (its lookback), so that the action's later outcomes count with it; an
    outcome whose action is not remembered is judged by the tiers held when it arrives."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, Held], Exposed] = {}
        self.actions: dict[str, tuple[int, Held]] = {}  # action id -> (ts, tiers held when it ran)
        self.sweep_at = SWEEP_MIN

    def action(self, event: Action, held: Held, key: KeyState | None) -> None:
        ran_at = TIER_INDEX[event.tier]
        self.actions[event.action_id] = (event.ts, held)
        if ran_at != held[1]:
            self._row(ran_at, held).actions += 1
        if len(self.actions) > self.sweep_at:
            self._forget(key)

    def outcome(self, event: Outcome, held_now: Held) -> None:
        ran_at = TIER_INDEX[event.tier]
        remembered = self.actions.get(event.action_id)
        held = held_now if remembered is None else remembered[1]
        if held[1] == ran_at:
            return
        row = self._row(ran_at, held)
        row.outcomes[result_name(event)] += 1
        row.unmatched += remembered is None

    def _row(self, ran_at: int, held: Held) -> Exposed:
        row = self.rows.get((ran_at, held))
        if row is None:
            row = self.rows[ran_at, held] = Exposed()
        return row

    def _forget(self, key: KeyState | None) -> None:
        """Drop actions older than the candidate's lookback (amortised: the threshold doubles with what stays)."""
        if key is not None and key.lookback.horizon is not None:
            horizon = key.lookback.horizon * key.rules.window
            self.actions = {i: seen for i, seen in self.actions.items() if seen[0] >= horizon}
        self.sweep_at = max(SWEEP_MIN, 2 * len(self.actions))

    def records(self) -> list[dict[str, Any]]:
        return [row.record(ran_at, held) for (ran_at, held), row in sorted(self.rows.items())]


class Backtest:
    """The two folds of one history, fed one line at a time; `report()` when the history is done."""

    def __init__(self, question: Question, on_decision: DecisionSink | None = None) -> None:
        self.question = question
        self.on_decision = on_decision or (lambda decision: None)
        self.recorded = Side(question.fallback)
        self.candidate = Side(question.fallback)
        for side in (self.recorded, self.candidate):
            side.take(initial_decisions(question.fallback))
        for decision in initial_decisions(question.fallback):
            self.on_decision(decision)
        self.switched: set[str] = set()
        self.exposure: dict[str, Exposure] = {}
        self.rejected_overrides: dict[str, list[dict[str, Any]]] = {}
        self.dropped: Counter[str] = Counter()  # recorded activations the candidate replaced, per type
        self.first_types: dict[str, str] = {}  # each type's first event type
        self.events = self.undecodable = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    # -- feeding the history ------------------------------------------------------------------------------

    def feed(self, raw: bytes) -> None:
        """One line of the history, in log order."""
        try:
            event = decode(raw)
        except EventError:
            self.undecodable += 1  # neither fold can read it: it counts in neither
            return
        if not isinstance(event, PolicyEvent | Checkpoint):  # they move no time: their ts is recorded only
            self._clock(event.ts)
        name = event.action_type
        if self.question.types is not None and name not in self.question.types:
            return  # each type folds alone: leaving the others out changes nothing for it
        self.events += 1
        self.first_types.setdefault(name, event.type)
        recorded = step(self.recorded.state, event)
        self.recorded.take(recorded.decisions)
        self._candidate(event, recorded)

    def _clock(self, ts: int) -> None:
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def _candidate(self, event: Event, recorded: Stepped) -> None:
        name, start = event.action_type, self.question.start
        if name not in self.switched and (start is None or event.ts >= start):
            self._switch(name, event.ts, bring_time=True)
        if name not in self.switched:
            self._step(event)  # as recorded
        elif isinstance(event, PolicyEvent):
            self.dropped[name] += 1
        elif isinstance(event, Action):
            self._action(event)
        else:
            stepped = self._step(event)
            if isinstance(event, Outcome) and stepped.result != DUPLICATE:
                self._exposure(name).outcome(event, self._held(name))
            elif isinstance(event, Override) and stepped.result == REJECTED:
                self._rejected(event, stepped, recorded)

    def _step(self, event: Event, floor: int | None = None) -> Stepped:
        stepped = step(self.candidate.state, event, violations=event.action_type not in self.switched)
        self.candidate.take(stepped.decisions, floor)
        for decision in stepped.decisions:
            self.on_decision(decision)
        return stepped

    def _action(self, event: Action) -> None:
        stepped = self._step(event)
        if stepped.result != DUPLICATE:
            name = event.action_type
            self._exposure(name).action(event, self._held(name), self.candidate.state.keys.get(name))

    def _held(self, name: str) -> Held:
        """The tiers the record and the candidate give the agents for `name` now."""
        return self.recorded.held(name), self.candidate.held(name)

    def _exposure(self, name: str) -> Exposure:
        exposure = self.exposure.get(name)
        if exposure is None:
            exposure = self.exposure[name] = Exposure()
        return exposure

    def _rejected(self, event: Override, candidate: Stepped, recorded: Stepped) -> None:
        self.rejected_overrides.setdefault(event.action_type, []).append(
            {
                "at": format_ts(event.ts),
                "event_id": event.event_id,
                "op": event.op,
                "tier": event.tier,
                "actor": event.actor,
                "reason": candidate.reason,
                "recorded": recorded.result,
            }
        )

    # -- the candidate takes over -------------------------------------------------------------------------

    def _switch(self, name: str, ts: int, bring_time: bool) -> None:
        """Activate the candidate on `name`; with --from, first bring the type's time there (if it has any)."""
        self.switched.add(name)
        start = self.question.start
        key = self.candidate.state.keys.get(name)
        if bring_time and start is not None and key is not None and key.max_ts is not None:
            self._step(clock_tick(name, start))
        activation = self._activation(name, ts if start is None else start)
        if activation is None:
            return
        stepped = self._step(activation, start)
        if stepped.result != APPLIED:
            raise BacktestError(
                f"{name}: the candidate cannot take over "
                f"{'at the start' if start is None else 'at ' + format_ts(start)}: {stepped.reason}"
            )

    def _activation(self, name: str, ts: int) -> PolicyEvent | None:
        """The candidate's activation event for `name` over the catalog the candidate's fold holds now (None
        for a type that is neither in it nor in the candidate)."""
        key = self.candidate.state.keys.get(name)
        current = frozenset() if key is None or key.retired else frozenset({name})
        catalog = Catalog({name: None if key is None else key.activation_sha}, current)
        question = self.question
        for event in policy_events(question.candidate, catalog, question.activation_id, ACTOR, question.reason, ts):
            if event["action_type"] == name:
                activation = event_from_dict(event)
                assert isinstance(activation, PolicyEvent)
                return activation
        return None

    def finish(self) -> None:
        """Types the candidate has not taken over yet (no event at or after --from, or none at all) are taken
        over at the end of the log, without moving their time."""
        names = set(self.candidate.state.keys) | set(self.question.candidate.types)
        if self.question.types is not None:
            names &= self.question.types
        for name in sorted(names - self.switched):
            self._switch(name, self.last_ts or 0, bring_time=False)

    # -- the report ---------------------------------------------------------------------------------------

    @property
    def carries_its_policy(self) -> bool:
        return bool(self.first_types) and all(kind == "policy" for kind in self.first_types.values())

    def span(self) -> tuple[int, int]:
        """The stretch of time the report covers: from --from (or the first event) to the last event."""
        first = self.first_ts if self.first_ts is not None else (self.question.start or 0)
        end = self.last_ts if self.last_ts is not None else first
        start = first if self.question.start is None else min(max(self.question.start, first), end)
        return start, end

    def sides(self) -> tuple[tuple[str, Side], tuple[str, Side]]:
        return ("recorded", self.recorded), ("candidate", self.candidate)

    def names(self) -> list[str]:
        names = set(self.recorded.state.keys) | set(self.candidate.state.keys)
        if self.question.types is not None:
            names &= self.question.types
        return sorted(names)

    def report(self, source: str) -> dict[str, Any]:
        start, end = self.span()
        question = self.question
        return {
            "log": source,
            "candidate": {"policy_version": question.candidate.version, "policy_sha256": question.candidate.sha256},
            "activation_id": question.activation_id,
            "from": None if question.start is None else format_ts(question.start),
            "span": {"from": format_ts(start), "to": format_ts(end), "seconds": end - start},
            "events": self.events,
            "undecodable": self.undecodable,
            "types": {name: self.type_report(name, start, end) for name in self.names()},
        }

    def type_report(self, name: str, start: int, end: int) -> dict[str, Any]:
        recorded = self.recorded.changes.get(name, Changes())
        candidate = self.candidate.changes.get(name, Changes())
        lines = {"recorded": recorded.segments(start, end), "candidate": candidate.segments(start, end)}
        divergence = first_divergence(lines["recorded"], lines["candidate"])
        exposure = self.exposure.get(name)
        return {
            "tier": {
                "recorded": tier_name(self.recorded.tier(name)),
                "candidate": tier_name(self.candidate.tier(name)),
            },
            "timelines": {side: [s.record() for s in line] for side, line in lines.items()},
            "first_divergence": None if divergence is None else divergence.record(),
            "moves": {"recorded": _moves(recorded, start, end), "candidate": _moves(candidate, start, end)},
            "time_at_tier": {side: time_at_tiers(line) for side, line in lines.items()},
            "without_evidence": without_evidence(lines["recorded"], lines["candidate"]),
            "exposure": [] if exposure is None else exposure.records(),
            "rejected_overrides": self.rejected_overrides.get(name, []),
            "replaced_activations": self.dropped[name],
        }


def _moves(changes: Changes, start: int, end: int) -> dict[str, Any]:
    moves = changes.moves(start, end)
    up = sum(1 for c in moves if (c.tier or 0) > (c.decision.from_tier or 0))
    return {
        "promotions": up,
        "demotions": len(moves) - up,
        "changes": [
            {
                "at": format_ts(c.at or start),
                "kind": c.decision.kind,
                "from": tier_name(c.decision.from_tier),
                "to": tier_name(c.tier),
                "decision_id": c.decision.decision_id,
            }
            for c in moves
        ],
    }


def backtest(
    lines: Iterable[bytes], question: Question, source: str, on_decision: DecisionSink | None = None
) -> dict[str, Any]:
    """Backtest the candidate on a history (one event a line): the report, as JSON-ready data."""
    run = Backtest(question, on_decision)
    for raw in lines:
        run.feed(raw)
    run.finish()
    check(run, question)
    return run.report(source)


def check(run: Backtest, question: Question) -> None:
    """The mistakes `replay` refuses, refused the same way: an old log without a fallback policy, and a
    fallback for a log that carries its own."""
    if question.fallback is None and not run.recorded.state.keys and run.events:
        raise BacktestError(
            "the log has no policy activation, so every event names an unknown action type: it is a log from "
            "before policies lived in the log; give the policy it ran under with --fallback-policy POLICY.yaml"
        )
    if question.fallback is not None and run.carries_its_policy:
        raise BacktestError(
            "the log carries its own policy (every action type in it begins with an activation): drop --fallback-policy"
        )
