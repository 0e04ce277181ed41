"""What the console shows, read from the embedded runtime: plain data for the templates, which escape it.

Each function runs on the server's writer thread (between batches), so it sees committed state only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from tiergate.models.decisions import KINDS
from tiergate.models.views import key_view

from ..embedded import EmbeddedRuntime
from ..store import RejectedQuery

ROWS = 50  # decisions, overrides and rejected inputs shown at once
RESULTS = ("rejected", "late")


@dataclass(frozen=True, slots=True)
class Filters:
    """The page's filters, from its query string: the promotion log by type and kind, rejected input by
    reason (a substring), result and type. Values outside the known ones are ignored."""

    action_type: str | None = None
    kind: str | None = None
    reason: str | None = None
    result: str | None = None
    rejected_type: str | None = None

    @classmethod
    def of(cls, query: Mapping[str, str], catalog: set[str]) -> Filters:
        def known(name: str, allowed: set[str] | tuple[str, ...]) -> str | None:
            value = query.get(name)
            return value if value in allowed else None

        return cls(
            action_type=known("type", catalog),
            kind=known("kind", KINDS),
            reason=(query.get("reason") or "").strip()[:200] or None,
            result=known("result", RESULTS),
            rejected_type=(query.get("rtype") or "").strip()[:200] or None,
        )


def tier_rows(runtime: EmbeddedRuntime) -> list[dict[str, Any]]:
    """Each action type's tier record and its view: bars against targets with samples, hold progress. A
    retired type is listed as such (it has left the tier map; its history stays in the log)."""
    records = {r.action_type: r.record() for r in runtime.tier_map()}
    keys = sorted(runtime.state.keys.values(), key=lambda k: k.action_type)
    return [key_view(key).record() | {"record": records.get(key.action_type, {})} for key in keys]


def log_rows(runtime: EmbeddedRuntime, filters: Filters) -> list[dict[str, Any]]:
    """The newest decisions, filtered; the records as stored (evidence, actor, principal, reason…)."""
    found = runtime.store.recent_decisions(ROWS, filters.action_type, filters.kind)
    return [orjson.loads(record) for record in found]


def override_rows(runtime: EmbeddedRuntime) -> list[dict[str, Any]]:
    return [orjson.loads(record) for record in runtime.store.recent_decisions(ROWS, kind="override")]


def rejected_rows(runtime: EmbeddedRuntime, filters: Filters) -> list[dict[str, Any]]:
    query = RejectedQuery(
        limit=ROWS, reason=filters.reason, result=filters.result, action_type=filters.rejected_type, newest=True
    )
    return runtime.store.rejected_input(query)


def everything(runtime: EmbeddedRuntime, filters: Filters) -> dict[str, Any]:
    """All the page's data at one moment."""
    policy = runtime.current_policy()
    return {
        "tiers": tier_rows(runtime),
        "log": log_rows(runtime, filters),
        "overrides": override_rows(runtime),
        "rejected": rejected_rows(runtime, filters),
        "policy_version": None if policy is None else policy.policy_version,
        "policy_sha256": None if policy is None else policy.policy_sha256,
        "catalog": sorted(runtime.state.keys),  # retired types too: their history can be filtered
        "live_types": sorted(name for name, key in runtime.state.keys.items() if not key.retired),
        "kinds": KINDS,
    }


def policy_view(runtime: EmbeddedRuntime) -> dict[str, Any]:
    """The policy in force (its activation, and its document as YAML, a starting point for the next one)
    and every activation, newest first: who, when, why, from where, as which credential."""
    rows = runtime.store.activations()
    current = rows[-1] if rows else None
    return {
        "current": None if current is None else current.record(),
        "document": "" if current is None else policy_yaml(current.document),
        "activations": [row.record() for row in reversed(rows)],
    }


FIRST = ("policy_version", "window", "allowed_lateness", "lookback", "confidence", "acceptance", "demotion", "tiers")
"""The policy file's usual order (the stored document is canonical JSON, its keys sorted)."""


def policy_yaml(document: dict[str, Any]) -> str:
    """A policy document as YAML in the policy file's order: a draft an operator can read and edit."""
    ordered = {key: document[key] for key in FIRST if key in document}
    return yaml.safe_dump(ordered | document, sort_keys=False, allow_unicode=True)
