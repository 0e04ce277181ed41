"""The reporter: records actions (returning receipts), reports their outcomes and outcome-feed checkpoints.

Every report is validated and encoded at the call (a bad one raises InvalidEvent there), then queued for
buffered delivery: no report waits on the network or raises because the server is down. `flush()` waits
for the queue; `close()` (or leaving `async with`) flushes, then stops.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .delivery import Delivery, DeliveryStats, EventSink
from .events import action_event, checkpoint_event, encode_event, outcome_event
from .receipts import Receipt


class Reporter:
    """Emits an agent's events through an injected sink. Event ids are stable (an action's is
    `<action_id>/action`, an outcome's `<action_id>/<kind>`), so a retried send never counts twice."""

    def __init__(
        self,
        sink: EventSink,
        agent: str | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10_000,
        batch_size: int = 100,
        backoff: tuple[float, float] = (0.1, 30.0),
        close_timeout: float = 5.0,
    ) -> None:
        self.agent, self.clock, self.close_timeout = agent, clock, close_timeout
        self.delivery = Delivery(sink, queue_size, batch_size, backoff)

    async def record_action(
        self,
        action_type: str,
        tier: str,
        action_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Queue the action at the tier it runs at; its receipt carries id, type, tier and ts."""
        action_id = action_id or uuid.uuid4().hex
        ts = self._now()
        self.delivery.offer(encode_event(action_event(action_id, action_type, tier, ts, self.agent, attributes or {})))
        return Receipt(action_id, action_type, tier, ts)

    async def report_outcome(
        self, receipt: Receipt | str, kind: str, result: str, edit: str | None = None, reason: str | None = None
    ) -> None:
        """Queue one outcome of the receipt's action (`review`, `internal` or `customer`)."""
        held = receipt if isinstance(receipt, Receipt) else Receipt.parse(receipt)
        self.delivery.offer(encode_event(outcome_event(held, kind, result, self._now(), edit, reason)))

    async def report_checkpoint(
        self, action_type: str, kind: str = "customer", *, through: datetime | int | str
    ) -> None:
        """Queue an outcome feed's checkpoint: every `kind` outcome of actions up to `through` is reported."""
        self.delivery.offer(encode_event(checkpoint_event(action_type, kind, through, self._now())))

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything reported so far was delivered, rejected or dropped; False on timeout."""
        return await self.delivery.flush(timeout)

    def stats(self) -> DeliveryStats:
        """Counters of delivery: queued, delivered, rejected, dropped by reason, retries, last error."""
        return self.delivery.stats()

    async def close(self) -> None:
        """Flush (up to `close_timeout`), count what is left as dropped, and close the sink's connection."""
        await self.delivery.close(self.close_timeout)

    async def __aenter__(self) -> Reporter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _now(self) -> int:
        return int(self.clock())
