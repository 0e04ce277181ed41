"""Buffered delivery of reported events: a bounded queue that never blocks the caller, one sender task that
sends batches through an event sink, retries with exponential backoff and full jitter (tenacity), a flush
on close, and counters of what became of every event.

Delivery is at least once: a batch whose response was lost is sent again, and the server drops the second
copy as a duplicate (event ids are stable). What is never sent is *dropped*, counted by reason:
`queue_full` (reported while the queue held `queue_size` events), `closed` (reported after close, or still
unsent when close's flush timed out), `refused` (the server refused them in a way no retry can fix, e.g. a
wrong token, or a credential whose role may not post them). Events the server answered with a rejection are
`rejected`: it keeps them with its reason, and so does `stats().last_rejection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from .errors import TransportError

log = logging.getLogger("tiergate.sdk")


@dataclass(frozen=True)
class Rejection:
    """An event the server received and rejected, with its reason (the server keeps it too) — or, when
    `refused`, one it refused to take at all (its credential may not post it): not kept, counted as dropped."""

    event_id: str | None
    reason: str
    refused: bool = False


class EventSink(Protocol):
    """Sends a batch of encoded events; returns the server's rejections (and refusals of part of the batch).
    Raises TransportError when the batch did not get through (retried while `retryable`, dropped as
    `refused` otherwise)."""

    async def send(self, events: Sequence[bytes]) -> list[Rejection]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class DeliveryStats:
    """What became of the events reported so far."""

    queued: int  # waiting to be sent (in flight included)
    delivered: int  # taken by the server (applied, duplicate or late: in its log either way)
    rejected: int  # received and rejected by the server, which keeps them with the reason
    dropped: Mapping[str, int] = field(default_factory=dict)  # never sent, by reason
    retries: int = 0  # batches sent again after a transport error
    last_error: str | None = None  # the latest transport error
    last_rejection: Rejection | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def _retryable(error: BaseException) -> bool:
    return isinstance(error, TransportError) and error.retryable


class Delivery:
    """The bounded queue and its sender."""

    def __init__(
        self,
        sink: EventSink,
        queue_size: int = 10_000,
        batch_size: int = 100,
        backoff: tuple[float, float] = (0.1, 30.0),
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self.sink, self.batch_size, self.backoff = sink, batch_size, backoff
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._sender: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._closed = False
        self._dropping = False
        self._delivered = self._rejected = self._retries = 0
        self._dropped: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_rejection: Rejection | None = None

    def offer(self, raw: bytes) -> bool:
        """Queue one encoded event without waiting; False (and counted) when it had to be dropped."""
        if self._closed:
            self._drop("closed", 1, "reported after close")
            return False
        try:
            self._queue.put_nowait(raw)
        except asyncio.QueueFull:
            if not self._dropping:
                self._drop("queue_full", 1, f"the queue holds {self._queue.maxsize} unsent events")
            else:
                self._dropped["queue_full"] += 1
            self._dropping = True
            return False
        self._dropping = False
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_forever(), name="tiergate-reporter")
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far was delivered, rejected or dropped; False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush for up to `timeout` seconds, count what is left as dropped (`closed`), close the sink."""
        self._closed = True
        if not await self.flush(timeout):
            left = self._in_flight + self._queue.qsize()
            self._drop("closed", left, f"still unsent {timeout:g}s after close (last error: {self._last_error})")
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        await self.sink.close()

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            queued=self._queue.qsize() + self._in_flight,
            delivered=self._delivered,
            rejected=self._rejected,
            dropped=dict(self._dropped),
            retries=self._retries,
            last_error=self._last_error,
            last_rejection=self._last_rejection,
        )

    def _drop(self, reason: str, count: int, why: str) -> None:
        if count:
            self._dropped[reason] += count
            log.warning("tiergate reporter dropped %d event(s) (%s): %s", count, reason, why)

    async def _send_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._deliver(batch)
            finally:
                self._in_flight = 0
                for _ in batch:
                    self._queue.task_done()

    async def _deliver(self, batch: list[bytes]) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            before_sleep=self._note_retry,
            reraise=True,
        )
        try:
            rejections: list[Rejection] = await retrying(self.sink.send, batch)
        except TransportError as error:  # not retryable: sending it again cannot help
            self._last_error = str(error)
            self._drop("refused", len(batch), str(error))
            return
        except Exception as error:  # a sink's bug must not end delivery for good
            log.exception("tiergate reporter: the event sink failed")
            self._last_error = f"{type(error).__name__}: {error}"
            self._drop("refused", len(batch), self._last_error)
            return
        self._count(len(batch), rejections)

    def _count(self, sent: int, rejections: list[Rejection]) -> None:
        """Everything sent is delivered but what the server rejected (kept) or refused (dropped)."""
        self._delivered += sent - len(rejections)
        refused = [rejection for rejection in rejections if rejection.refused]
        if refused:
            self._last_error = refused[-1].reason
            self._drop("refused", len(refused), refused[-1].reason)
        for rejection in rejections:
            if not rejection.refused:
                self._rejected += 1
                self._last_rejection = rejection
                log.warning("tiergate rejected event %s: %s", rejection.event_id, rejection.reason)

    def _note_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self._retries += 1
        self._last_error = str(error)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        (log.warning if state.attempt_number == 1 else log.debug)(
            "tiergate reporter: %s; retrying %d event(s) in %.1fs", error, self._in_flight, wait
        )
