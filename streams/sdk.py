"""The agent-side SDK: a live tier map client, a gate for agent code, and event reporting with receipts.

    tiers = TierMapClient(HttpTierTransport("http://127.0.0.1:8360"))
    reporter = Reporter(HttpEventSink("http://127.0.0.1:8360"), agent="support-bot")
    gate = Gate(tiers, reporter)
    async with tiers:
        decision = await gate.decide("refund_up_to_50")       # suggest / act on staff / act on customers
        ...                                                     # do (or suggest) the action accordingly
        await reporter.report_outcome(decision.receipt, "review", "accepted")

Transports are injected (HTTP against `tiergate serve`, Kafka against the compacted tier-map topic, or in
memory); nothing here needs faust, and the HTTP transport needs no Kafka client either. The client fails
closed: until its first full load, when its view is older than the staleness bound, and for an action type
it does not know, every answer is Crawl.

Exceptions: every error this module raises is a `TiergateError`:
    TiergateError
    ├── TransportError      the server or broker could not be reached or refused the request
    ├── InvalidEvent        an event failed validation before it left (the same models as the server)
    ├── EventRejected       the server rejected an event (its reason attached)
    └── ReceiptError        a receipt string is not one this SDK issued
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from tiergate.models.wire import EventError, event_from_dict, format_ts

__all__ = [
    "Decision",
    "EventRejected",
    "EventSink",
    "Gate",
    "HttpEventSink",
    "HttpTierTransport",
    "InvalidEvent",
    "KafkaEventSink",
    "KafkaTierTransport",
    "MemoryEventSink",
    "MemoryTierTransport",
    "Mode",
    "Receipt",
    "ReceiptError",
    "Reporter",
    "SyncTierMapClient",
    "TierMapClient",
    "TierMapStatus",
    "TierTransport",
    "TiergateError",
    "TransportError",
]

log = logging.getLogger("tiergate.sdk")
CRAWL = "crawl"
T = TypeVar("T")


class TiergateError(Exception):
    """Base of every error the SDK raises."""


class TransportError(TiergateError):
    """The server or broker could not be reached, or refused the request."""


class InvalidEvent(TiergateError, ValueError):
    """An event failed validation before it left; `reason` names the field and the fix."""


class EventRejected(TiergateError):
    """The server rejected an event; `reason` is its reason."""

    def __init__(self, event_id: str | None, reason: str) -> None:
        super().__init__(f"{event_id}: {reason}")
        self.event_id, self.reason = event_id, reason


class ReceiptError(TiergateError, ValueError):
    """A receipt string that this SDK did not issue, or that was damaged on the way."""


# -- the tier map ---------------------------------------------------------------------------------------


Apply = Callable[[dict[str, Any]], None]


class TierTransport(Protocol):
    """Feeds tier records to the client: `apply` for each record, `loaded` once the first full view is in,
    `alive` whenever the source proves it is still there. Runs until cancelled, reconnecting by itself."""

    async def run(self, apply: Apply, loaded: Callable[[], None], alive: Callable[[], None]) -> None: ...


@dataclass(frozen=True)
class TierMapStatus:
    """Whether answers come from a fresh view, or fail closed to Crawl, and why."""

    loaded: bool
    fresh: bool
    age: float | None  # seconds since the source last proved alive
    action_types: int

    @property
    def failing_closed(self) -> bool:
        return not (self.loaded and self.fresh)


class TierMapClient:
    """The agent fleet's live view of the tier map: the newest version per action type."""

    def __init__(
        self, transport: TierTransport, staleness: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.transport, self.staleness, self.clock = transport, staleness, clock
        self._records: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._alive_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed_reported = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self.transport.run(self._apply, self._on_loaded, self._alive))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> TierMapClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _apply(self, record: dict[str, Any]) -> None:
        name = record.get("action_type")
        held = self._records.get(name) if isinstance(name, str) else None
        if not isinstance(name, str) or (held is not None and int(held["version"]) >= int(record["version"])):
            return  # an older or repeated version: the newest one wins
        self._records[name] = record
        self._alive()
        self._changed.set()

    def _on_loaded(self) -> None:
        self._loaded = True
        self._alive()
        self._changed.set()

    def _alive(self) -> None:
        self._alive_at = self.clock()

    def status(self) -> TierMapStatus:
        age = None if self._alive_at is None else self.clock() - self._alive_at
        fresh = age is not None and age <= self.staleness
        return TierMapStatus(self._loaded, fresh, age, len(self._records))

    def tier_for(self, action_type: str) -> str:
        """The tier to act at: Crawl for an unknown type, before the first full load, or when stale."""
        alive_at = self._alive_at
        if self._loaded and alive_at is not None and self.clock() - alive_at <= self.staleness:  # the hot path
            self._closed_reported = False
            record = self._records.get(action_type)
            return CRAWL if record is None else str(record["tier"])
        if not self._closed_reported:  # not loaded or stale: fail closed, and say so once
            status = self.status()
            log.warning(
                "tier map %s: answering crawl for every action type",
                "not loaded yet" if not status.loaded else f"stale ({status.age or 0:.0f}s old)",
            )
            self._closed_reported = True
        return CRAWL

    def record(self, action_type: str) -> dict[str, Any] | None:
        """The newest tier record held for a type (whatever the freshness), for display and debugging."""
        return self._records.get(action_type)

    async def wait_for(self, predicate: Callable[[TierMapClient], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked at each change), or the timeout passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True


class SyncTierMapClient:
    """The same client for synchronous agent code: it runs on its own event loop thread."""

    def __init__(self, transport: TierTransport, staleness: float = 60.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tiergate-tier-map", daemon=True)
        self._thread.start()
        self.client = self._call(self._make(transport, staleness))
        self._call(self.client.start())

    async def _make(self, transport: TierTransport, staleness: float) -> TierMapClient:
        return TierMapClient(transport, staleness)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def tier_for(self, action_type: str) -> str:
        return self.client.tier_for(action_type)

    def status(self) -> TierMapStatus:
        return self.client.status()

    def close(self) -> None:
        self._call(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class MemoryTierTransport:
    """Tier records pushed by hand (tests, local development)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def push(self, *records: dict[str, Any]) -> None:
        for record in records:
            self._queue.put_nowait(record)

    def finish_load(self) -> None:
        self._queue.put_nowait(None)

    async def run(self, apply: Apply, loaded: Callable[[], None], alive: Callable[[], None]) -> None:
        while True:
            record = await self._queue.get()
            if record is None:
                loaded()
            else:
                apply(record)


class HttpTierTransport:
    """`tiergate serve`'s GET /v1/tiers, then its server-sent events; reconnects with backoff."""

    def __init__(self, base_url: str, backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        self.base_url, self.backoff = base_url.rstrip("/"), backoff

    async def run(self, apply: Apply, loaded: Callable[[], None], alive: Callable[[], None]) -> None:
        import aiohttp

        delay = self.backoff[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as http:
            while True:
                try:
                    async with http.get(f"{self.base_url}/v1/tiers") as response:
                        response.raise_for_status()
                        for record in (await response.json())["tiers"]:
                            apply(record)
                    loaded()
                    async with http.get(f"{self.base_url}/v1/tiers/stream") as stream:
                        stream.raise_for_status()
                        delay = self.backoff[0]
                        async for line in stream.content:
                            alive()  # records and heartbeats alike prove the server is there
                            if line.startswith(b"data: "):
                                apply(orjson.loads(line[6:]))
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    log.info(
                        "tier map stream from %s interrupted (%s); reconnecting in %.1fs", self.base_url, error, delay
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])


class KafkaTierTransport:
    """The compacted tier-map topic, from the beginning: loaded once consumed to the end offsets read at
    subscribe; then followed. aiokafka reconnects to a restarted broker by itself."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings  # tiergate.streams.kafka.KafkaSettings

    async def run(self, apply: Apply, loaded: Callable[[], None], alive: Callable[[], None]) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from .kafka import TIER_MAP, read_topics

        topic = self.settings.topic(TIER_MAP)
        partitions = [
            TopicPartition(topic, p) for p in range(read_topics(self.settings.topics_file)[TIER_MAP].partitions)
        ]
        consumer = AIOKafkaConsumer(
            **self.settings.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            pending = {tp for tp in partitions if ends[tp] > 0}
            if not pending:
                loaded()
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                alive()
                for messages in batch.values():
                    for message in messages:
                        apply(orjson.loads(message.value))
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                        if not pending:
                            loaded()
        finally:
            await consumer.stop()


# -- reporting --------------------------------------------------------------------------------------------


class Mode(enum.Enum):
    """What agent code may do with an action, by tier."""

    SUGGEST = "crawl"  # only suggest; a human accepts, edits or rejects
    ACT_INTERNAL = "walk"  # act, on internal staff only
    ACT_CUSTOMER = "run"  # act directly on customers


@dataclass(frozen=True)
class Receipt:
    """What an outcome reporter needs from the action it judges: its id, type and the tier it ran at.
    `str(receipt)` is the compact form to store with a ticket, a review or a payment."""

    action_id: str
    action_type: str
    tier: str

    PREFIX = "tg1."

    def __str__(self) -> str:
        body = orjson.dumps({"a": self.action_id, "t": self.action_type, "r": self.tier})
        return self.PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Receipt:
        if not isinstance(text, str) or not text.startswith(cls.PREFIX):
            raise ReceiptError(f"{text!r} is not a tiergate receipt (they start with {cls.PREFIX!r})")
        body = text[len(cls.PREFIX) :]
        try:
            data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return cls(str(data["a"]), str(data["t"]), str(data["r"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ReceiptError(f"damaged receipt {text!r}: {error}") from None


class EventSink(Protocol):
    """Sends validated events (JSON bytes); raises TransportError (retried) or EventRejected (not)."""

    async def send(self, events: list[bytes]) -> None: ...


@dataclass
class MemoryEventSink:
    sent: list[bytes] = field(default_factory=list)

    async def send(self, events: list[bytes]) -> None:
        self.sent.extend(events)


class HttpEventSink:
    """POSTs NDJSON batches to `tiergate serve` (with its bearer token, if any)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.base_url, self.token, self.timeout = base_url.rstrip("/"), token, timeout
        self._session: Any = None

    async def send(self, events: list[bytes]) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Content-Type": "application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._session.post(
                f"{self.base_url}/v1/events", data=b"\n".join(events), headers=headers
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise TransportError(f"POST {self.base_url}/v1/events failed: {error}") from error
        if response.status != 200:
            raise TransportError(f"POST /v1/events: {response.status} {body.get('error')} ({body.get('fix')})")
        for result in body["results"]:
            if result["result"] == "rejected":
                raise EventRejected(result.get("event_id"), result["reason"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class KafkaEventSink:
    """Produces to the events topic, keyed by action type, with an idempotent producer."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings  # tiergate.streams.kafka.KafkaSettings
        self._producer: Any = None

    async def send(self, events: list[bytes]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from .kafka import EVENTS

        try:
            if self._producer is None:
                self._producer = AIOKafkaProducer(**self.settings.client_kwargs(), enable_idempotence=True, acks="all")
                await self._producer.start()
            for raw in events:
                key = orjson.loads(raw)["action_type"].encode()
                await self._producer.send(self.settings.topic(EVENTS), raw, key=key)
            await self._producer.flush()
        except KafkaError as error:
            raise TransportError(f"producing to {self.settings.topic(EVENTS)} failed: {error}") from error

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class Reporter:
    """Records actions (returning receipts) and reports their outcomes. Event ids are stable (an outcome's
    is `<action_id>/<kind>`), so a retried send can never count twice."""

    def __init__(
        self,
        sink: EventSink,
        agent: str | None = None,
        clock: Callable[[], float] = time.time,
        attempts: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.sink, self.agent, self.clock = sink, agent, clock
        self.attempts, self.backoff = attempts, backoff

    async def record_action(
        self, action_type: str, tier: str, action_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> Receipt:
        action_id = action_id or uuid.uuid4().hex
        event = {
            "type": "action",
            "event_id": f"{action_id}/action",
            "ts": self._now(),
            "action_type": action_type,
            "action_id": action_id,
            "tier": tier,
            "agent": self.agent,
            "attributes": attributes or {},
        }
        await self._send(event)
        return Receipt(action_id, action_type, tier)

    async def report_outcome(
        self, receipt: Receipt | str, kind: str, result: str, edit: str | None = None, reason: str | None = None
    ) -> None:
        held = receipt if isinstance(receipt, Receipt) else Receipt.parse(receipt)
        event = {
            "type": "outcome",
            "event_id": f"{held.action_id}/{kind}",
            "ts": self._now(),
            "action_type": held.action_type,
            "action_id": held.action_id,
            "tier": held.tier,
            "kind": kind,
            "result": result,
            "edit": edit,
            "reason": reason,
        }
        await self._send(event)

    def _now(self) -> str:
        return format_ts(int(self.clock()))

    async def _send(self, event: dict[str, Any]) -> None:
        event = {k: v for k, v in event.items() if v is not None}
        try:
            event_from_dict(event)  # the server's own models: a bad event never leaves the agent
        except EventError as error:
            raise InvalidEvent(error.reason) from None
        raw = orjson.dumps(event)
        await _retry(lambda: self.sink.send([raw]), self.attempts, self.backoff)


async def _retry(send: Callable[[], Awaitable[None]], attempts: int, backoff: float) -> None:
    for attempt in range(1, attempts + 1):
        try:
            await send()
            return
        except TransportError:
            if attempt == attempts:
                raise
            await asyncio.sleep(backoff * 2 ** (attempt - 1))


# -- the gate ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What agent code may do now for one action, and the receipt of the action as recorded."""

    mode: Mode
    receipt: Receipt

    @property
    def tier(self) -> str:
        return self.mode.value


class Gate:
    """Asks the tier map, records the action at the tier it will actually run at, and says how to act."""

    def __init__(self, tiers: TierMapClient, reporter: Reporter) -> None:
        self.tiers, self.reporter = tiers, reporter

    async def decide(
        self, action_type: str, action_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> Decision:
        mode = Mode(self.tiers.tier_for(action_type))
        receipt = await self.reporter.record_action(action_type, mode.value, action_id, attributes)
        return Decision(mode, receipt)
