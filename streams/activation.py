"""Turning a policy document into an activation: one `policy` event per action type of the old or the new
catalog, and the diff an operator reads before applying it.

The events are the same whichever runtime writes them: the embedded server appends them in one
transaction; `tiergate policy apply --kafka` signs and produces them. Each names, per key, the activation
it replaces (`parent_sha256`), so a stale or concurrent apply is refused key by key by the fold.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tiergate.models.policy import Policy
from tiergate.models.state import State
from tiergate.models.wire import format_ts


def new_activation_id(now: int) -> str:
    """Sortable by time, unique without coordination: `20261201T090000Z-3f9a1c2e`."""
    return f"{format_ts(now).replace('-', '').replace(':', '')}-{secrets.token_hex(4)}"


def reused_id(activation_id: str, used: tuple[str, str] | None) -> str | None:
    """Why `activation_id` cannot be used again, when an activation already has it (`used`: its version and
    sha). An id only resumes an apply that was cut short before its activation was recorded; given again
    after that, its events are duplicates: it would apply nothing while seeming to succeed."""
    if used is None:
        return None
    version, sha = used
    return (
        f"activation id {activation_id} is already recorded, for policy {version} ({sha[:12]}…): an id only resumes "
        "an apply cut short; leave --activation-id out for a new activation"
    )


@dataclass(frozen=True, slots=True)
class Catalog:
    """What an activation replaces, per key: the sha of each key's latest activation (None for a key that
    has none), and which keys are in the catalog now (not retired)."""

    parents: Mapping[str, str | None] = field(default_factory=dict)
    current: frozenset[str] = frozenset()

    @classmethod
    def of(cls, state: State) -> Catalog:
        return cls(
            {name: key.activation_sha for name, key in state.keys.items()},
            frozenset(name for name, key in state.keys.items() if not key.retired),
        )


def policy_events(
    policy: Policy, catalog: Catalog, activation_id: str, actor: str, reason: str, ts: int
) -> list[dict[str, Any]]:
    """The activation of `policy` over `catalog`, one event per type of the old or the new catalog, in name
    order: its complete rules, or `retired` for a type that leaves."""
    events = []
    for name in sorted(catalog.current | set(policy.types)):
        event: dict[str, Any] = {
            "type": "policy",
            "event_id": f"policy/{activation_id}/{name}",
            "ts": format_ts(ts),
            "action_type": name,
            "activation_id": activation_id,
            "parent_sha256": catalog.parents.get(name),
            "policy_version": policy.version,
            "policy_sha256": policy.sha256,
            "actor": actor,
            "reason": reason,
        }
        if name in policy.types:
            event["rules"] = dict(policy.types[name].mapping)
        else:
            event["retired"] = True
        if policy.operators:
            event["operators"] = list(policy.operators)
        events.append(event)
    return events


@dataclass(frozen=True, slots=True)
class Diff:
    """What a new policy document changes against the one in force."""

    added: list[str]
    removed: list[str]
    changed: dict[str, list[str]]  # action type -> what changed in its rules, in the policy's words
    read_only: list[str] = field(default_factory=list)  # the added types that are read-only (they start at run)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def record(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "read_only": self.read_only}

    def lines(self) -> list[str]:
        out = [
            f"+ {name} (new action type: {'read-only, starts at run' if name in self.read_only else 'starts at crawl'})"
            for name in self.added
        ]
        out += [f"- {name} (retired: leaves the tier map)" for name in self.removed]
        for name, changes in sorted(self.changed.items()):
            out += [f"~ {name}: {change}" for change in changes]
        return out or ["no change to any action type's rules"]


READ_ONLY_FIELDS = frozenset({"read_only", "max_tier", "window", "allowed_lateness"})
"""The rules that still matter to a read-only type (its tier, and what an activation refuses to change);
every other rule (bars, holds, keep, demotion, confidence…) it never reads."""


def diff(old: Mapping[str, Mapping[str, Any]], new: Policy) -> Diff:
    """Compare each type's complete rules (`old`: type -> rules mapping in force) with the new policy's. A
    read-only type's changes to rules it never reads are marked `(no effect: read-only)`."""
    changed: dict[str, list[str]] = {}
    for name in sorted(set(old) & set(new.types)):
        read_only = bool(new.types[name].mapping.get("read_only"))
        changes = [
            line if not read_only or path[0] in READ_ONLY_FIELDS else f"{line} (no effect: read-only)"
            for path, line in _changes(old[name], new.types[name].mapping, ())
        ]
        if changes:
            changed[name] = changes
    added = sorted(set(new.types) - set(old))
    read_only_added = [name for name in added if new.types[name].read_only]
    return Diff(added, sorted(set(old) - set(new.types)), changed, read_only_added)


def _changes(before: Any, after: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[tuple[tuple[str, ...], str]] = []
        for key in sorted(set(before) | set(after)):
            out += _changes(before.get(key), after.get(key), (*path, str(key)))
        return out
    if isinstance(before, list) and isinstance(after, list) and _as_set(before) == _as_set(after):
        return []  # bars compare as a set
    if before == after:
        return []
    return [(path, f"{'.'.join(path)}: {_show(before)} → {_show(after)}")]


def _as_set(items: list[Any]) -> frozenset[str]:
    import json

    return frozenset(json.dumps(item, sort_keys=True) for item in items)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)
