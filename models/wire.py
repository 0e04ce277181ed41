"""Input events, wire version 1.

This module is a storage format: every event ever accepted is kept in this shape, in the input log, for
good. Change it only by adding optional fields; a field that changes meaning needs a new wire version.

Timestamps are RFC 3339 with an offset and become UTC whole seconds (an ``int``) at the boundary, so the
fold only ever does integer arithmetic on time.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    model_validator,
)

WIRE_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024

Tier = Literal["crawl", "walk", "run"]
TIERS: tuple[Tier, ...] = ("crawl", "walk", "run")
TIER_INDEX: dict[str, int] = {name: i for i, name in enumerate(TIERS)}

ACTION_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

OutcomeKind = Literal["review", "internal", "customer"]
RESULTS: dict[str, tuple[str, ...]] = {
    "review": ("accepted", "edited", "rejected"),
    "internal": ("completed", "corrected", "failed"),
    "customer": ("success", "failure"),
}


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
TS_MIN = 0  # 1970-01-01T00:00:00Z
TS_MAX = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp()) - 1  # 9998-12-31T23:59:59Z: room for window ends
TS_RANGE = "1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z"


def parse_ts(value: object) -> int:
    """RFC 3339 text with an offset -> Unix seconds (UTC, fractions dropped), within `TS_RANGE`."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with an offset, e.g. 2026-11-02T10:00:00Z")
    if RFC3339.fullmatch(value) is None:
        if RFC3339.fullmatch(value + "Z") is not None:
            raise ValueError(f"{value!r} has no UTC offset; add one, e.g. Z or +02:00")
        raise ValueError(f"{value!r} is not RFC 3339; write it like 2026-11-02T10:00:00Z or 2026-11-02T12:00:00+02:00")
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date and time (month, day, hour or offset)") from None
    try:
        seconds = math.floor(moment.timestamp())
    except (ValueError, OverflowError):  # in UTC it is before year 1 or after year 9999
        seconds = -1
    if not TS_MIN <= seconds <= TS_MAX:
        raise ValueError(f"{value!r} is out of range: tiergate accepts {TS_RANGE}")
    return seconds


def format_ts(seconds: int) -> str:
    """Unix seconds -> RFC 3339 in UTC with a Z, the one form tiergate writes. (isoformat, not strftime: the
    same text for every year in TS_RANGE, in two thirds of the time; late reasons format two per event.)"""
    return datetime.fromtimestamp(seconds, UTC).isoformat()[:19] + "Z"


Timestamp = Annotated[int, PlainValidator(parse_ts), PlainSerializer(format_ts, return_type=str)]
EventId = Annotated[str, Field(min_length=1, max_length=256)]
ActionType = Annotated[str, Field(pattern=ACTION_TYPE_PATTERN)]


class _Event(BaseModel):
    """Fields every event carries, ticks included. Unknown extra fields are ignored here and kept by
    the runtimes, which store each event's original bytes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: EventId
    ts: Timestamp
    action_type: ActionType


class Action(_Event):
    """The agent did (or, at Crawl, suggested) one action of `action_type` at `tier`."""

    type: Literal["action"]
    action_id: EventId
    tier: Tier
    agent: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class Outcome(_Event):
    """What one action led to: a human review, an internal result or a customer outcome."""

    type: Literal["outcome"]
    action_id: EventId
    tier: Tier
    kind: OutcomeKind
    result: str
    edit: Literal["minor", "major"] | None = None
    reason: str | None = None
    action_ts: Timestamp | None = None  # when the action it judges ran (its receipt carries it): for a maturity

    @model_validator(mode="after")
    def _result_fits_kind(self) -> Outcome:
        allowed = RESULTS[self.kind]
        if self.result not in allowed:
            raise ValueError(
                f"result: {self.result!r} is not valid for kind {self.kind!r}: use one of {', '.join(allowed)}"
            )
        if self.edit is not None and self.result != "edited":
            raise ValueError("edit: only allowed with result 'edited': remove it or set result to 'edited'")
        return self


OPS_NEEDING_TIER = ("pin", "cap")  # the tier to pin at, the ceiling to set
OPS_WITHOUT_TIER = ("unpin", "uncap", "promote")  # (demote may name the tier to go down to)


class Override(_Event):
    """An operator's instruction: pin, unpin, cap, uncap, demote or promote one action type."""

    type: Literal["override"]
    op: Literal["pin", "unpin", "cap", "uncap", "demote", "promote"]
    tier: Tier | None = None
    actor: Annotated[str, Field(min_length=1)]
    reason: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _tier_fits_op(self) -> Override:
        if self.op in OPS_NEEDING_TIER and self.tier is None:
            raise ValueError(f"tier: op {self.op!r} needs a tier: add tier crawl, walk or run")
        if self.op in OPS_WITHOUT_TIER and self.tier is not None:
            raise ValueError(f"tier: op {self.op!r} takes no tier: remove the tier field")
        return self


