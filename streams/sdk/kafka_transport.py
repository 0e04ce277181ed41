"""Kafka: the compacted tier-map topic read from the beginning, and an event sink producing to the events
topic keyed by action type. Topic names are the runtime's constants (with the settings' prefix);
partitions come from the cluster's metadata, so nothing here reads a file. Needs aiokafka (the `kafka`
extra); without it the transport stops with an error that says so (shown by the client's `status()`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from tenacity import AsyncRetrying, retry_if_exception, wait_random_exponential

from tiergate.streams.kafka import EVENTS, TIER_MAP

from .delivery import Rejection
from .errors import TransportError
from .tier_map import TierFeed

if TYPE_CHECKING:
    from tiergate.streams.kafka import KafkaSettings

log = logging.getLogger("tiergate.sdk")

NEEDS_AIOKAFKA = "the Kafka transport needs aiokafka: pip install 'tiergate[kafka]'"


class KafkaTierTransport:
    """Loaded once the topic is consumed to the end offsets read at start; then followed. The source counts
    as heard from when records arrive and whenever a probe of the end offsets reaches the broker."""

    def __init__(
        self,
        settings: KafkaSettings,
        probe_interval: float = 5.0,
        assignment_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.settings, self.probe_interval = settings, probe_interval
        self.assignment_timeout, self.backoff = assignment_timeout, backoff

    async def run(self, feed: TierFeed) -> None:
        try:
            from aiokafka import AIOKafkaConsumer
            from aiokafka.errors import KafkaError
        except ImportError:
            raise TransportError(NEEDS_AIOKAFKA, retryable=False) from None

        def retryable(error: BaseException) -> bool:
            if isinstance(error, TransportError):
                return error.retryable
            return isinstance(error, KafkaError | OSError | TimeoutError)

        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            before_sleep=lambda state: self._note_failure(feed, state.outcome),
            reraise=True,
        )
        await retrying(self._session, AIOKafkaConsumer, feed)  # follows for good; returns only by raising

    def _note_failure(self, feed: TierFeed, outcome: Any) -> None:
        error = outcome.exception() if outcome is not None else None
        message = f"{self.settings.bootstrap}: {type(error).__name__}: {error}"
        log.info("tier map from Kafka: %s", message)
        feed.failed(message)

    async def _session(self, consumer_class: Any, feed: TierFeed) -> None:
        topic = self.settings.topic(TIER_MAP)
        consumer = consumer_class(
            topic,
            **self.settings.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await self._start(consumer, topic)
            partitions = await self._assignment(consumer, topic)
            ends = await consumer.end_offsets(partitions)
            await self._load(consumer, {tp for tp in partitions if ends[tp] > 0}, ends, feed)
            await self._follow(consumer, partitions, feed)
        finally:
            await consumer.stop()

    async def _start(self, consumer: Any, topic: str) -> None:
        """Start the consumer; it waits for the topic's metadata, which never comes for a missing topic."""
        try:
            await asyncio.wait_for(consumer.start(), self.assignment_timeout)
        except TimeoutError:
            raise TransportError(self._no_partitions(topic)) from None

    def _no_partitions(self, topic: str) -> str:
        return f"topic {topic} has no partitions: create it with `tiergate topics create`"

    async def _assignment(self, consumer: Any, topic: str) -> list[Any]:
        """Every partition of the topic, once the cluster's metadata has named them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.assignment_timeout
        while not consumer.assignment():
            if loop.time() >= deadline:
                raise TransportError(self._no_partitions(topic))
            await asyncio.sleep(0.05)
        return sorted(consumer.assignment())

    async def _load(self, consumer: Any, pending: set[Any], ends: dict[Any, int], feed: TierFeed) -> None:
        partitions, next_probe = list(ends), self._next_probe()
        while pending:
            self._apply(await consumer.getmany(timeout_ms=500), feed)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            next_probe = await self._probe_when_due(consumer, partitions, feed, next_probe)
        feed.loaded()

    async def _follow(self, consumer: Any, partitions: list[Any], feed: TierFeed) -> None:
        next_probe = self._next_probe()
        while True:
            self._apply(await consumer.getmany(timeout_ms=500), feed)
            next_probe = await self._probe_when_due(consumer, partitions, feed, next_probe)

    def _next_probe(self) -> float:
        return asyncio.get_running_loop().time() + self.probe_interval

    async def _probe_when_due(self, consumer: Any, partitions: list[Any], feed: TierFeed, due: float) -> float:
        if asyncio.get_running_loop().time() < due:
            return due
        await self._probe(consumer, partitions, feed)
        return self._next_probe()

    async def _probe(self, consumer: Any, partitions: list[Any], feed: TierFeed) -> None:
        """An empty poll proves nothing (aiokafka returns one while the broker is down): ask the broker."""
        from aiokafka.errors import KafkaError

        try:
            await asyncio.wait_for(consumer.end_offsets(partitions), self.probe_interval)
        except (KafkaError, TimeoutError) as error:
            feed.failed(f"{self.settings.bootstrap}: {type(error).__name__}: {error}")
        else:
            feed.heard()

    def _apply(self, batch: dict[Any, list[Any]], feed: TierFeed) -> None:
        for messages in batch.values():
            for message in messages:
                if message.value is None:  # a tombstone: the type was retired
                    feed.retire(message.key.decode(), None)
                    continue
                try:
                    feed.apply(orjson.loads(message.value))
                except orjson.JSONDecodeError:
                    log.warning("ignoring a tier-map record that is not JSON at offset %d", message.offset)


class KafkaEventSink:
    """Produces to the events topic, keyed by action type, with an idempotent producer. `async with`
    stops the producer."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: Any = None

    async def send(self, events: Sequence[bytes]) -> list[Rejection]:
        try:
            from aiokafka.errors import KafkaError
        except ImportError:
            raise TransportError(NEEDS_AIOKAFKA, retryable=False) from None
        topic = self.settings.topic(EVENTS)
        try:
            producer = await self._started()
            for raw in events:
                await producer.send(topic, raw, key=orjson.loads(raw)["action_type"].encode())
            await producer.flush()
        except KafkaError as error:
            raise TransportError(f"producing to {topic} failed: {type(error).__name__}: {error}") from error
        return []  # the worker judges the events; rejections land in its dead-letter topic

    async def _started(self) -> Any:
        from aiokafka import AIOKafkaProducer

        if self._producer is None:
            producer = AIOKafkaProducer(**self.settings.client_kwargs(), enable_idempotence=True, acks="all")
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> KafkaEventSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
