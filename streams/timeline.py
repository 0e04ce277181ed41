"""An action type's tier over time, read off its tier-changing decisions, and two timelines compared.

A timeline is exact, not sampled: it changes only where a decision changed the tier. Each change takes
effect at its decision's `at` (the end of the window whose close decided it, an override's effect time,
an activation's last close); a decision without a date (a type's first, before any window of it closed)
counts from the start of the span. A tier of None means the type is out of the catalog (retired).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tiergate.models.decisions import Decision
from tiergate.models.wire import TIERS, format_ts

OUT = "out"  # the name of "not in the catalog" where tiers are counted


def tier_name(tier: int | None) -> str | None:
    return None if tier is None else TIERS[tier]


@dataclass(frozen=True, slots=True)
class Change:
    """One tier change: when it takes effect (None: before the span), the tier after it, and why."""

    at: int | None
    tier: int | None
    decision: Decision


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of the span at one tier, and the decision that put the type there (None: the span began
    before the type had any decision)."""

    start: int
    end: int
    tier: int | None
    decision: Decision | None

    def record(self) -> dict[str, Any]:
        return {"from": format_ts(self.start), "to": format_ts(self.end), "tier": tier_name(self.tier)}


class Changes:
    """One side's tier changes of one type, in fold order, each dated no earlier than the one before (an
    override can take effect beyond a window that closes after it: the close then counts from the override)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Change] = []

    def add(self, decision: Decision, at: int | None) -> None:
        if self.items and at is not None:
            before = self.items[-1].at
            if before is not None and at < before:
                at = before
        self.items.append(Change(at, decision.to_tier, decision))

    def segments(self, start: int, end: int) -> list[Segment]:
        """The timeline over [start, end): the tier in force at `start`, then each change inside the span
        (changes at one instant: the last one counts)."""
        tier: int | None = None
        decision: Decision | None = None
        out: list[Segment] = []
        cursor = start
        for change in self.items:
            at = start if change.at is None else max(change.at, start)
            if at >= end:
                break
            if at > cursor:
                out.append(Segment(cursor, at, tier, decision))
                cursor = at
            tier, decision = change.tier, change.decision
        out.append(Segment(cursor, end, tier, decision))
        return _merged(out)

    def moves(self, start: int, end: int) -> list[Change]:
        """The changes between two tiers (not into or out of the catalog) that take effect inside the span."""
        return [
            c
            for c in self.items
            if c.at is not None
            and start <= c.at < end
            and c.decision.from_tier is not None
            and c.tier is not None
            and c.tier != c.decision.from_tier
        ]


def _merged(segments: list[Segment]) -> list[Segment]:
    """Neighbouring segments at the same tier as one (the decision of the first kept)."""
    out: list[Segment] = []
    for segment in segments:
        if out and out[-1].tier == segment.tier:
            out[-1] = Segment(out[-1].start, segment.end, segment.tier, out[-1].decision)
        else:
            out.append(segment)
    return out


def time_at_tiers(segments: list[Segment]) -> dict[str, int]:
    """Seconds at each tier (and out of the catalog) over the span."""
    spent = dict.fromkeys((*TIERS, OUT), 0)
    for segment in segments:
        spent[tier_name(segment.tier) or OUT] += segment.end - segment.start
    return spent


def aligned(a: list[Segment], b: list[Segment]) -> Iterator[tuple[int, int, Segment, Segment]]:
    """Walk two timelines of one span together: (start, end, a's segment, b's segment) at every breakpoint
    of either."""
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i].start, b[j].start), min(a[i].end, b[j].end)
        if end > start:
            yield start, end, a[i], b[j]
        if a[i].end <= b[j].end:
            i += 1
        else:
            j += 1


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first moment the candidate held another tier than the record, and the decisions in force then."""

    at: int
    recorded: Segment
    candidate: Segment

    @property
    def moved(self) -> str:
        """Which side's tier changed at the divergence: `candidate`, `recorded` or `both`."""
        candidate, recorded = self.candidate.start == self.at, self.recorded.start == self.at
        return "both" if candidate == recorded else "candidate" if candidate else "recorded"

    def record(self) -> dict[str, Any]:
        return {
            "at": format_ts(self.at),
            "moved": self.moved,
            "recorded": tier_name(self.recorded.tier),
            "candidate": tier_name(self.candidate.tier),
            "recorded_decision": _cause(self.recorded.decision),
            "candidate_decision": _cause(self.candidate.decision),
        }


def _cause(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    at = None if decision.at is None else format_ts(decision.at)
    return {"decision_id": decision.decision_id, "kind": decision.kind, "at": at, "reason": decision.reason}


def first_divergence(recorded: list[Segment], candidate: list[Segment]) -> Divergence | None:
    for start, _, mine, theirs in aligned(recorded, candidate):
        if mine.tier != theirs.tier:
            return Divergence(start, mine, theirs)
    return None


def without_evidence(recorded: list[Segment], candidate: list[Segment]) -> int:
    """Seconds the candidate held a tier the recorded actions did not run at: the agents ran at the recorded
    tier (Crawl while the record had the type out of its catalog, as the tier map answers), so no outcome
    could be evidence for the candidate's tier then. A type out of the candidate's catalog needs none."""
    seconds = 0
    for start, end, mine, theirs in aligned(recorded, candidate):
        ran_at = 0 if mine.tier is None else mine.tier
        if theirs.tier is not None and theirs.tier != ran_at:
            seconds += end - start
    return seconds
