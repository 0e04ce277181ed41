"""Input events: wire version 1 parsing and the reasons given for bad input."""

from __future__ import annotations

import pytest

from tiergate.models.wire import MAX_EVENT_BYTES, EventError, Outcome, format_ts, parse_event, parse_ts


def reason(raw: str | bytes) -> str:
    with pytest.raises(EventError) as caught:
        parse_event(raw.encode() if isinstance(raw, str) else raw)
    return caught.value.reason


def test_timestamps_become_utc_whole_seconds() -> None:
    """Any offset is converted to UTC; fractions of a second are dropped."""
    assert parse_ts("2026-11-02T12:00:00.900+02:00") == parse_ts("2026-11-02T10:00:00Z")
    assert format_ts(parse_ts("2026-11-02T10:00:00Z")) == "2026-11-02T10:00:00Z"


def test_an_outcome_parses_with_unknown_fields_ignored() -> None:
    """Forward compatibility: extra fields do not reject the event."""
    event = parse_event(
        b'{"type":"outcome","event_id":"e2","ts":"2026-11-02T10:04:00Z","action_type":"r",'
        b'"action_id":"a","tier":"crawl","kind":"review","result":"accepted","future":1}'
    )
    assert isinstance(event, Outcome) and event.result == "accepted"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"action"', "malformed JSON"),
        ('{"type":"nap","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r"}', "type: must be one of"),
        (
            '{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00","action_type":"r"}',
            "ts: '2026-11-02T10:00:00' has no UTC offset",
        ),
        ('{"type":"tick","event_id":"e","ts":1700000000,"action_type":"r"}', "ts: must be an RFC 3339 string"),
        ('{"type":"tick","ts":"2026-11-02T10:00:00Z","action_type":"r"}', "event_id: is required"),
        (
            '{"type":"action","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","action_id":"a","tier":"sprint"}',
            "tier: Input should be 'crawl', 'walk' or 'run'",
        ),
        (
            '{"type":"outcome","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","action_id":"a","tier":"walk",'
            '"kind":"review","result":"success"}',
            "result 'success' is not valid for kind 'review'",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"cap","actor":"a","reason":"r"}',
            "op 'cap' needs a tier",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"promote","tier":"run",'
            '"actor":"a","reason":"r"}',
            "op 'promote' takes no tier",
        ),
        (
            '{"type":"override","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","op":"unpin","reason":"r"}',
            "actor: is required",
        ),
        (
            '{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"has space"}',
            "action_type: String should match",
        ),
        ("[1, 2]", "event"),
    ],
)
def test_bad_input_is_rejected_with_a_reason_that_names_the_field(raw: str, expected: str) -> None:
    """Each kind of bad input gets a reason naming the field and, where there is one, the fix."""
    assert expected in reason(raw)


def test_an_event_over_64_kib_is_rejected() -> None:
    """Oversized events are refused before parsing, with the limit in the reason."""
    big = (
        b'{"type":"tick","event_id":"e","ts":"2026-11-02T10:00:00Z","action_type":"r","pad":"'
        + b"x" * MAX_EVENT_BYTES
        + b'"}'
    )
    assert "byte limit" in reason(big)