class Checkpoint(_Event):
    """An outcome feed's word that its failures are complete up to `through`: customer cells whose maturity
    ended by then can be counted (a silent feed leaves them pending; nothing is presumed a success)."""

    type: Literal["checkpoint"]
    kind: Literal["customer"]
    through: Timestamp


class Tick(_Event):
    """The runtime's clock, recorded in the log so that replay sees the same time."""

    type: Literal["tick"]


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PolicyEvent(_Event):
    """One action type's part of a policy activation: its complete rules, or its retirement.

    The rules are checked by the fold, not here: a runtime that meets rules it cannot read (an unknown
    schema or field) must stop that key rather than reject the event as bad input."""

    type: Literal["policy"]
    activation_id: Annotated[str, Field(min_length=1, max_length=128)]
    parent_sha256: Sha256 | None
    policy_version: Annotated[str, Field(min_length=1)]
    policy_sha256: Sha256
    actor: Annotated[str, Field(min_length=1)]
    reason: Annotated[str, Field(min_length=1)]
    rules: dict[str, Any] | None = None
    retired: Literal[True] | None = None
    operators: list[dict[str, str]] = Field(default_factory=list)  # keys trusted to sign the next activation

    @model_validator(mode="after")
    def _rules_or_retired(self) -> PolicyEvent:
        if (self.rules is None) == (self.retired is None):
            raise ValueError("rules: a policy event carries either rules or retired: true, not both, not neither")
        expected = f"policy/{self.activation_id}/{self.action_type}"
        if self.event_id != expected:
            raise ValueError(f"event_id: a policy event's is policy/<activation_id>/<action_type>: use {expected!r}")
        return self


AnyEvent = Action | Outcome | Override | Tick | PolicyEvent | Checkpoint
Event = Annotated[AnyEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


class EventError(ValueError):
    """An input event that cannot be accepted; `reason` names the field and the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


EVENT_TYPES = "action, outcome, checkpoint, override, tick, policy"
FIELDS = frozenset(
    name for model in (Action, Outcome, Override, Tick, PolicyEvent, Checkpoint) for name in model.model_fields
)
"""Every field some event type has: a missing field is never offered one of these as its near miss."""


def describe_validation_error(error: ValidationError, data: Mapping[str, Any] | None = None) -> str:
    """Pydantic's errors as one line: `field: problem` pairs joined by '; '. With the event's `data`, a
    missing field is matched against the event's unknown keys (`action_typ`: did you mean `action_type`?)."""
    return "; ".join(_problem(item, data or {}) for item in error.errors(include_url=False))


def _problem(item: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    field = ".".join(str(p) for p in item["loc"][1:])
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "union_tag_not_found":
        return f"type: is required: add one of {EVENT_TYPES}{_near_miss('type', data)}"
    if item["type"] == "union_tag_invalid":
        return f"type: {data.get('type')!r} is not an event type: use one of {EVENT_TYPES}"
    if item["type"] == "missing":
        return f"{field}: is required: add it{_near_miss(field, data)}"
    if not field:  # the model's own checks name their field first; anything else is about the whole event
        return message if item["type"] == "value_error" else f"event: {message}"
    if item["type"] == "literal_error":  # "Input should be 'crawl', 'walk' or 'run'": say what was sent
        return f"{field}: {item['input']!r} is not valid: use {message.removeprefix('Input should be ')}"
    fix = FIELD_FIXES.get((field, item["type"])) or TYPE_FIXES.get(item["type"])
    return f"{field}: {message}" + (f": {fix}" if fix else "")


TYPE_FIXES = {  # pydantic's error types whose message says what is wrong but not what to send
    "string_type": "send it as a JSON string",
    "int_type": "send a whole number",
    "int_parsing": "send a whole number",
    "bool_type": "send true or false",
    "dict_type": "send a JSON object",
    "string_too_short": "send a non-empty string",
    "string_too_long": "shorten it",
}
FIELD_FIXES = {  # the same, where the fix depends on the field
    ("action_type", "string_pattern_mismatch"): (
        "a name starts with a letter or digit, then letters, digits, '_', '.', ':' or '-', at most 128 in all"
    ),
}


def _near_miss(field: str, data: Mapping[str, Any]) -> str:
    """' (the event has "action_typ": did you mean "action_type"?)' when an unknown key is a near miss."""
    unknown = [key for key in data if isinstance(key, str) and key not in FIELDS]
    close = difflib.get_close_matches(field, unknown, n=1, cutoff=0.8)
    return f' (the event has "{close[0]}": did you mean "{field}"?)' if close else ""


def event_from_dict(data: dict[str, Any]) -> AnyEvent:
    """An already-decoded JSON object -> its event model, or EventError with the reason."""
    try:
        return EVENT_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise EventError(describe_validation_error(error, data)) from None
