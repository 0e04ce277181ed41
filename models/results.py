"""What became of one event of the log: every runtime counts and keeps input by these."""

from __future__ import annotations

from typing import Final, Literal

Result = Literal["applied", "duplicate", "late", "rejected"]
APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
LATE: Final = "late"
REJECTED: Final = "rejected"
RESULTS: tuple[Result, ...] = (APPLIED, DUPLICATE, LATE, REJECTED)
SET_ASIDE: frozenset[str] = frozenset({LATE, REJECTED})  # input that did not count: kept as rejected input

DUPLICATE_REASON = (
    "duplicate event_id: the first copy with this id counted (whatever its ts or content); this one changes nothing"
)
