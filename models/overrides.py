"""Operators' overrides: pin, unpin, cap, uncap, demote, promote.

Overrides are never late: one takes effect at `max(ts, end of the key's last closed window)`, after the
windows its own `ts` closes. One that cannot apply is rejected with its reason and changes nothing (its
id is still remembered, for good, like every override's).
"""

from __future__ import annotations

from typing import Any

from .closes import advance
from .state import RUN
from .transition import KeyStep
from .wire import TIER_INDEX, TIERS, Override


def apply(step: KeyStep, event: Override) -> str | None:
    """Apply one override; the reason it was refused, or None when it applied."""
    key = step.key
    advance(step, event.ts)
    assert key.next_close is not None
    at = max(event.ts, key.next_close * step.rules.window)
    refused = refusal(step, event)
    if refused is not None:
        return f"override {event.op} rejected: {refused}"
    target = target_of(step, event)
    if event.op == "pin":
        key.pinned = target
    elif event.op == "unpin":
        key.pinned = None
    elif event.op == "cap":  # the ceiling it names, above the tier or not; the tier drops only if above
        key.cap = _named(event)
        if key.pinned is not None and key.pinned > key.cap:
            key.pinned = key.cap
    elif event.op == "uncap":
        key.cap = None
    elif key.pinned is not None:  # a human promote/demote carries the pin along
        key.pinned = target
    details: dict[str, Any] = {"op": event.op, "actor": event.actor, "event_id": event.event_id}
    if event.tier is not None:
        details["tier"] = event.tier  # what the operator named (a cap above the tier moves nothing)
    if target != key.tier:
        step.move("override", target, at, event.reason, **details)
    else:
        step.note("override", target, at, event.reason, **details)
    return None


def _named(event: Override) -> int:
    assert event.tier is not None  # the wire model requires it for pin and cap
    return TIER_INDEX[event.tier]


def target_of(step: KeyStep, event: Override) -> int:
    """The tier the key holds after the override."""
    key = step.key
    if event.op == "pin":
        return _named(event)
    if event.op == "cap":
        return min(key.tier, _named(event))
    if event.op == "demote":
        return key.tier - 1 if event.tier is None else _named(event)
    if event.op == "promote":
        return key.tier + 1
    return key.tier


def refusal(step: KeyStep, event: Override) -> str | None:
    """Why an override cannot apply, or None."""
    key = step.key
    tier = None if event.tier is None else TIER_INDEX[event.tier]
    current, ceiling = TIERS[key.tier], TIERS[key.ceiling]
    if event.op == "pin":
        assert tier is not None
        if tier > key.ceiling:
            return f"pin {event.tier} is above the ceiling {ceiling}, {_held_below(step, tier)}"
        if tier not in (key.tier, key.tier + 1):
            return (
                f"pin {event.tier} is below the current tier {current}: demote to {event.tier} first, then pin"
                if tier < key.tier
                else f"pin {event.tier} is more than one tier above {current}: pin {TIERS[key.tier + 1]} at most"
            )
    elif event.op == "unpin" and key.pinned is None:
        return "the action type is not pinned"
    elif event.op == "uncap" and key.cap is None:
        if key.rules.max_tier < RUN:
            return f"the action type is not capped; its ceiling {ceiling} is {_max_tier_fix(step)}"
        return "the action type is not capped"
    elif event.op == "demote":
        if key.tier == 0:
            return "already at crawl"
        if tier is not None and tier >= key.tier:
            return f"demote to {event.tier} is not below the current tier {current}: name a lower tier or omit it"
    elif event.op == "promote" and key.tier + 1 > key.ceiling:
        return f"already at the ceiling {ceiling}, {_held_below(step, key.tier + 1)}"
    return None


def _held_below(step: KeyStep, wanted: int) -> str:
    """What keeps the type below `wanted`, and how to lift it: an operator's cap is lifted by uncap, the
    policy's max_tier only by a new policy (uncap would be refused: there may be no cap at all)."""
    key, max_tier = step.key, step.key.rules.max_tier
    capped = key.cap is not None and key.cap < wanted
    if not capped:
        return _max_tier_fix(step)
    if max_tier >= wanted:
        return "an operator's cap: uncap first"
    return f"an operator's cap and the policy's max_tier {TIERS[max_tier]}: uncap, and {_raise_max_tier(step)}"


def _max_tier_fix(step: KeyStep) -> str:
    return f"the policy's max_tier (uncap does not lift it): {_raise_max_tier(step)}"


def _raise_max_tier(step: KeyStep) -> str:
    return f"raise action_types.{step.key.action_type}.max_tier in the policy and apply it"
