"""The one mapping between wire bytes and models: events in, decisions and tier records out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import orjson

from tiergate.models.fold import Event
from tiergate.models.wire import MAX_EVENT_BYTES, EventError, event_from_dict

__all__ = ["Event", "EventError", "decode", "encode", "iter_lines"]


def decode(raw: bytes) -> Event:
    """One event's JSON (UTF-8 bytes) -> its model, or EventError naming the field and the fix.

    Strict JSON: NaN, Infinity and numbers beyond a double are refused here, so nothing the log keeps
    can be exported as invalid JSON."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit: split or trim it")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        strict = "strict JSON: no NaN, Infinity or numbers beyond a double"
        raise EventError(f"malformed JSON: {error} ({strict})") from None
    if not isinstance(data, dict):
        raise EventError("an event is one JSON object ({...}); send arrays as NDJSON, one object a line")
    return event_from_dict(data)


def encode(event: Event) -> bytes:
    """An event model -> its wire JSON (what the SDK and the runtimes' ticks write)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every non-blank line of a JSONL stream, newline stripped."""
    for number, line in enumerate(stream, start=1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line
