"""Folding a keyed log in batches: the Kafka worker's unit of work, without Kafka.

A key's saved state carries the offset of the last input applied to it. A worker that restarts or takes
over a partition re-reads input from the partition's committed offset, which may lie behind what the
saved state already holds (the table write and the offset commit are not atomic): records at or below
the stored offset are skipped, so nothing counts twice. The records a key's batch produces — decisions,
tier records, rejected input — are collected by an `Outputs` sink and sent by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.fold import initial_decisions, initial_key
from tiergate.models.policy import Policy
from tiergate.models.results import SET_ASIDE
from tiergate.models.state import KeyState, State

from .pipeline import Admit, Handled, Input, Pipeline, Principal, Rejected, Sink, carried, key_matches


@dataclass(slots=True)
class Saved:
    """What the worker's table holds for one key: its state (None for a key outside the catalog) and the
    offset of the last input record applied to it (-1: none yet)."""

    state: KeyState | None
    offset: int = -1
    folded: int = 0  # input records folded into it, all told (what `replay --verify` checks against the topic)

    def to_dict(self) -> dict[str, Any]:
        state = None if self.state is None else self.state.to_dict()
        return {"state": state, "offset": self.offset, "folded": self.folded}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Saved:
        state = None if data["state"] is None else KeyState.from_dict(data["state"])
        return cls(state, data["offset"], data.get("folded", 0))


@dataclass(slots=True)
class Outputs:
    """The pipeline's sink for one key's batch: what it makes, to be produced after the fold."""

    decisions: list[Decision] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def handled(self, item: Handled) -> None:
        if item.decisions:
            self.decisions.extend(item.decisions)
        if item.result in SET_ASIDE:
            self.rejected.append(item.rejected_input())

    def commit(self) -> None:
        """Nothing to make durable here: the caller produces the outputs, then writes the table."""

    def tier_records(self) -> list[TierRecord]:
        return [TierRecord.from_decision(d) for d in self.decisions if d.moves]


class KeyedFold:
    """The fold of one key's records of a batch, in log order, from its saved state."""

    def __init__(
        self, policy: Policy | None = None, admit: Admit = key_matches, principal: Principal = carried
    ) -> None:
        self.policy = policy
        self.pipeline = Pipeline(admit, principal)
        self.initial = {d.action_type: d for d in initial_decisions(policy)}

    def start(self, name: str) -> tuple[Saved, tuple[Decision, ...]]:
        """A key seen for the first time: its initial state and its `initial` decision (none outside the
        catalog, whose events the fold rejects)."""
        if self.policy is None or name not in self.policy.types:
            return Saved(None), ()  # its activations, if it has any, bring it in
        return Saved(initial_key(self.policy, name)), (self.initial[name],)

    def fold(self, name: str, saved: Saved, records: Iterable[Input], sink: Sink) -> Saved:
        """Apply the records after `saved.offset` to `saved` (advanced in place) and return it."""
        state = State({} if saved.state is None else {name: saved.state})
        fresh = [record for record in records if record.position > saved.offset]
        if fresh:
            self.pipeline.run(fresh, state, sink)
            saved.state, saved.offset = state.keys.get(name), fresh[-1].position
            saved.folded += len(fresh)
        return saved
