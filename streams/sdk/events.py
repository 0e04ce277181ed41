"""The events an agent and its outcome reporters emit: built here, validated and encoded once, before they
are queued. A bad event never leaves the agent: it raises InvalidEvent at the call that made it.

Every event is checked by the runtimes' own codec (the wire models, strict JSON): actions, outcomes (with
the `action_ts` their receipt carries, for a maturity) and the `checkpoint` of an outcome feed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from tiergate.models.wire import MAX_EVENT_BYTES, EventError, format_ts, parse_ts
from tiergate.streams.codec import decode

from .errors import InvalidEvent
from .receipts import Receipt


def action_event(
    action_id: str, action_type: str, tier: str, ts: int, agent: str | None, attributes: Mapping[str, Any]
) -> dict[str, Any]:
    """The action as recorded: its event id is `<action_id>/action`."""
    return {
        "type": "action",
        "event_id": f"{action_id}/action",
        "ts": format_ts(ts),
        "action_type": action_type,
        "action_id": action_id,
        "tier": tier,
        "agent": agent,
        "attributes": dict(attributes),
    }


def outcome_event(
    receipt: Receipt, kind: str, result: str, ts: int, edit: str | None, reason: str | None
) -> dict[str, Any]:
    """One outcome of the receipt's action: its event id is `<action_id>/<kind>`, so a re-report is a
    duplicate, never a second sample."""
    return {
        "type": "outcome",
        "event_id": f"{receipt.action_id}/{kind}",
        "ts": format_ts(ts),
        "action_type": receipt.action_type,
        "action_id": receipt.action_id,
        "tier": receipt.tier,
        "kind": kind,
        "result": result,
        "edit": edit,
        "reason": reason,
        "action_ts": None if receipt.action_ts is None else format_ts(receipt.action_ts),
    }


def checkpoint_event(action_type: str, kind: str, through: datetime | int | str, ts: int) -> dict[str, Any]:
    """An outcome feed's checkpoint; its event id `checkpoint/<type>/<kind>/<through>` makes a re-send a
    duplicate."""
    mark = rfc3339(through, "through")
    return {
        "type": "checkpoint",
        "event_id": f"checkpoint/{action_type}/{kind}/{mark}",
        "ts": format_ts(ts),
        "action_type": action_type,
        "kind": kind,
        "through": mark,
    }


def rfc3339(value: datetime | int | str, field: str) -> str:
    """A moment given as an aware datetime, Unix seconds or RFC 3339 text, in the one form tiergate writes."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidEvent(f"{field}: {value!r} has no UTC offset; pass an aware datetime")
        return format_ts(int(value.timestamp()))
    if isinstance(value, int) and not isinstance(value, bool):
        return format_ts(value)
    try:
        return format_ts(parse_ts(value))
    except ValueError as error:
        raise InvalidEvent(f"{field}: {error}") from None


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The event as the bytes to send (fields that are None left out), or InvalidEvent with the reason."""
    present = {name: value for name, value in event.items() if value is not None}
    try:
        raw = orjson.dumps(present)
    except TypeError as error:
        raise InvalidEvent(f"event is not JSON ({error}): attributes take str, numbers, bools, lists, dicts") from None
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            f"event is {len(raw)} bytes of UTF-8, over the {MAX_EVENT_BYTES} byte limit: trim its attributes or reason"
        )
    _validate(raw)
    return raw


def _validate(raw: bytes) -> None:
    try:
        decode(raw)
    except EventError as error:
        raise InvalidEvent(error.reason) from None
