"""The decider over the ordered event log of each action type.

    initial_state(policy)            -> State, every catalog type at its starting tier
    initial_decisions(policy)        -> the `initial` decision of each type, in name order
    step(state, event)               -> Stepped(decisions, result, reason)
    step(state, event, violations=False): the same, for a counterfactual fold (a backtest)
    fold(events[, policy][, state])  -> (state, decisions)

Each key carries its own rules: from the policy activations in its log (models/activations.py), or, for
the events of an old log before its first activation, from the `policy` a fold starts with.

`step` owns the state it is given and advances it in place (copying per event would cost more than the
fold itself). Callers that need the state before a step keep a snapshot with
`KeyState.to_dict()`. Nothing here reads a clock: time is the `ts` of events, ticks included.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from . import activations, closes, maturity, overrides, tripwire, windows
from .decisions import Decision, TierRecord
from .evidence import SCORES
from .policy import Policy
from .results import APPLIED, DUPLICATE, DUPLICATE_REASON, LATE, REJECTED, RESULTS, Result
from .state import RUN, KeyState, State, fresh
from .transition import KeyStep
from .wire import TIER_INDEX, TIERS, Action, Checkpoint, Outcome, Override, PolicyEvent, Tick

Event = Action | Outcome | Override | Tick | PolicyEvent | Checkpoint
__all__ = ["APPLIED", "DUPLICATE", "LATE", "REJECTED", "RESULTS", "Event", "Result", "Stepped", "fold", "step"]


class Stepped(NamedTuple):
    """What one step did (to the state it was given): the decisions it made, what became of the event and why."""

    decisions: tuple[Decision, ...]
    result: Result
    reason: str | None


APPLIED_STEP = Stepped((), APPLIED, None)
"""Applied, and no decision: the common step (one shared record, as the fold makes one per event)."""
DUPLICATE_STEP = Stepped((), DUPLICATE, DUPLICATE_REASON)


def starting_tier(read_only: bool) -> int:
    return RUN if read_only else 0


def initial_key(policy: Policy, name: str) -> KeyState:
    """A catalog type of the policy an old log folds under, before any activation: such a log was decided
    by the v1 bar rules wherever the policy leaves its rules unnamed (`Policy.before_activations`)."""
    policy = policy.before_activations
    rules = policy.types[name]
    tier = starting_tier(rules.read_only)
    return KeyState(
        action_type=name,
        rules=rules,
        policy_version=policy.version,
        policy_sha256=policy.sha256,
        tier_policy=(policy.version, policy.sha256),
        tier=tier,
        lookback=windows.Lookback(rules.lookback_windows),
        sequential=fresh(rules, tier),
    )


def initial_state(policy: Policy | None = None) -> State:
    """Every catalog type of `policy` at its starting tier; no type at all for a log that brings its own
    policy (its activations introduce the types)."""
    return State({} if policy is None else {name: initial_key(policy, name) for name in policy.catalog})


def initial_decisions(policy: Policy | None) -> list[Decision]:
    """Every catalog type starts at Crawl, except a read-only one, which is Run and never evaluated."""
    decisions: list[Decision] = []
    if policy is None:
        return decisions
    policy = policy.before_activations
    for name in policy.catalog:
        read_only = policy.types[name].read_only
        reason = (
            "read_only: a bad action harms no one, so it is Run from the start and never evaluated"
            if read_only
            else "every action type starts at crawl"
        )
        tier = starting_tier(read_only)
        decisions.append(
            Decision(
                action_type=name,
                seq=0,
                kind="initial",
                from_tier=None,
                to_tier=tier,
                version=0,
                at=None,
                window=None,
                reason=reason,
                policy_version=policy.version,
                policy_sha256=policy.sha256,
            )
        )
    return decisions


def step(state: State, event: Event, violations: bool = True) -> Stepped:
    """Apply one event of the log: close the windows its `ts` closes, then aggregate it (or count it late).

    `violations=False` folds a counterfactual (a backtest's candidate policy): the agents ran under another
    tier map than this fold's, so an action above its tier is no violation; everything else is the same.

    The common case (an action or outcome in an open window that closes nothing) stays on a short path,
    with nothing allocated but its result: this runs once per event of every history."""
    kind = type(event)
    if kind is PolicyEvent:
        decisions, result, reason = activations.activate(state, event)  # type: ignore[arg-type]
        return Stepped(decisions, result, reason)
    key = state.keys.get(event.action_type)
    if key is None:
        reason = f"unknown action_type {event.action_type!r}: add it to the policy's action_types or fix the producer"
        return Stepped((), REJECTED, reason)
    if key.retired or key.halted is not None:
        return _stopped(key, event, violations)
    if kind is Override:
        return _override(key, event)  # type: ignore[arg-type]
    if kind is Checkpoint:
        return _checkpoint(key, event)  # type: ignore[arg-type]
    event_id = event.event_id
    first = key.seen.get(event_id)
    horizon = key.lookback.horizon
    if (first is not None and (horizon is None or first >= horizon)) or event_id in key.failure_ids:
        return DUPLICATE_STEP
    out: list[Decision] = []
    rules = key.rules
    ts, size = event.ts, rules.window
    if key.max_ts is None or ts > key.max_ts:
        if key.next_close is not None and ts - rules.allowed_lateness < (key.next_close + 1) * size:
            key.max_ts = ts  # the watermark rises but reaches no window's end
        else:
            closes.advance(KeyStep(key, out), ts)
            horizon = key.lookback.horizon
    index = ts // size
    remember = horizon is None or index >= horizon  # an id is remembered until its window leaves the lookback
    if index < key.next_close or rules.read_only:  # type: ignore[operator]  # advance() has set it
        if remember:
            key.seen[event_id] = index
        if index < key.next_close:  # type: ignore[operator]
            return Stepped(tuple(out), LATE, closes.late_reason(KeyStep(key, out), index))
        return Stepped(tuple(out), APPLIED, None) if out else APPLIED_STEP  # read-only: only time moves
    units = rules.maturity is not None or bool(key.cells)  # customer units are counted (models/maturity.py)
    if kind is Outcome:
        return _outcome(key, event, event_id, index, remember, out, units)  # type: ignore[arg-type]
    if remember:
        key.seen[event_id] = index
    if kind is Action:
        _action(key, event, index, units, violations, out)  # type: ignore[arg-type]
    return Stepped(tuple(out), APPLIED, None) if out else APPLIED_STEP


def _action(key: KeyState, event: Action, index: int, units: bool, violations: bool, out: list[Decision]) -> None:
    """An action in an open window: a customer unit of its cell (under a maturity), or a violation."""
    tier = TIER_INDEX[event.tier]
    if units and tier:
        maturity.add_unit(key, (index, tier))
    if violations and tier > key.tier:
        _violation(KeyStep(key, out), event)


def _outcome(
    key: KeyState, event: Outcome, event_id: str, index: int, remember: bool, out: list[Decision], units: bool
) -> Stepped:
    """An outcome in an open window: counted in its window's counters, or, for a customer outcome under a
    maturity, in its action's cell (a success there leaves no id: the absence of a failure is the success).
    (The event's fields are read once each: a pydantic model's attribute costs a few hundred instructions.)"""
    rules, kind = key.rules, event.kind
    if units:
        if kind == "customer":
            matured = _customer_under_maturity(KeyStep(key, out), event)
            if matured is not None:
                return Stepped(tuple(out), *matured)
        elif kind == "review":
            cell = maturity.unit_of_review(event, rules.window)
            if cell is not None:
                maturity.add_unit(key, cell)
    if remember:
        key.seen[event_id] = index
    at, success = SCORES[rules.minor_edits_accepted][kind, event.result, event.edit, event.tier]
    counters = key.open.get(index)
    if counters is None:
        counters = key.open[index] = windows.empty()
    counters[at] += 1
    counters[at + 1] += success
    if rules.tripwire and kind in rules.tripwire_bars[key.tier]:  # a keep bar of this tier watches it
        tripwire.after_outcome(key, event, success, out)
    return Stepped(tuple(out), APPLIED, None) if out else APPLIED_STEP


def _checkpoint(key: KeyState, event: Checkpoint) -> Stepped:
    """How far the customer feed is complete: never late, moves no event time; a re-sent one is a duplicate.
    A feed can only vouch for what has already happened, so `through` may not be after its own `ts`."""
    if key.remembers(event.event_id):
        return DUPLICATE_STEP
    if event.through > event.ts:
        reason = (
            "through: a checkpoint cannot vouch for the future (through is after its own ts): send it once the "
            "feed has reported every failure up to through"
        )
        return Stepped((), REJECTED, reason)
    key.remember(event.event_id, event.ts // key.rules.window)
    if key.checkpoint is None or event.through > key.checkpoint:
        key.checkpoint = event.through
    return APPLIED_STEP


def _customer_under_maturity(step: KeyStep, event: Outcome) -> tuple[Result, str | None] | None:
    """A customer outcome where a maturity applies: a success changes nothing and leaves no id (the absence
    of a failure is the success); a failure marks its cell (and may trip the tripwire), or is late after its
    action's maturity. None: no maturity applies to it after all (it counts as it comes)."""
    key = step.key
    if event.result == "success":
        cell = None if event.action_ts is None else (event.action_ts // key.rules.window, TIER_INDEX[event.tier])
        if key.rules.maturity is None and cell not in key.cells:
            return None
        return APPLIED, None
    cell, why = maturity.failure_cell(key, event)
    if why is not None:
        return (LATE if why.startswith("after maturity") else REJECTED), why
    if cell is None:
        return None
    maturity.add_failure(key, cell, event.event_id)
    if key.rules.tripwire:
        tripwire.after_customer_failure(step, event, cell)
    return APPLIED, None


def _override(key: KeyState, event: Override) -> Stepped:
    if event.event_id in key.kept_ids:
        return DUPLICATE_STEP
    if key.read_only:
        name = key.action_type
        reason = (
            f"override rejected: {name} is read_only and never evaluated; remove read_only from the catalog to gate it"
        )
        return Stepped((), REJECTED, reason)
    key.kept_ids.add(event.event_id)
    out: list[Decision] = []
    refused = overrides.apply(KeyStep(key, out), event)
    return Stepped(tuple(out), APPLIED if refused is None else REJECTED, refused)


def _stopped(key: KeyState, event: Event, violations: bool) -> Stepped:
    """A retired or halted key folds nothing and moves no time; an action a retired type still took above
    Crawl is a violation (the tier map answers Crawl for it)."""
    if key.halted is not None:
        return Stepped((), REJECTED, f"halted: {key.halted}")
    reason = (
        f"retired: {key.action_type} left the catalog in activation {key.activation_id} and the tier map answers "
        "crawl for it; stop sending it, or name it in a policy again"
    )
    out: list[Decision] = []
    if violations and isinstance(event, Action) and TIER_INDEX[event.tier] > 0:
        violation = f"action {event.action_id} ran at {event.tier} while {key.action_type} is retired (crawl)"
        KeyStep(key, out).note(
            "violation", None, event.ts, violation, from_tier=None, action_id=event.action_id, agent=event.agent
        )
    return Stepped(tuple(out), REJECTED, reason)


def _violation(step: KeyStep, event: Action) -> None:
    reason = f"action {event.action_id} ran at {event.tier} while the tier map held {TIERS[step.key.tier]}"
    step.note("violation", step.key.tier, event.ts, reason, action_id=event.action_id, agent=event.agent)


def fold(
    events: Iterable[Event], policy: Policy | None = None, state: State | None = None
) -> tuple[State, list[Decision]]:
    """Fold a log from the start (the initial decisions of `policy`, for an old log, included) or onward
    from a saved `state`."""
    decisions = initial_decisions(policy) if state is None else []
    state = initial_state(policy) if state is None else state
    for event in events:
        decisions.extend(step(state, event).decisions)
    return state, decisions


def tier_records(state: State) -> list[TierRecord]:
    """The live tier map as records, in action type order."""
    return [
        TierRecord(
            action_type=name,
            tier=key.tier,
            version=key.version,
            since=key.since,
            decision_id=f"{name}/{key.changed_by}",
            policy_version=key.tier_policy[0],
            policy_sha256=key.tier_policy[1],
        )
        for name, key in sorted(state.keys.items())
        if not key.retired
    ]
