"""In-memory transport and sink: tier records pushed by hand, events kept in a list (tests, local work)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .delivery import Rejection
from .tier_map import TierFeed

Step = Callable[[TierFeed], None]


class MemoryTierTransport:
    """Tier records, retirements, load marks and errors pushed by hand, fed to the client in order."""

    def __init__(self) -> None:
        self._steps: asyncio.Queue[Step] = asyncio.Queue()

    def push(self, *records: dict[str, Any]) -> None:
        for record in records:
            self._steps.put_nowait(lambda feed, r=record: feed.apply(r))  # type: ignore[misc]

    def retire(self, action_type: str, version: int | None = None) -> None:
        """As the server's `retired` event (with a version) or a compacted topic's tombstone (without)."""
        self._steps.put_nowait(lambda feed: feed.retire(action_type, version))

    def finish_load(self) -> None:
        self._steps.put_nowait(lambda feed: feed.loaded())

    def fail(self, error: str) -> None:
        self._steps.put_nowait(lambda feed: feed.failed(error))

    async def run(self, feed: TierFeed) -> None:
        while True:
            step = await self._steps.get()
            step(feed)


@dataclass
class MemoryEventSink:
    """Keeps what it is sent; accepts everything."""

    sent: list[bytes] = field(default_factory=list)

    async def send(self, events: Sequence[bytes]) -> list[Rejection]:
        self.sent.extend(events)
        return []

    async def close(self) -> None:
        pass
