"""The fold's state: per action type, everything it remembers — bounded by the lookback, not the history.

`KeyState.to_dict()` is a storage format (the embedded store's snapshots, the worker's changelog): it
carries `state_schema`, and a runtime that finds another schema refolds the log instead of decoding it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import windows
from .resolved import Rules
from .rules import rules_from_mapping
from .sequential import SequentialState
from .wire import TIER_INDEX

STATE_SCHEMA = 3  # 2: the sequential figures of the bar rules; 3: the policy the current tier was set under
RUN = TIER_INDEX["run"]
SWEEP_MIN = 1024


@dataclass(slots=True)
class Cell:
    """Customer units of one (window, tier) waiting to mature (models/maturity.py); the maturity is the one
    in force when the cell began."""

    units: int
    failures: int
    maturity: int
    failure_ids: list[str] = field(default_factory=list)


CellKey = tuple[int, int]  # (window index of the actions, tier index)


class StateSchemaError(ValueError):
    """A saved state of another `state_schema`: rebuild it by refolding the log."""


@dataclass(slots=True)
class KeyState:
    """Everything the fold remembers about one action type."""

    action_type: str
    rules: Rules
    policy_version: str  # the policy in force: an activation's, or the --policy an old log folds under
    policy_sha256: str
    tier_policy: tuple[str, str]  # (policy_version, policy_sha256) of the decision that set the current tier
    tier: int
    lookback: windows.Lookback
    version: int = 0
    seq: int = 1  # the initial decision is seq 0
    since: int | None = None
    changed_by: int = 0  # seq of the decision that set the current tier
    last_demotion: int | None = None
    passing_since: int | None = None
    pinned: int | None = None
    cap: int | None = None
    max_ts: int | None = None
    next_close: int | None = None  # index of the oldest open window
    open: dict[int, windows.Counters] = field(default_factory=dict)  # open windows that hold anything
    seen: dict[str, int] = field(default_factory=dict)  # event id -> window of its first copy
    kept_ids: set[str] = field(default_factory=set)  # override and policy ids: remembered for good
    activation_id: str | None = None  # the key's latest activation (None: none yet, folding under --policy)
    activation_sha: str | None = None  # its policy_sha256: the parent the next activation must name
    operators: tuple[dict[str, str], ...] = ()  # keys its latest activation trusts to sign (on Kafka)
    cells: dict[CellKey, Cell] = field(default_factory=dict)  # customer units waiting to mature
    failure_ids: dict[str, CellKey] = field(default_factory=dict)  # customer failure id -> its pending cell
    checkpoint: int | None = None  # how far the customer outcome feed says its failures are complete
    unmatched: int = 0  # customer failures beyond their cell's units when it matured (no such action)
    retired: bool = False  # left the catalog: out of the tier map, its events rejected
    halted: str | None = None  # why the fold stopped this key (rules it cannot read): nothing folds until fixed
    sequential: SequentialState = field(default_factory=SequentialState)  # the current tier's bar statistics
    # derived, never serialised: (lookback revision, tier, a keep bar falls, the gate passes)
    verdicts: tuple[int, int, bool, bool] | None = None
    sweep_at: int = SWEEP_MIN  # forget ids that left the lookback once `seen` grows past this

    @property
    def read_only(self) -> bool:
        return self.rules.read_only

    @property
    def ceiling(self) -> int:
        """The highest tier the type may hold now: its `max_tier`, or an operator's cap below it."""
        return min(self.rules.max_tier, RUN if self.cap is None else self.cap)

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.rules.allowed_lateness

    # -- remembered ids -------------------------------------------------------------------------

    def remembers(self, event_id: str) -> bool:
        """An id is remembered until the window of its first copy leaves the lookback."""
        window = self.seen.get(event_id)
        return window is not None and (self.lookback.horizon is None or window >= self.lookback.horizon)

    def remember(self, event_id: str, window: int) -> None:
        if self.lookback.horizon is None or window >= self.lookback.horizon:
            self.seen[event_id] = window

    def forget(self) -> None:
        """Drop the ids whose window left the lookback: memory follows the lookback, not the history.
        Called at a close once `seen` has grown past `sweep_at`; amortised O(1) per event because the
        threshold doubles with what stays."""
        self.seen = self.live_ids()
        self.sweep_at = max(SWEEP_MIN, 2 * len(self.seen))

    def live_ids(self) -> dict[str, int]:
        horizon = self.lookback.horizon
        return dict(self.seen) if horizon is None else {i: w for i, w in self.seen.items() if w >= horizon}

    # -- storage ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (sets sorted, so equal states serialise equally)."""
        return {
            "state_schema": STATE_SCHEMA,
            "action_type": self.action_type,
            "rules": self.rules.mapping,
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
            "tier": self.tier,
            "version": self.version,
            "seq": self.seq,
            "since": self.since,
            "changed_by": self.changed_by,
            "tier_policy": list(self.tier_policy),
            "last_demotion": self.last_demotion,
            "passing_since": self.passing_since,
            "pinned": self.pinned,
            "cap": self.cap,
            "max_ts": self.max_ts,
            "next_close": self.next_close,
            "open": {str(k): v for k, v in sorted(self.open.items())},
            "seen": _by_window(self.live_ids()),
            "kept_ids": sorted(self.kept_ids),
            "activation_id": self.activation_id,
            "activation_sha": self.activation_sha,
            "operators": list(self.operators),
            "cells": [
                [window, tier, c.units, c.failures, c.maturity, sorted(c.failure_ids)]
                for (window, tier), c in sorted(self.cells.items())
            ],
            "checkpoint": self.checkpoint,
            "unmatched": self.unmatched,
            "retired": self.retired,
            "halted": self.halted,
            "sequential": self.sequential.to_dict(),
            "horizon": self.lookback.horizon,
            "closed": [[k, c] for k, c in self.lookback.windows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyState:
        if data.get("state_schema") != STATE_SCHEMA:
            raise StateSchemaError(
                f"saved state of {data.get('action_type')!r} has state_schema {data.get('state_schema')!r}, "
                f"this tiergate writes {STATE_SCHEMA}: refold the log"
            )
        rules = rules_of(data["rules"])
        lookback = windows.Lookback(rules.lookback_windows, data["horizon"])
        for index, counters in data["closed"]:
            lookback.windows.append((index, counters))
            lookback.totals = windows.merge(lookback.totals, counters)
        return cls(
            action_type=data["action_type"],
            rules=rules,
            policy_version=data["policy_version"],
            policy_sha256=data["policy_sha256"],
            tier=data["tier"],
            lookback=lookback,
            version=data["version"],
            seq=data["seq"],
            since=data["since"],
            changed_by=data["changed_by"],
            tier_policy=(data["tier_policy"][0], data["tier_policy"][1]),
            last_demotion=data["last_demotion"],
            passing_since=data["passing_since"],
            pinned=data["pinned"],
            cap=data["cap"],
            max_ts=data["max_ts"],
            next_close=data["next_close"],
            open={int(k): list(v) for k, v in data["open"].items()},
            seen={i: int(w) for w, ids in data["seen"].items() for i in ids},
            kept_ids=set(data["kept_ids"]),
            activation_id=data["activation_id"],
            activation_sha=data["activation_sha"],
            operators=tuple(data["operators"]),
            cells={(w, t): Cell(units, failed, maturity, ids) for w, t, units, failed, maturity, ids in data["cells"]},
            failure_ids={i: (w, t) for w, t, _, _, _, ids in data["cells"] for i in ids},
            checkpoint=data["checkpoint"],
            unmatched=data["unmatched"],
            retired=data["retired"],
            halted=data["halted"],
            sequential=SequentialState.from_dict(data["sequential"]),
        )


@dataclass(slots=True)
class State:
    keys: dict[str, KeyState]

    def to_dict(self) -> dict[str, Any]:
        return {name: key.to_dict() for name, key in sorted(self.keys.items())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        return cls({name: KeyState.from_dict(value) for name, value in data.items()})


def _by_window(seen: dict[str, int]) -> dict[str, list[str]]:
    """Remembered ids grouped by window, sorted: equal memories serialise equally."""
    grouped: dict[int, list[str]] = {}
    for event_id, window in seen.items():
        grouped.setdefault(window, []).append(event_id)
    return {str(w): sorted(ids) for w, ids in sorted(grouped.items())}


def fresh(rules: Rules, tier: int) -> SequentialState:
    """The sequential figures of a type that has just entered `tier` under `rules`: nothing observed."""
    return SequentialState.fresh(len(rules.keep_bars[tier]), rules.promote_tests[tier])


def rules_of(mapping: Mapping[str, Any]) -> Rules:
    """Validated rules from their mapping; equal rules give one shared `Rules` (a catalog's keys mostly
    share theirs, and every key of an activation carries them again)."""
    return _rules(json.dumps(mapping, sort_keys=True))


@lru_cache(maxsize=256)
def _rules(mapping_json: str) -> Rules:
    return rules_from_mapping(json.loads(mapping_json))
