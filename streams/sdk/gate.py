"""The action gate: asks the tier map, records the action at the tier it will run at, says how to act."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .receipts import Receipt
from .reporter import Reporter
from .tier_map import TierMapClient


class Mode(enum.Enum):
    """What agent code may do with an action, by tier."""

    SUGGEST = "crawl"  # only suggest; a human accepts, edits or rejects
    ACT_INTERNAL = "walk"  # act, on internal staff only
    ACT_CUSTOMER = "run"  # act directly on customers


@dataclass(frozen=True)
class GateDecision:
    """What agent code may do now for one action, and the receipt of the action as recorded."""

    mode: Mode
    receipt: Receipt

    @property
    def tier(self) -> str:
        return self.mode.value


class ActionGate:
    """`decide()` fails closed (Crawl whenever the tier map is not ready or does not know the type) and
    never waits on, or raises from, the delivery of the action it records. `async with` starts the tier
    map client and, on the way out, flushes and closes the reporter, then the client."""

    def __init__(self, tiers: TierMapClient, reporter: Reporter) -> None:
        self.tiers, self.reporter = tiers, reporter

    async def decide(
        self, action_type: str, action_id: str | None = None, attributes: Mapping[str, Any] | None = None
    ) -> GateDecision:
        """The mode to act in; raises only InvalidEvent, for an action that cannot be recorded as given."""
        mode = Mode(self.tiers.tier_for(action_type))
        receipt = await self.reporter.record_action(action_type, mode.value, action_id, attributes)
        return GateDecision(mode, receipt)

    async def __aenter__(self) -> ActionGate:
        await self.tiers.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.reporter.close()
        finally:
            await self.tiers.close()
