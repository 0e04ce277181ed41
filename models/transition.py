"""One step's view of a key: its state, its rules, and the decisions the step emits.

Window closes (models/closes.py), overrides (models/overrides.py) and the tripwire (models/tripwire.py)
move tiers and note facts through it, so every decision is made the same way: numbered by the key's `seq`,
stamped with the policy in force, and, for a tier change, with the new `version`, `since`, streak reset and
evidence restarted.
"""

from __future__ import annotations

from typing import Any

from .decisions import Decision, Kind
from .state import KeyState, fresh


class _Current:
    """The default `from_tier`: the tier the key holds."""


CURRENT = _Current()


class KeyStep:
    __slots__ = ("key", "out", "rules")

    def __init__(self, key: KeyState, out: list[Decision]) -> None:
        self.key = key
        self.rules = key.rules
        self.out = out

    def window_of(self, ts: int | None) -> tuple[int, int] | None:
        if ts is None:
            return None
        size = self.rules.window
        start = ts // size * size
        return start, start + size

    def move(
        self, kind: Kind, to: int | None, at: int | None, reason: str, sets_cooldown: bool = True, **extra: Any
    ) -> None:
        """A tier change (None: the type leaves the catalog): new version and `since`, streak reset, evidence
        and the bars' sequential figures restart; a downward one starts the cooldown."""
        key = self.key
        if sets_cooldown and to is not None and to < key.tier and at is not None:
            key.last_demotion = at
        if kind in ("promote", "demote") and at is not None:
            extra.setdefault("window", (at - self.rules.window, at))
        self.note(kind, to, at, reason, version=key.version + 1, **extra)
        key.changed_by, key.tier_policy = key.seq - 1, (key.policy_version, key.policy_sha256)
        key.version, key.since, key.passing_since = key.version + 1, at, None
        if to is not None:
            key.tier = to
        key.lookback.clear()
        key.sequential = fresh(key.rules, key.tier)

    def note(
        self,
        kind: Kind,
        to: int | None,
        at: int | None,
        reason: str,
        version: int | None = None,
        from_tier: int | _Current | None = CURRENT,
        **extra: Any,
    ) -> None:
        """A decision at `at` (its window: the one holding `at`, unless given), stamped with the policy in
        force and, once the key has one, its activation."""
        key = self.key
        if key.activation_id is not None:
            extra["activation_id"] = key.activation_id
        self.out.append(
            Decision(
                action_type=key.action_type,
                seq=key.seq,
                kind=kind,
                from_tier=key.tier if isinstance(from_tier, _Current) else from_tier,
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
