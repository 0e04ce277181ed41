"""The evaluator: a decider over the ordered event log of each action type (DESIGN.md §6).

    initial_state(policy)            -> State, every catalog type at its starting tier
    initial_decisions(policy)        -> the `initial` decision of each type, in name order
    step(state, event, policy)       -> (state, decisions, result, reason)
    fold(events, policy[, state])    -> (state, decisions)

`step` owns the state it is given and returns it advanced (it is mutated in place: copying per event
would cost more than the fold itself). Callers that need the state before a step keep a snapshot with
`KeyState.to_dict()`. Nothing here reads a clock: time is the `ts` of events, ticks included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from . import windows
from .decisions import Decision, TierRecord
from .policy import METRIC_INDEX, BarRule, Policy, TypePolicy, format_duration
from .stats import Evidence, Verdict, falls, judge_keep, judge_promote, passes
from .wire import TIER_INDEX, TIERS, Action, Outcome, Override, Tick, format_ts

Event = Action | Outcome | Override | Tick
RUN = TIER_INDEX["run"]
SWEEP_MIN = 1024
NEVER = 1 << 62  # a window index no close reaches


class Result:
    """What became of one event; metrics and logs of the runtimes derive from it. Plain strings, not an
    Enum: the result of every event is counted, and str hashing is several times cheaper."""

    APPLIED: Final = "applied"
    DUPLICATE: Final = "duplicate"
    LATE: Final = "late"
    REJECTED: Final = "rejected"


@dataclass(slots=True)
class KeyState:
    """Everything the fold remembers about one action type: bounded by the lookback, not the history."""

    action_type: str
    tier: int
    lookback: windows.Lookback
    read_only: bool = False  # Run from the start and never evaluated
    version: int = 0
    seq: int = 1  # the initial decision is seq 0
    since: int | None = None
    changed_by: int = 0  # seq of the decision that set the current tier
    last_demotion: int | None = None
    passing_since: int | None = None
    pinned: int | None = None
    cap: int | None = None
    max_ts: int | None = None
    next_close: int | None = None  # index of the oldest open window
    open: dict[int, windows.Counters] = field(default_factory=dict)  # open windows that hold anything
    seen: dict[str, int] = field(default_factory=dict)  # event id -> window of its first copy
    override_ids: set[str] = field(default_factory=set)  # remembered for good
    # derived, never serialised: (lookback revision, tier, a keep bar falls, the gate passes)
    verdicts: tuple[int, int, bool, bool] | None = None
    sweep_at: int = SWEEP_MIN  # forget ids that left the lookback once `seen` grows past this

    def remembers(self, event_id: str) -> bool:
        """An id is remembered until the window of its first copy leaves the lookback (§6.6)."""
        window = self.seen.get(event_id)
        return window is not None and (self.lookback.horizon is None or window >= self.lookback.horizon)

    def remember(self, event_id: str, window: int) -> None:
        if self.lookback.horizon is None or window >= self.lookback.horizon:
            self.seen[event_id] = window

    def forget(self) -> None:
        """Drop the ids whose window left the lookback: memory follows the lookback, not the history.
        Called at closes; amortised O(1) per event because the threshold doubles with what stays."""
        if len(self.seen) > self.sweep_at:
            self.seen = self.live_ids()
            self.sweep_at = max(SWEEP_MIN, 2 * len(self.seen))

    def live_ids(self) -> dict[str, int]:
        horizon = self.lookback.horizon
        return dict(self.seen) if horizon is None else {i: w for i, w in self.seen.items() if w >= horizon}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (sets sorted, so equal states serialise equally)."""
        return {
            "action_type": self.action_type,
            "tier": self.tier,
            "read_only": self.read_only,
            "version": self.version,
            "seq": self.seq,
            "since": self.since,
            "changed_by": self.changed_by,
            "last_demotion": self.last_demotion,
            "passing_since": self.passing_since,
            "pinned": self.pinned,
            "cap": self.cap,
            "max_ts": self.max_ts,
            "next_close": self.next_close,
            "open": {str(k): v for k, v in sorted(self.open.items())},
            "seen": _by_window(self.live_ids()),
            "override_ids": sorted(self.override_ids),
            "lookback_length": self.lookback.length,
            "horizon": self.lookback.horizon,
            "closed": [[k, c] for k, c in self.lookback.windows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyState:
        lookback = windows.Lookback(data["lookback_length"], data["horizon"])
        for index, counters in data["closed"]:
            lookback.windows.append((index, counters))
            lookback.totals = windows.merge(lookback.totals, counters)
        return cls(
            action_type=data["action_type"],
            tier=data["tier"],
            lookback=lookback,
            read_only=data["read_only"],
            version=data["version"],
            seq=data["seq"],
            since=data["since"],
            changed_by=data["changed_by"],
            last_demotion=data["last_demotion"],
            passing_since=data["passing_since"],
            pinned=data["pinned"],
            cap=data["cap"],
            max_ts=data["max_ts"],
            next_close=data["next_close"],
            open={int(k): list(v) for k, v in data["open"].items()},
            seen={i: int(w) for w, ids in data["seen"].items() for i in ids},
            override_ids=set(data["override_ids"]),
        )


def _by_window(seen: dict[str, int]) -> dict[str, list[str]]:
    """Remembered ids grouped by window, sorted: equal memories serialise equally."""
    grouped: dict[int, list[str]] = {}
    for event_id, window in seen.items():
        grouped.setdefault(window, []).append(event_id)
    return {str(w): sorted(ids) for w, ids in sorted(grouped.items())}


@dataclass(slots=True)
class State:
    keys: dict[str, KeyState]

    def to_dict(self) -> dict[str, Any]:
        return {name: key.to_dict() for name, key in sorted(self.keys.items())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        return cls({name: KeyState.from_dict(value) for name, value in data.items()})


# (state, decisions, result, reason): a plain tuple, built once per event of every history
Step = tuple[State, tuple[Decision, ...], str, str | None]


def ceiling(key: KeyState, policy: TypePolicy) -> int:
    """The highest tier a type may hold now: its `max_tier`, or an operator's cap below it."""
    return min(policy.max_tier, RUN if key.cap is None else key.cap)


def starting_tier(policy: TypePolicy) -> int:
    return RUN if policy.read_only else 0


def initial_key(policy: Policy, name: str) -> KeyState:
    type_policy = policy.types[name]
    lookback = windows.Lookback(policy.lookback // policy.window)
    return KeyState(name, starting_tier(type_policy), lookback, read_only=type_policy.read_only)


def initial_state(policy: Policy) -> State:
    return State({name: initial_key(policy, name) for name in policy.catalog})


def initial_decisions(policy: Policy) -> list[Decision]:
    """Every catalog type starts at Crawl, except a read-only one, which is Run and never evaluated."""
    decisions = []
    for name in policy.catalog:
        read_only = policy.types[name].read_only
        reason = (
            "read_only: a bad action harms no one, so it is Run from the start and never evaluated"
            if read_only
            else "every action type starts at crawl"
        )
        tier = starting_tier(policy.types[name])
        decisions.append(_decision(policy, name, 0, "initial", tier, tier, 0, None, reason))
    return decisions


def _decision(
    policy: Policy,
    name: str,
    seq: int,
    kind: Any,
    from_tier: int,
    to_tier: int,
    version: int,
    at: int | None,
    reason: str,
    **extra: Any,
) -> Decision:
    window = None if at is None else _window_of(at, policy.window)
    return Decision(
        action_type=name,
        seq=seq,
        kind=kind,
        from_tier=from_tier,
        to_tier=to_tier,
        version=version,
        at=at,
        window=extra.pop("window", window),
        reason=reason,
        policy_version=policy.version,
        policy_sha256=policy.sha256,
        evidence=extra.pop("evidence", ()),
        hold=extra.pop("hold", None),
        details=extra,
    )


Judge = Callable[[BarRule, int, int, float], Evidence]


def judge_bars(key: KeyState, bars: tuple[BarRule, ...], judge: Judge, z: float) -> tuple[Evidence, ...]:
    """Each bar judged on the key's evidence: the lookback's outcomes of actions at the current tier."""
    judged = []
    for bar in bars:
        n, successes = key.lookback.pair(key.tier, bar.metric_index)
        judged.append(judge(bar, successes, n, z))
    return tuple(judged)


def _window_of(ts: int, size: int) -> tuple[int, int]:
    start = windows.window_for(ts, size) * size
    return start, start + size


def _scores(minor_edits_accepted: bool) -> dict[tuple[str, str, str | None, str], tuple[int, int]]:
    """(kind, result, edit, tier) -> (counter slot, 1 for a success): where each outcome counts (§5)."""
    metrics = {"review": "acceptance_rate", "internal": "completion_rate", "customer": "customer_success_rate"}
    successes: dict[tuple[str, str, str | None], int] = {
        ("review", "accepted", None): 1,
        ("review", "rejected", None): 0,
        ("review", "edited", None): 0,  # an edit of unknown size counts as major
        ("review", "edited", "major"): 0,
        ("review", "edited", "minor"): int(minor_edits_accepted),
        ("internal", "completed", None): 1,
        ("internal", "corrected", None): 0,
        ("internal", "failed", None): 0,
        ("customer", "success", None): 1,
        ("customer", "failure", None): 0,
    }
    return {
        (kind, result, edit, tier): (windows.slot(TIER_INDEX[tier], METRIC_INDEX[metrics[kind]]), success)
        for (kind, result, edit), success in successes.items()
        for tier in TIERS
    }


SCORES = {False: _scores(False), True: _scores(True)}


class _Fold:
    """One step's view of a key: the policy and the decisions it emits."""

    __slots__ = ("key", "out", "policy", "type_policy")

    def __init__(self, policy: Policy, key: KeyState, out: list[Decision]) -> None:
        self.policy = policy
        self.type_policy = policy.types[key.action_type]
        self.key = key
        self.out = out

    # -- windows -------------------------------------------------------------------------------------

    def advance(self, ts: int) -> None:
        """Raise the watermark to `ts − allowed_lateness` and close every window it reaches.

        Windows close one by one, but a run of closes at which nothing can happen (no evidence enters or
        leaves, no hold or cooldown ends) is passed over at once: a key idle for years costs O(1)."""
        key, size = self.key, self.policy.window
        if key.max_ts is not None and ts <= key.max_ts:
            return
        key.max_ts = ts
        reached = windows.window_for(ts - self.policy.allowed_lateness, size)  # windows below it close
        if key.next_close is None:
            key.next_close = reached
            key.lookback.advance(reached)
        while key.next_close < reached:
            self.close(key.next_close)
            quiet = min(self.next_event(), reached)
            if quiet > key.next_close:
                key.next_close = quiet
                key.lookback.advance(quiet)

    def close(self, index: int) -> None:
        key = self.key
        counters = key.open.pop(index, None)
        if key.since is not None and index < key.since // self.policy.window:
            counters = None  # before the window holding `since`: no evidence for the current tier (§6.2)
        key.lookback.push(index, counters)
        key.next_close = index + 1
        key.forget()
        self.decide((index + 1) * self.policy.window)

    def next_event(self) -> int:
        """The first window from `next_close` whose close can change anything: one that holds outcomes,
        one at which evidence leaves the lookback, or one at whose end a passing streak may promote.
        Closes before it repeat the last close's verdicts, which have already acted."""
        key, size = self.key, self.policy.window
        start = key.next_close
        assert start is not None
        due = [index for index in key.open if index >= start]
        expiry = key.lookback.next_expiry()
        if expiry is not None:
            due.append(expiry)
        if key.passing_since is not None and key.pinned is None and key.tier + 1 <= self.ceiling():
            promotable = key.passing_since + self.type_policy.hold[key.tier]
            if key.last_demotion is not None:
                promotable = max(promotable, key.last_demotion + self.type_policy.cooldown)
            due.append(-(-promotable // size) - 1)  # the first window whose end reaches it
        return max(min(due), start) if due else NEVER

    # -- decisions at a close ------------------------------------------------------------------------

    def evidence(self, bars: tuple[BarRule, ...], judge: Judge) -> tuple[Evidence, ...]:
        return judge_bars(self.key, bars, judge, self.policy.z)

    def verdicts(self) -> tuple[bool, bool]:
        """(a keep bar of the current tier falls, every promote bar passes), judged again only when the
        evidence or the tier changed since the last close: most closes see the same totals."""
        key, tp, z = self.key, self.type_policy, self.policy.z
        lookback, tier = key.lookback, key.tier
        cached = key.verdicts
        if cached is not None and cached[0] == lookback.revision and cached[1] == tier:
            return cached[2], cached[3]
        totals, falling, passing = lookback.totals, False, bool(tp.promote_bars[tier])
        for bar in tp.keep_bars[tier]:
            at = windows.slot(tier, bar.metric_index)
            if falls(bar, totals[at + 1], totals[at]):
                falling = True
                break
        for bar in tp.promote_bars[tier]:
            at = windows.slot(tier, bar.metric_index)
            if not passes(bar, totals[at + 1], totals[at], z):
                passing = False
                break
        key.verdicts = (lookback.revision, tier, falling, passing)
        return falling, passing

    def decide(self, end: int) -> None:
        """At the close of the window ending at `end`: demotion first, then the promote streak and hold."""
        key, tp = self.key, self.type_policy
        if key.read_only:
            return
        falling, passing = self.verdicts()
        if falling and key.pinned is None:
            kept = self.evidence(tp.keep_bars[key.tier], judge_keep)
            reason = "; ".join(e.message("keep") for e in kept if e.verdict is Verdict.FAIL)
            self.move("demote", key.tier - 1, end, reason, evidence=tuple(e.record() for e in kept))
            return
        if not passing:
            key.passing_since = None
            return
        if key.passing_since is None:
            key.passing_since = end
        if self.may_promote(end):
            judged = self.evidence(tp.promote_bars[key.tier], judge_promote)
            hold = {"passing_since": format_ts(key.passing_since), "required": format_duration(tp.hold[key.tier])}
            reason = "; ".join(e.message("promote") for e in judged)
            reason += f"; held {format_duration(end - key.passing_since)} (hold {hold['required']})"
            self.move("promote", key.tier + 1, end, reason, evidence=tuple(e.record() for e in judged), hold=hold)

    def ceiling(self) -> int:
        return ceiling(self.key, self.type_policy)

    def may_promote(self, end: int) -> bool:
        key, tp = self.key, self.type_policy
        assert key.passing_since is not None
        return (
            end - key.passing_since >= tp.hold[key.tier]
            and (key.last_demotion is None or end >= key.last_demotion + tp.cooldown)
            and key.pinned is None
            and key.tier + 1 <= self.ceiling()
        )

    def move(self, kind: str, to: int, at: int, reason: str, **extra: Any) -> None:
        """A tier change: new `since`, streak reset, evidence restarts; downward ones start the cooldown."""
        key = self.key
        if kind == "demote" or to < key.tier:
            key.last_demotion = at
        if kind in ("promote", "demote"):
            extra.setdefault("window", (at - self.policy.window, at))
        self.note(kind, to, at, reason, version=key.version + 1, **extra)
        key.changed_by = key.seq - 1
        key.tier, key.version, key.since, key.passing_since = to, key.version + 1, at, None
        key.lookback.clear()

    def note(self, kind: str, to: int, at: int, reason: str, version: int | None = None, **extra: Any) -> None:
        key = self.key
        decided = _decision(
            self.policy,
            key.action_type,
            key.seq,
            kind,
            key.tier,
            to,
            key.version if version is None else version,
            at,
            reason,
            **extra,
        )
        key.seq += 1
        self.out.append(decided)

    # -- events --------------------------------------------------------------------------------------

    def late(self, index: int) -> str:
        key, size = self.key, self.policy.window
        assert key.max_ts is not None
        watermark = key.max_ts - self.policy.allowed_lateness
        return f"window ending {format_ts((index + 1) * size)} closed at watermark {format_ts(watermark)}"

    def violation(self, event: Action) -> None:
        key = self.key
        reason = f"action {event.action_id} ran at {event.tier} while the tier map held {TIERS[key.tier]}"
        self.note("violation", key.tier, event.ts, reason, action_id=event.action_id, agent=event.agent)

    # -- overrides -----------------------------------------------------------------------------------

    def override(self, event: Override) -> tuple[str, str | None]:
        """Overrides are never late: one applies at its ts, or at the end of the last closed window."""
        key = self.key
        if event.event_id in key.override_ids:
            return Result.DUPLICATE, DUPLICATE_REASON
        key.override_ids.add(event.event_id)
        self.advance(event.ts)
        assert key.next_close is not None
        at = max(event.ts, key.next_close * self.policy.window)
        refusal = self.refusal(event)
        if refusal is not None:
            return Result.REJECTED, f"override {event.op} rejected: {refusal}"
        target = self.override_target(event)
        details: dict[str, Any] = {"op": event.op, "actor": event.actor}
        if event.op == "pin":
            key.pinned = target
        elif event.op == "unpin":
            key.pinned = None
        elif event.op == "cap":  # the ceiling it names, above the tier or not; the tier drops only if above
            key.cap = TIER_INDEX[event.tier]  # type: ignore[index]
            if key.pinned is not None and key.pinned > key.cap:
                key.pinned = key.cap
        elif event.op == "uncap":
            key.cap = None
        elif key.pinned is not None:  # a human promote/demote carries the pin along
            key.pinned = target
        if target != key.tier:
            self.move("override", target, at, event.reason, **details)
        else:
            self.note("override", target, at, event.reason, **details)
        return Result.APPLIED, None

    def override_target(self, event: Override) -> int:
        key = self.key
        tier = None if event.tier is None else TIER_INDEX[event.tier]
        if event.op == "pin":
            assert tier is not None
            return tier
        if event.op == "cap":
            assert tier is not None
            return min(key.tier, tier)
        if event.op == "demote":
            return key.tier - 1 if tier is None else tier
        if event.op == "promote":
            return key.tier + 1
        return key.tier

    def refusal(self, event: Override) -> str | None:
        """Why an override cannot apply, or None."""
        key, tier = self.key, None if event.tier is None else TIER_INDEX[event.tier]
        current, ceiling = TIERS[key.tier], TIERS[self.ceiling()]
        if event.op == "pin":
            assert tier is not None
            if tier > self.ceiling():
                return f"pin {event.tier} is above the ceiling {ceiling} (max_tier or cap): uncap first"
            if tier not in (key.tier, key.tier + 1):
                return f"pin {event.tier} must be the current tier ({current}) or one above: demote first to go lower"
        elif event.op == "unpin" and key.pinned is None:
            return "the action type is not pinned"
        elif event.op == "uncap" and key.cap is None:
            return "the action type is not capped"
        elif event.op == "demote":
            if key.tier == 0:
                return "already at crawl"
            if tier is not None and tier >= key.tier:
                return f"demote to {event.tier} is not below the current tier {current}: name a lower tier or omit it"
        elif event.op == "promote" and key.tier + 1 > self.ceiling():
            return f"already at the ceiling {ceiling} (max_tier or cap): uncap first"
        return None


def step(state: State, event: Event, policy: Policy) -> Step:
    """Apply one event of the log: close the windows its `ts` closes, then aggregate it (or count it late).

    The common case (an action or outcome in an open window that closes nothing) stays on a short path:
    this runs once per event of every history."""
    name = event.action_type
    key = state.keys.get(name)
    if key is None:
        return (
            state,
            (),
            Result.REJECTED,
            f"unknown action_type {name!r}: add it to the policy's action_types or fix the producer",
        )
    out: list[Decision] = []
    if isinstance(event, Override):
        if key.read_only:
            return state, (), Result.REJECTED, _read_only_override(name)
        result, reason = _Fold(policy, key, out).override(event)
        return state, tuple(out), result, reason
    event_id = event.event_id
    if key.remembers(event_id):
        return state, (), Result.DUPLICATE, DUPLICATE_REASON
    decided: tuple[Decision, ...] = ()
    ts, size = event.ts, policy.window
    if key.max_ts is None or ts > key.max_ts:
        if key.next_close is not None and ts - policy.allowed_lateness < (key.next_close + 1) * size:
            key.max_ts = ts  # the watermark rises but reaches no window's end
        else:
            _Fold(policy, key, out).advance(ts)
            decided = tuple(out)
    index = ts // size
    key.remember(event_id, index)
    if index < key.next_close:  # type: ignore[operator]  # advance() has set it
        return state, decided, Result.LATE, _Fold(policy, key, out).late(index)
    if key.read_only:  # never evaluated: time moves and ids are remembered, nothing is aggregated
        return state, decided, Result.APPLIED, None
    if isinstance(event, Outcome):
        at, success = SCORES[policy.minor_edits_accepted][event.kind, event.result, event.edit, event.tier]
        counters = key.open.get(index)
        if counters is None:
            counters = key.open[index] = windows.empty()
        counters[at] += 1
        counters[at + 1] += success
    elif isinstance(event, Action) and TIER_INDEX[event.tier] > key.tier:
        _Fold(policy, key, out).violation(event)
        decided = tuple(out)
    return state, decided, Result.APPLIED, None


DUPLICATE_REASON = (
    "duplicate event_id: the first copy with this id counted (whatever its ts or content); this one changes nothing"
)


def _read_only_override(name: str) -> str:
    return f"override rejected: {name} is read_only and never evaluated; remove read_only from the catalog to gate it"


def fold(events: Iterable[Event], policy: Policy, state: State | None = None) -> tuple[State, list[Decision]]:
    """Fold a log from the start (initial decisions included) or onward from a saved `state`."""
    decisions = initial_decisions(policy) if state is None else []
    state = initial_state(policy) if state is None else state
    for event in events:
        decisions.extend(step(state, event, policy)[1])
    return state, decisions


def tier_records(state: State, policy: Policy) -> list[TierRecord]:
    """The live tier map as records, in action type order."""
    return [
        TierRecord(
            action_type=name,
            tier=key.tier,
            version=key.version,
            since=key.since,
            decision_id=f"{name}/{key.changed_by}",
            policy_version=policy.version,
            policy_sha256=policy.sha256,
        )
        for name, key in sorted(state.keys.items())
    ]
