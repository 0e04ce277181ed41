"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and the digests taken over it.

A policy's sha256 is taken over its normalised form in this encoding, and on Kafka an operator's
signature covers an event in it, so two runtimes — or two languages — that agree on the value agree on
the bytes. The `rfc8785` package (Trail of Bits) implements the scheme, ECMAScript number formatting
included; the pure core takes the digest as an argument rather than importing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import rfc8785

from tiergate.models.durations import UNIT_SECONDS, parse_duration
from tiergate.models.policy import Policy


def canonical_bytes(value: Any) -> bytes:
    """`value` as RFC 8785 canonical JSON."""
    return rfc8785.dumps(value)


def policy_sha256(normalised: Mapping[str, Any]) -> str:
    """The identity of a normalised policy document: sha256 of its canonical JSON, in hex."""
    return hashlib.sha256(canonical_bytes(dict(normalised))).hexdigest()


_DURATIONS = frozenset({"window", "allowed_lateness", "lookback", "hold", "cooldown"})
_RULE_FIELDS = ("rule", "threshold", "floor", "tripwire")  # the bar rules' fields in `demotion`


def claimed_sha256s(policy: Policy) -> set[str]:
    """Every sha a tiergate from before policies lived in the log may have given this document (read with
    its unnamed rules v1): today's, and the forms before the bar rules were fields of the policy — RFC 8785
    and the first tiergate's. Only to recognise the policy an old store claims."""
    before_rules = without_rule_fields(policy.normalised)
    return {policy.sha256, policy_sha256(before_rules), legacy_sha256(before_rules)}


def without_rule_fields(normalised: Mapping[str, Any]) -> dict[str, Any]:
    """The normalised document as written before the bar rules were policy fields (they were all v1)."""
    types = {
        name: {key: value for key, value in entry.items() if key != "promotion"}
        | {"demotion": {k: v for k, v in entry["demotion"].items() if k not in _RULE_FIELDS}}
        for name, entry in normalised["action_types"].items()
    }
    return dict(normalised) | {"action_types": types}


def legacy_sha256(normalised: Mapping[str, Any]) -> str:
    """The sha the first tiergate (before policies lived in the log) gave a normalised document: sorted-key
    JSON with each duration in its largest whole unit."""

    def old(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: old(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [old(v) for v in value]
        if key in _DURATIONS and isinstance(value, str):
            seconds = parse_duration(value)
            unit, size = next((u, s) for u, s in UNIT_SECONDS.items() if seconds % s == 0 and (seconds or u == "s"))
            return f"{seconds // size}{unit}"
        return value

    text = json.dumps(old(dict(normalised)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
