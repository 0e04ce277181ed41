"""Read-only views over the fold's state: what each action type's bars show now, and its hold progress.

The HTTP status endpoint, the Prometheus collector and the demo's table all read these; none of them
reaches into the state's internals. Figures are as of the key's last closed window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .evidence import keep_evidence, promote_evidence
from .maturity import pending
from .state import KeyState
from .stats import Evidence
from .wire import TIERS, format_ts


@dataclass(frozen=True, slots=True)
class KeyView:
    """One action type as the evaluator sees it at its last close."""

    action_type: str
    tier: str  # a retired type's last tier (its record shows none: agents treat it as crawl)
    version: int
    since: int | None
    read_only: bool
    pinned: str | None
    cap: str | None
    ceiling: str
    watermark: int | None
    last_close: int | None
    promote: tuple[Evidence, ...]  # the gate out of the current tier, judged on the current evidence
    keep: tuple[Evidence, ...]
    passing_since: int | None
    hold_required: int | None
    maturity: int | None = None  # customer outcomes known this long after their action (None: as they come)
    pending: dict[str, int] | None = None  # customer units waiting to mature, per tier
    checkpoint: int | None = None  # how far the customer feed says its failures are complete
    unmatched: int = 0  # customer failures beyond their cell's units (no such action)
    rules: tuple[str, str, int] = ("wilson", "point", 0)  # (promotion rule, demotion rule, tripwire)
    retired: bool = False  # left the catalog: `since` is when, its history stays in the log

    @property
    def hold_progress(self) -> float:
        """Share of the hold already held by the current passing streak (0 when not passing)."""
        if self.passing_since is None or self.last_close is None or not self.hold_required:
            return 0.0 if self.passing_since is None else 1.0
        return min(1.0, (self.last_close - self.passing_since) / self.hold_required)

    def record(self) -> dict[str, Any]:
        """As GET /v1/status answers it; a retired type is marked so and, as in the tier map, has no tier."""
        return {
            "action_type": self.action_type,
            "tier": None if self.retired else self.tier,
            "retired": self.retired,
            "version": self.version,
            "since": None if self.since is None else format_ts(self.since),
            "read_only": self.read_only,
            "pinned": self.pinned,
            "cap": self.cap,
            "ceiling": self.ceiling,
            "watermark": None if self.watermark is None else format_ts(self.watermark),
            "last_close": None if self.last_close is None else format_ts(self.last_close),
            "rules": {"promotion": self.rules[0], "demotion": self.rules[1], "tripwire": self.rules[2]},
            "promote": [e.record() | {"verdict": e.verdict.name.lower()} for e in self.promote],
            "keep": [_keep_record(e) for e in self.keep],
            "hold": {
                "passing_since": None if self.passing_since is None else format_ts(self.passing_since),
                "required": self.hold_required,
                "progress": round(self.hold_progress, 4),
            },
            "customer": {
                "maturity": self.maturity,
                "pending": self.pending or {},
                "checkpoint": None if self.checkpoint is None else format_ts(self.checkpoint),
                "unmatched_failures": self.unmatched,
            },
        }


def _keep_record(evidence: Evidence) -> dict[str, Any]:
    """A keep bar's figures; under the v1 rule, its demotion line (target − margin) as `threshold`; under a
    sequential rule the line is the test's (`test.threshold`)."""
    record = evidence.record() | {"verdict": evidence.verdict.name.lower()}
    return record if evidence.test is not None else record | {"threshold": float(evidence.bar.keep_below)}


def key_view(key: KeyState) -> KeyView:
    """A retired type has no bars or hold: nothing is evaluated until a policy names it again."""
    rules, tier, evaluated = key.rules, key.tier, not (key.read_only or key.retired)
    has_gate = bool(rules.promote_bars[tier]) and evaluated
    return KeyView(
        action_type=key.action_type,
        tier=TIERS[tier],
        version=key.version,
        since=key.since,
        read_only=key.read_only,
        pinned=None if key.pinned is None else TIERS[key.pinned],
        cap=None if key.cap is None else TIERS[key.cap],
        ceiling=TIERS[key.ceiling],
        watermark=key.watermark,
        last_close=None if key.next_close is None else key.next_close * rules.window,
        promote=promote_evidence(key) if evaluated else (),
        keep=keep_evidence(key) if evaluated else (),
        passing_since=key.passing_since,
        hold_required=rules.hold[tier] if has_gate else None,
        maturity=rules.maturity,
        pending={TIERS[t]: n for t, n in sorted(pending(key).items())},
        checkpoint=key.checkpoint,
        unmatched=key.unmatched,
        rules=(rules.promotion_rule, rules.demotion_rule, rules.tripwire),
        retired=key.retired,
    )
