"""Policy activations in the log: one `policy` event per action type, carrying its complete
rules or its retirement, applied at its position in the key's log.

A policy event is never late and moves no event time: it neither raises the watermark nor closes a
window; every close after it is judged under its rules. Its decision is dated the end of the key's last
closed window. What the key has earned carries over (tier, since, pins, caps, cooldown, version, ids,
evidence as it was aggregated); the hold streak restarts when anything it is judged by changed; a lower
ceiling, or read-only switched on or off, moves the key at once.
"""

from __future__ import annotations

from typing import Any

from . import windows
from .decisions import Decision
from .resolved import BarRule, Rules
from .results import DUPLICATE_REASON, Result
from .rules import RulesError
from .sequential import SequentialState
from .state import RUN, KeyState, State, fresh, rules_of
from .transition import KeyStep
from .wire import TIERS, PolicyEvent

Applied = tuple[tuple[Decision, ...], Result, str | None]  # (decisions, what became of the event, why)

# Rules whose change restarts the hold streak and every sequential figure (besides the current tier's bars
# and hold, and the demotion rule's own fields). The other `demotion` parameters restart only the keep figures.
STREAK_FIELDS = ("confidence", "acceptance", "lookback", "outcomes", "promotion")
DEMOTION_RULE_FIELDS = ("rule", "threshold", "floor", "tripwire")


def activate(state: State, event: PolicyEvent) -> Applied:
    key = state.keys.get(event.action_type)
    if key is not None and event.event_id in key.kept_ids:
        return (), "duplicate", DUPLICATE_REASON
    if key is not None and key.halted is not None:
        return (), "rejected", f"halted: {key.halted}"
    parent = None if key is None else key.activation_sha
    if event.parent_sha256 != parent:
        return (
            (),
            "rejected",
            (
                f"stale activation: it replaces {_short(event.parent_sha256)} but {event.action_type}'s current "
                f"activation is {_short(parent)}; apply again against the current policy"
            ),
        )
    if event.retired:
        return _retire(key, event)
    assert event.rules is not None
    try:
        rules = rules_of(event.rules)
    except RulesError as error:
        return _unreadable(key, event, error)
    if key is None:
        return _introduce(state, event, rules), "applied", None
    refused = _refused_change(key, rules)
    if refused is not None:
        key.kept_ids.add(event.event_id)
        return (), "rejected", refused
    return (_revive(key, event, rules) if key.retired else _change(key, event, rules)), "applied", None


def _short(sha: str | None) -> str:
    return "no activation" if sha is None else f"policy {sha[:12]}…"


def _details(event: PolicyEvent) -> dict[str, Any]:
    return {"actor": event.actor}


def _last_close(key: KeyState) -> int | None:
    """When an activation's decision is dated: the end of the key's last closed window (a policy event moves
    no time), or the key's `since` if later — an override or the tripwire may have moved it after that
    close, and a key's tier never changes before the change it replaces."""
    closed = None if key.next_close is None else key.next_close * key.rules.window
    if key.since is None or closed is None:
        return closed
    return max(closed, key.since)


def _adopt(key: KeyState, event: PolicyEvent, rules: Rules) -> None:
    """The policy in force is now the event's."""
    key.kept_ids.add(event.event_id)
    key.rules, key.verdicts = rules, None
    key.lookback.length = rules.lookback_windows
    key.policy_version, key.policy_sha256 = event.policy_version, event.policy_sha256
    key.activation_id, key.activation_sha = event.activation_id, event.policy_sha256
    key.operators = tuple(event.operators)


def _introduce(state: State, event: PolicyEvent, rules: Rules) -> tuple[Decision, ...]:
    """A type new to the log: it starts at Crawl (Run if read-only), like every type."""
    tier = RUN if rules.read_only else 0
    key = state.keys[event.action_type] = KeyState(
        action_type=event.action_type,
        rules=rules,
        policy_version=event.policy_version,
        policy_sha256=event.policy_sha256,
        tier_policy=(event.policy_version, event.policy_sha256),
        tier=tier,
        lookback=windows.Lookback(rules.lookback_windows),
        seq=0,
        sequential=fresh(rules, tier),
    )
    _adopt(key, event, rules)
    out: list[Decision] = []
    KeyStep(key, out).note("initial", tier, None, _starts(rules, event), from_tier=None, version=0, **_details(event))
    return tuple(out)


def _starts(rules: Rules, event: PolicyEvent) -> str:
    """Why a type starts where it does, and the activation that brought it."""
    start = (
        "read_only: a bad action harms no one, so it is Run from the start and never evaluated"
        if rules.read_only
        else "every action type starts at crawl"
    )
    return f"{start} ({event.reason})"


def _refused_change(key: KeyState, rules: Rules) -> str | None:
    """A key's windows cannot be redrawn: a changed window or allowed lateness needs a new log."""
    for field in ("window", "allowed_lateness"):
        before, after = key.rules.mapping[field], rules.mapping[field]
        if before != after:
            return (
                f"refused: {field} cannot change for an existing action type ({before} → {after}): its windows "
                "are already drawn; keep it, or start a new log"
            )
    return None


