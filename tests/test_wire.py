"""Input events: wire version 1 parsing and the reasons given for bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.models.fold import initial_state
from tiergate.models.wire import MAX_EVENT_BYTES, TS_MAX, TS_MIN, EventError, Outcome, format_ts, parse_ts
from tiergate.streams.codec import decode
from tiergate.streams.pipeline import Input, Pipeline
from tiergate.streams.policy_file import read_policy

ROOT = Path(__file__).parent.parent


def reason(raw: str | bytes) -> str:
    with pytest.raises(EventError) as caught:
        decode(raw.encode() if isinstance(raw, str) else raw)
    return caught.value.reason


def test_timestamps_become_utc_whole_seconds() -> None:
    """Any offset is converted to UTC; fractions of a second are dropped."""
    assert parse_ts("2026-11-02T12:00:00.900+02:00") == parse_ts("2026-11-02T10:00:00Z")
    assert format_ts(parse_ts("2026-11-02T10:00:00Z")) == "2026-11-02T10:00:00Z"


def test_an_outcome_parses_with_unknown_fields_ignored() -> None:
    """Forward compatibility: extra fields do not reject the event."""
    event = decode(
        b'{"type":"outcome","event_id":"e2","ts":"2026-11-02T10:04:00Z","action_type":"r",'
        b'"action_id":"a","tier":"crawl","kind":"review","result":"accepted","future":1}'
    )
    assert isinstance(event, Outcome) and event.result == "accepted"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"action"', "malformed JSON"),
        (
            '{"type":"nap","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r"}',
            "type: 'nap' is not an event type: use one of action, outcome",
        ),
        (
            '{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00","action_type":"r"}',
            "ts: '2026-11-02T10:00:00' has no UTC offset",
        ),
        ('{"type":"tick","event_id":"e","ts":1700000000,"action_type":"r"}', "ts: must be an RFC 3339 string"),
        ('{"type":"tick","ts":"2026-11-02T10:00:00Z","action_type":"r"}', "event_id: is required: add it"),
        ('{"typ":"tick","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r"}', 'did you mean "type"?'),
        (
            '{"type":"action","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","action_id":"a","tier":"sprint"}',
            "tier: 'sprint' is not valid: use 'crawl', 'walk' or 'run'",
        ),
        (
            '{"type":"outcome","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","action_id":"a","tier":"walk",'
            '"kind":"review","result":"success"}',
            "result: 'success' is not valid for kind 'review'",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"cap","actor":"a","reason":"r"}',
            "tier: op 'cap' needs a tier",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"promote","tier":"run",'
            '"actor":"a","reason":"r"}',
            "tier: op 'promote' takes no tier",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"unpin","reason":"r"}',
            "actor: is required",
        ),
        (
            '{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"has space"}',
            "action_type: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$': a name starts with",
        ),
        (
            '{"type":"tick","event_id":"","ts":"2026-11-02T10:00:00Z","action_type":"r"}',
            "event_id: String should have at least 1 character: send a non-empty string",
        ),
        ("[1, 2]", "event"),
    ],
)
def test_bad_input_is_rejected_with_a_reason_that_names_the_field(raw: str, expected: str) -> None:
    """Each kind of bad input gets a reason naming the field and, where there is one, the fix."""
    assert expected in reason(raw)


def test_a_missing_field_names_a_near_miss_only_when_there_is_one() -> None:
    """A missing field's reason asks "did you mean" for an unknown key close to it, and not for a key far
    from it or one that is a field of another event type."""
    base = '{"type":"action","event_id":"e","ts":"2026-11-02T10:00:00Z","action_id":"a","tier":"crawl"'
    assert reason(base + ',"actiontype":"r"}').endswith('(the event has "actiontype": did you mean "action_type"?)')
    assert reason(base + ',"kind":"r"}') == "action_type: is required: add it"
    assert reason(base + ',"colour":"r"}') == "action_type: is required: add it"


@pytest.mark.parametrize(
    ("number", "strict"), [("NaN", True), ("-Infinity", True), ("1e309", True), ("nul", False), ("1,", False)]
)
def test_the_strict_json_note_is_given_only_for_numbers_json_cannot_carry(number: str, strict: bool) -> None:
    """Malformed JSON mentions strict JSON (no NaN, Infinity or numbers beyond a double) only when the input
    holds such a number, not for any other syntax error."""
    found = reason(TICK.format(ts='"2026-11-02T10:00:00Z"', extra=f',"x":{number}'))
    assert found.startswith("malformed JSON: ") and ("strict JSON" in found) == strict


def test_an_event_cut_short_is_called_so() -> None:
    """A truncated event's reason says it is cut short, and nothing about strict JSON."""
    assert reason('{"type":"tick","event_id":"e"').endswith(": the event is cut short; send the whole object")


