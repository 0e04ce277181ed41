"""The one mapping between wire bytes and models: events in, decisions and tier records out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import orjson

from tiergate.models.fold import Event
from tiergate.models.wire import MAX_EVENT_BYTES, EventError, event_from_dict

__all__ = ["EXCERPT", "Event", "EventError", "decode", "encode", "excerpt", "iter_lines"]

EXCERPT = 200
"""Characters of a raw input shown where rows are listed (a table, the console); the whole of it is in --json,
/v1/rejected and the console's expansion."""


def decode(raw: bytes) -> Event:
    """One event's JSON (UTF-8 bytes) -> its model, or EventError naming the field and the fix.

    Strict JSON: NaN, Infinity and numbers beyond a double are refused here, so nothing the log keeps
    can be exported as invalid JSON."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit: split or trim it")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise EventError(malformed(error, raw)) from None
    if not isinstance(data, dict):
        raise EventError("an event is one JSON object ({...}); send arrays as NDJSON, one object a line")
    return event_from_dict(data)


NOT_JSON_NUMBERS = ("nan", "infinity", "inf")
STRICT = "strict JSON: no NaN, Infinity or numbers beyond a double; send null or a string"
TOO_DEEP = ("depth limit exceeded", "failed to allocate memory")
"""orjson's words for arrays or objects nested too deep: past 1024 levels, or (the second) fewer left open."""


def malformed(error: orjson.JSONDecodeError, raw: bytes) -> str:
    """The reason for input (`raw`) that is not JSON, with the fix where the error shows it: a number JSON
    cannot carry (NaN, Infinity, one beyond a double), an event cut short, several events in one input, bytes
    that are not UTF-8, nesting too deep."""
    at = str(error.doc)[error.pos : error.pos + 8].lower()
    if "infinity when parsed as double" in error.msg or at.startswith(NOT_JSON_NUMBERS):
        return f"malformed JSON: {error} ({STRICT})"
    if error.msg.startswith("unexpected end of data"):
        return f"malformed JSON: {error}: the event is cut short; send the whole object"
    if error.msg.startswith("unexpected content after document"):
        return f"malformed JSON: {error}: {_after_document(str(error.doc), error.pos)}"
    if "not valid UTF-8" in error.msg:
        return f"malformed JSON: {_not_utf8(raw)}: send the event as UTF-8 text"
    if error.msg.startswith(TOO_DEEP):
        return (
            f"malformed JSON: {error}: arrays or objects nested deeper than the parser takes (1024 levels; fewer "
            "when left open): an event is one JSON object ({...}) whose fields nest a few levels at most"
        )
    return f"malformed JSON: {error}: send each event as one JSON object ({{...}}), strings in double quotes"


def _after_document(text: str, pos: int) -> str:
    """The fix for content after the first document. Another object on a later line means several events
    one a line in one input: a body posted as application/json (NDJSON is split into lines before it is
    decoded, and so are files)."""
    between = text[len(text[:pos].rstrip()) : pos]
    if "\n" in between and text[pos : pos + 1] == "{":
        return (
            "this input is several events, one a line (NDJSON), sent as one document: post it with "
            "Content-Type: application/x-ndjson (application/json takes a single event); on Kafka, produce "
            "one event a message"
        )
    return "one event a line (NDJSON), each a single JSON object"


def _not_utf8(raw: bytes) -> str:
    """Where input stops being UTF-8 (orjson does not say: its message names surrogates and position 0)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"the input is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} ({error.reason})"
    return "the input is not valid UTF-8"


def encode(event: Event) -> bytes:
    """An event model -> its wire JSON (what the SDK and the runtimes' ticks write)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every non-blank line of a JSONL stream, newline stripped."""
    for number, line in enumerate(stream, start=1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def excerpt(raw: str, limit: int = EXCERPT) -> str:
    """Raw input as a listing shows it: whole when short, else its first `limit` characters and its size."""
    if len(raw) <= limit:
        return raw
    return f"{raw[:limit]}… ({len(raw.encode('utf-8', 'surrogateescape'))} bytes)"