def _change(key: KeyState, event: PolicyEvent, rules: Rules) -> tuple[Decision, ...]:
    """New rules for a type already in the log: what carries over carries over; what moves at once moves."""
    before = key.rules
    if _streak_changed(before, rules, key.tier):
        key.passing_since = None
        key.sequential = fresh(rules, key.tier)
    else:
        key.sequential = realigned(key.sequential, before, rules, key.tier)
    _adopt(key, event, rules)
    at = _last_close(key)
    out: list[Decision] = []
    step = KeyStep(key, out)
    details = _details(event)
    if rules.read_only and not before.read_only:
        step.move("policy", RUN if key.cap is None else key.cap, at, event.reason, **details)
    elif before.read_only and not rules.read_only:
        key.open.clear()
        step.move("policy", 0, at, event.reason, sets_cooldown=False, **details)
    elif key.tier > key.ceiling:
        if key.pinned is not None and key.pinned > key.ceiling:
            key.pinned = key.ceiling
        step.move("policy", key.ceiling, at, event.reason, **details)
    else:
        if key.pinned is not None and key.pinned > key.ceiling:
            key.pinned = key.ceiling
        step.note("policy", key.tier, at, event.reason, **details)
    return tuple(out)


def _streak_changed(before: Rules, after: Rules, tier: int) -> bool:
    """Did anything the hold streak is judged by change? Bars compare as sets, as the policy wrote them."""
    old, new = before.mapping, after.mapping
    name = TIERS[tier]
    for part in ("promote", "keep"):
        if _bars(old, name, part) != _bars(new, name, part):
            return True
    if _hold(old, name) != _hold(new, name):
        return True
    if any(old["demotion"].get(field) != new["demotion"].get(field) for field in DEMOTION_RULE_FIELDS):
        return True
    return any(old.get(field) != new.get(field) for field in STREAK_FIELDS)


def realigned(figures: SequentialState, before: Rules, after: Rules, tier: int) -> SequentialState:
    """The figures carried over to rules that changed nothing the hold streak is judged by: a changed
    `demotion` restarts the keep figures only; unchanged bars keep theirs, in the new rules' order (bars
    compare as sets, so an activation may list the same bars in another order)."""
    if before.mapping["demotion"] != after.mapping["demotion"]:
        keep = fresh(after, tier).keep
    else:
        keep = _reordered(before.keep_bars[tier], after.keep_bars[tier], figures.keep)
    return SequentialState(keep, _reordered(before.promote_bars[tier], after.promote_bars[tier], figures.promote))


def _reordered(before: tuple[BarRule, ...], after: tuple[BarRule, ...], figures: list[Any]) -> list[Any]:
    if len(figures) != len(before):  # no figures kept for these bars under their rule
        return figures
    left = [(_bar(bar), figure) for bar, figure in zip(before, figures, strict=True)]
    out = []
    for bar in after:
        found = next(i for i, (old, _) in enumerate(left) if old == _bar(bar))
        out.append(left.pop(found)[1])
    return out


def _bar(bar: BarRule) -> tuple[str, float, int]:
    """A bar as the policy wrote it (its demotion line comes from the margin, which may have changed)."""
    return bar.metric, bar.target, bar.min_samples


def _bars(mapping: Any, tier: str, part: str) -> frozenset[tuple[tuple[str, Any], ...]]:
    entry = mapping["tiers"][tier]
    bars = entry.get("keep", []) if part == "keep" else (entry.get("promote") or {}).get("bars", [])
    return frozenset(tuple(sorted(bar.items())) for bar in bars)


def _hold(mapping: Any, tier: str) -> Any:
    return (mapping["tiers"][tier].get("promote") or {}).get("hold")


def _retire(key: KeyState | None, event: PolicyEvent) -> Applied:
    if key is None or key.retired:
        where = "not in the log" if key is None else "already retired"
        return (), "rejected", f"refused: {event.action_type} is {where}: there is nothing to retire"
    key.kept_ids.add(event.event_id)
    key.activation_id, key.activation_sha = event.activation_id, event.policy_sha256
    key.policy_version, key.policy_sha256 = event.policy_version, event.policy_sha256
    key.operators = tuple(event.operators)
    out: list[Decision] = []
    KeyStep(key, out).move("retire", None, _last_close(key), event.reason, **_details(event))
    key.retired, key.pinned, key.cap = True, None, None
    return tuple(out), "applied", None


def _revive(key: KeyState, event: PolicyEvent, rules: Rules) -> tuple[Decision, ...]:
    """A retired type named again starts over at Crawl (Run if read-only), keeping its place in time."""
    _adopt(key, event, rules)
    key.retired = False
    key.pinned = key.cap = key.last_demotion = key.passing_since = None
    key.open.clear()
    out: list[Decision] = []
    tier = RUN if rules.read_only else 0
    KeyStep(key, out).move(
        "initial", tier, _last_close(key), f"revived: {_starts(rules, event)}", from_tier=None, **_details(event)
    )
    key.since = None
    return tuple(out)


def _unreadable(key: KeyState | None, event: PolicyEvent, error: RulesError) -> Applied:
    """Rules this tiergate cannot read (another schema, a field it does not know) are never folded under
    older semantics: the key stops until tiergate is upgraded and the log refolded. Rules it can read but
    that break the method are refused like bad input."""
    unknown = any(
        "unknown rules schema" in message or "is not a policy field" in message for _, message in error.problems
    )
    problems = "; ".join(f"{'.'.join(map(str, path)) or 'rules'}: {message}" for path, message in error.problems)
    if not unknown:
        if key is not None:
            key.kept_ids.add(event.event_id)
        return (), "rejected", f"refused: activation {event.activation_id} has invalid rules: {problems}"
    reason = (
        f"activation {event.activation_id} carries rules this tiergate cannot read ({problems}): upgrade, then refold"
    )
    if key is not None:
        key.halted = reason
    return (), "rejected", f"halted: {reason}"