def doc_examples() -> list[tuple[str, str]]:
    """docs/events.md's examples of rejected input: each input line and the reason after its `→` line."""
    text = (ROOT / "docs" / "events.md").read_text()
    block = text[text.index("Examples: each input") :].split("```")[1].strip().splitlines()
    assert len(block) % 2 == 0 and all(line.startswith("→ ") for line in block[1::2])
    return [(raw, why.removeprefix("→ ")) for raw, why in zip(block[::2], block[1::2], strict=True)]


@pytest.mark.parametrize(("raw", "why"), doc_examples())
def test_the_reasons_docs_events_md_shows_are_the_ones_tiergate_gives(raw: str, why: str) -> None:
    """Each example input of docs/events.md, folded against examples/policy.yaml's catalog, is rejected with
    exactly the reason the page shows under it."""
    handled = Pipeline().handle(
        initial_state(read_policy(ROOT / "examples" / "policy.yaml")), Input("doc", 1, raw.encode())
    )
    assert (handled.result, handled.reason) == ("rejected", why)


def test_an_event_over_64_kib_is_rejected() -> None:
    """Oversized events are refused before parsing, with the limit in the reason."""
    big = (
        b'{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","pad":"'
        + b"x" * MAX_EVENT_BYTES
        + b'"}'
    )
    assert "byte limit" in reason(big)


TICK = '{{"type":"tick","event_id":"e","ts":{ts},"action_type":"r"{extra}}}'


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ('"9999-12-31T23:59:59-14:00"', "out of range: tiergate accepts 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z"),
        ('"0001-01-01T00:00:00+14:00"', "out of range"),
        ('"1969-12-31T23:59:59Z"', "out of range"),
        ('"20261129T100000Z"', "is not RFC 3339"),
        ('"2026-11-29 10:00:00Z"', "is not RFC 3339"),
        ('"2026-02-30T00:00:00Z"', "is not a valid date and time"),
    ],
)
def test_timestamps_outside_rfc_3339_or_the_supported_range_are_rejected(ts: str, expected: str) -> None:
    """ISO 8601 basic form, a space for T and impossible or out-of-range instants are bad input with a
    reason, never a crash (year 10000 in UTC used to abort a whole replay)."""
    found = reason(TICK.format(ts=ts, extra=""))
    assert found.startswith("ts: ") and expected in found


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_numbers_json_cannot_carry_are_rejected_anywhere_in_the_event(number: str) -> None:
    """A non-finite number, even in an unknown field, would be kept and exported as invalid JSON."""
    assert "malformed JSON" in reason(TICK.format(ts='"2026-11-02T10:00:00Z"', extra=f',"x":{number}'))


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    """40,000 two-byte characters are 80,000 bytes: over the limit, though under it in characters."""
    text = TICK.format(ts='"2026-11-02T10:00:00Z"', extra=',"pad":"' + "é" * 40_000 + '"')
    assert len(text) < MAX_EVENT_BYTES < len(text.encode())
    assert "byte limit" in reason(text)


@given(st.integers(TS_MIN, TS_MAX))
def test_a_timestamp_is_written_as_strftime_writes_it_everywhere_in_range(seconds: int) -> None:
    """format_ts builds the text from isoformat (faster); it must be strftime's, byte for byte, in TS_RANGE."""
    assert format_ts(seconds) == datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_ts(format_ts(seconds)) == seconds
