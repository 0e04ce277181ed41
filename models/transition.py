"""One step's view of a key: its state, its rules, and the decisions the step emits.

Window closes (models/closes.py) and overrides (models/overrides.py) both move tiers and note facts
through it, so every decision is made the same way: numbered by the key's `seq`, stamped with the policy
in force, and, for a tier change, with the new `version`, `since`, streak reset and evidence restarted.
"""

from __future__ import annotations

from typing import Any

from .decisions import Decision, Kind
from .state import KeyState


class KeyStep:
    __slots__ = ("key", "out", "rules")

    def __init__(self, key: KeyState, out: list[Decision]) -> None:
        self.key = key
        self.rules = key.rules
        self.out = out

    def window_of(self, ts: int) -> tuple[int, int]:
        size = self.rules.window
        start = ts // size * size
        return start, start + size

    def move(self, kind: Kind, to: int, at: int, reason: str, **extra: Any) -> None:
        """A tier change: new `since`, streak reset, evidence restarts; downward ones start the cooldown."""
        key = self.key
        if to < key.tier:
            key.last_demotion = at
        if kind in ("promote", "demote"):
            extra.setdefault("window", (at - self.rules.window, at))
        self.note(kind, to, at, reason, version=key.version + 1, **extra)
        key.changed_by = key.seq - 1
        key.tier, key.version, key.since, key.passing_since = to, key.version + 1, at, None
        key.lookback.clear()

    def note(self, kind: Kind, to: int, at: int, reason: str, version: int | None = None, **extra: Any) -> None:
        """A decision at `at` (its window: the one holding `at`, unless given)."""
        key = self.key
        self.out.append(
            Decision(
                action_type=key.action_type,
                seq=key.seq,
                kind=kind,
                from_tier=key.tier,
                to_tier=to,
                version=key.version if version is None else version,
                at=at,
                window=extra.pop("window", self.window_of(at)),
                reason=reason,
                policy_version=key.policy_version,
                policy_sha256=key.policy_sha256,
                evidence=extra.pop("evidence", ()),
                hold=extra.pop("hold", None),
                details=extra,
            )
        )
        key.seq += 1
