"""Decisions and tier-map records: the facts the fold emits.

Both are storage formats (the decisions topic, the embedded store, replay output) written as canonical
JSON: sorted keys, no spaces, one per line. Add fields with care; never change one's meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .policy import canonical_json
from .wire import TIERS, format_ts

Kind = Literal["initial", "promote", "demote", "override", "violation", "policy", "retire"]
KINDS: tuple[Kind, ...] = ("initial", "promote", "demote", "override", "violation", "policy", "retire")


@dataclass(frozen=True, slots=True)
class Decision:
    """One fact of the promotion log: what moved (or was noted), when, and on what evidence."""

    action_type: str
    seq: int
    kind: Kind
    from_tier: int | None  # None: the type was not in the catalog (an `initial` decision)
    to_tier: int | None  # None: the type left the catalog (a `retire` decision)
    version: int
    at: int | None
    window: tuple[int, int] | None
    reason: str
    policy_version: str
    policy_sha256: str
    evidence: tuple[dict[str, Any], ...] = ()
    hold: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def decision_id(self) -> str:
        return f"{self.action_type}/{self.seq}"

    @property
    def moves(self) -> bool:
        return self.from_tier != self.to_tier or self.kind == "initial"

    def record(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "action_type": self.action_type,
            "kind": self.kind,
            "from_tier": None if self.from_tier is None else TIERS[self.from_tier],
            "to_tier": None if self.to_tier is None else TIERS[self.to_tier],
            "version": self.version,
            "at": None if self.at is None else format_ts(self.at),
            "window": None
            if self.window is None
            else {"start": format_ts(self.window[0]), "end": format_ts(self.window[1])},
            "evidence": list(self.evidence),
            "hold": self.hold,
            "reason": self.reason,
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
            **self.details,
        }

    def to_json(self) -> str:
        return canonical_json(self.record())


@dataclass(frozen=True, slots=True)
class TierRecord:
    """One action type's entry in the live tier map; consumers keep the highest `version` per key. A
    retired type's record has no tier: it leaves the map (a tombstone on the compacted topic)."""

    action_type: str
    tier: int | None
    version: int
    since: int | None
    decision_id: str
    policy_version: str
    policy_sha256: str

    @classmethod
    def from_decision(cls, decision: Decision) -> TierRecord:
        """The tier map entry a tier-changing decision sets (an `initial` one, a revival's too, sets `since`
        null: the type starts over, as the fold's state says)."""
        return cls(
            action_type=decision.action_type,
            tier=decision.to_tier,
            version=decision.version,
            since=None if decision.kind == "initial" else decision.at,
            decision_id=decision.decision_id,
            policy_version=decision.policy_version,
            policy_sha256=decision.policy_sha256,
        )

    @property
    def retired(self) -> bool:
        return self.tier is None

    def record(self) -> dict[str, Any]:
        return {
            "action_type": self.action_type,
            "tier": None if self.tier is None else TIERS[self.tier],
            "version": self.version,
            "since": None if self.since is None else format_ts(self.since),
            "decision_id": self.decision_id,
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
        }

    def to_json(self) -> str:
        return canonical_json(self.record())
