"""Forwarding the ingress topics into the one input log.

Agents produce their actions to `tiergate.actions.v1`, reporters outcomes and checkpoints to
`tiergate.outcomes.v1`; Kafka's ACLs keep each principal to its topic (docs/kafka-security.md). Only
workers and operators may write `tiergate.events.v1`. The workers forward each ingress record to it, keyed
by the event's action type, if its type is one its ingress topic takes; anything else (an override slipped
into the actions topic, a tick, a record that is not an event) is set aside in the rejected-input topic with
the reason, and never reaches the log. The fold then judges the forwarded events as it judges any.

Nothing forwarded is lost or appended twice. Each ingress partition is forwarded by a producer whose
transactional id names the partition: a batch's appends, its set-aside records and the ingress offset after
them are committed in one transaction. A crash leaves the transaction open; the next owner's producer takes
the same transactional id, which aborts it and fences the old producer, and only then reads the committed
offset to forward from. The workers read the events topic `read_committed`: an aborted append never
counts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from tiergate.models.wire import ACTION_TYPE_PATTERN, MAX_EVENT_BYTES, format_ts, parse_ts

from .clock import Clock, SystemClock
from .codec import malformed
from .kafka import ACTIONS, DLQ, EVENTS, OUTCOMES, KafkaSettings

log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
ACTION_TYPE = re.compile(ACTION_TYPE_PATTERN)
TAKES = {ACTIONS: ("action",), OUTCOMES: ("outcome", "checkpoint")}  # ingress topic -> the event types it takes
WHO = {ACTIONS: "agents", OUTCOMES: "reporters"}


@dataclass(frozen=True, slots=True)
class Admitted:
    """An ingress record to append to the events topic under its action type."""

    action_type: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An ingress record that is not forwarded, and why."""

    reason: str


def admit(ingress: str, raw: bytes, now: int | None = None, max_skew: int = 300) -> Admitted | Refused:
    """Whether an ingress topic's record is forwarded: a JSON event of a type that topic takes, under a
    valid action type, within the size of an event, and (given the clock's `now`) not dated beyond `max_skew`
    ahead of it — one such event would close every window of its type up to its date, and all later input
    would be late. The check is the forwarder's, before the log: the fold, and so a replay, never depends on
    a clock. The fold validates the rest, as it does for any event of the log."""
    if len(raw) > MAX_EVENT_BYTES:
        return Refused(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit: split or trim it")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return Refused(malformed(error, raw))
    if not isinstance(event, dict):
        return Refused("an event is one JSON object ({...}): produce one event a message")
    kind = event.get("type")
    if kind not in TAKES[ingress]:
        return Refused(
            f"{ingress} takes {' and '.join(f'{t}s' for t in TAKES[ingress])} only ({WHO[ingress]}); "
            f"got type {kind!r}: {_belongs(kind)}"
        )
    action_type = event.get("action_type")
    if not isinstance(action_type, str) or ACTION_TYPE.fullmatch(action_type) is None:
        return Refused(f"action_type {action_type!r} is not an action type: it names one catalog action type")
    if now is not None:
        try:
            ts = parse_ts(event.get("ts"))
        except ValueError:
            return Admitted(action_type)  # the fold rejects it with the field and the fix
        if ts > now + max_skew:
            return Refused(
                f"future: ts {format_ts(ts)} is more than {max_skew} s ahead of the forwarder's clock "
                f"({format_ts(now)}): fix the producer's clock"
            )
    return Admitted(action_type)


def _belongs(kind: object) -> str:
    """Where an event of `kind` goes instead."""
    for ingress, kinds in TAKES.items():
        if kind in kinds:
            return f"{kind}s go to {ingress} ({WHO[ingress]})"
    return (
        f"overrides and policy events go to {EVENTS}, signed by an operator (tiergate override --kafka), and "
        "ticks are the workers'"
    )


class Ingress(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type information
    """The forwarding consumer's rebalance steps: wait for the batch in progress, then let partitions go."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.forwarder.give_up()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.forwarder.take(assigned)


class Forwarder:
    """Forwards the ingress partitions this worker is given, in the consumer group `<app_id>-forward`."""

    START_TIMEOUT = 30.0  # seconds a producer may take to fence its predecessor (its transaction completing)

    def __init__(
        self,
        kafka: KafkaSettings,
        app_id: str,
        clock: Clock | None = None,
        max_skew: int = 300,
        batch: int = 2000,
        within: float = 0.05,
    ) -> None:
        self.kafka, self.batch, self.within = kafka, batch, within
        self.clock, self.max_skew = clock or SystemClock(), max_skew
        self.group = kafka.topic(f"{app_id}-forward")
        self.topics = {kafka.topic(name): name for name in (ACTIONS, OUTCOMES)}
        self.consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            rebalance_timeout_ms=int((self.START_TIMEOUT + 30) * 1000),  # a revoke waits for a producer's start
        )
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}  # one per ingress partition forwarded
        self.assigned: set[TopicPartition] = set()
        self.retry_at: dict[TopicPartition, float] = {}  # not started again before (loop time)
        self.lock = asyncio.Lock()
        self.forwarded = self.refused = self.failures = 0

    async def run(self, stopping: asyncio.Event) -> None:
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=Ingress(self))
        try:
            while not stopping.is_set():
                await self._start_pending()
                try:
                    batch = await self.consumer.getmany(timeout_ms=int(self.within * 1000), max_records=self.batch)
                except KafkaError as error:
                    log.warning("fetching ingress failed (%r): trying again in 1 s", error)
                    await asyncio.sleep(1.0)
                    continue
                async with self.lock:
                    for tp, records in batch.items():
                        if tp in self.producers:
                            await self._forward(tp, records)
        finally:  # each client closed even if the worker cancels this while the broker is unreachable
            try:
                await self.give_up()
            finally:
                await self.consumer.stop()

    # -- assignment ----------------------------------------------------------------------------------

    def take(self, assigned: set[TopicPartition]) -> None:
        """Pause each new ingress partition until its producer has fenced any earlier one (in the loop:
        no heartbeats are sent while this callback runs)."""
        self.assigned = set(assigned)
        waiting = [tp for tp in assigned if tp not in self.producers]
        if waiting:
            self.consumer.pause(*waiting)

    async def give_up(self) -> None:
        """Wait for the forwarding in progress (its transaction commits), then close the producers, all at
        once (with the broker unreachable each waits out its timeout)."""
        async with self.lock:
            producers, self.producers = self.producers, {}
            self.assigned = set()
            await asyncio.gather(*(_stop(producer) for producer in producers.values()))

    async def _start_pending(self) -> None:
        """Start the producers of the partitions given but not forwarded yet, all at once (each waits on the
        broker to fence its predecessor)."""
        now = asyncio.get_running_loop().time()
        pending = [tp for tp in sorted(self.assigned - set(self.producers)) if self.retry_at.get(tp, 0.0) <= now]
        if not pending:
            return
        async with self.lock:
            pending = [tp for tp in pending if tp in self.assigned and tp in self.consumer.assignment()]
            started = await asyncio.gather(*(self._start(tp) for tp in pending))
            for tp, ok in zip(pending, started, strict=True):
                if not ok:
                    self.retry_at[tp] = now + 1.0

    async def _start(self, tp: TopicPartition) -> bool:
        """A producer with the partition's transactional id: starting it aborts any transaction an earlier
        owner left open and fences that owner; the committed offset, read only then, is stable."""
        producer = AIOKafkaProducer(
            **self.kafka.client_kwargs(),
            transactional_id=f"{self.group}-{tp.topic}-{tp.partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
        )
        try:
            await asyncio.wait_for(producer.start(), self.START_TIMEOUT)
            committed = await self.consumer.committed(tp)
            if committed is None:  # nothing forwarded yet (an offset, not seek_to_beginning: tp is paused)
                committed = (await self.consumer.beginning_offsets([tp]))[tp]
        except asyncio.CancelledError:  # the worker is stopping: close it, or it is left open at exit
            await _stop(producer)
            raise
        except Exception as error:  # a broker error or a timeout; anything else must not end the forwarding
            await _stop(producer)
            log.warning("forwarding %s: could not start (%r); trying again in 1 s", tp, error)
            return False
        self.consumer.seek(tp, committed)
        self.producers[tp] = producer
        self.consumer.resume(tp)
        return True

    # -- forwarding ----------------------------------------------------------------------------------

    async def _forward(self, tp: TopicPartition, records: list[Record]) -> None:
        """One transaction: each record appended to the events topic or set aside, and the offset after the
        last one committed for the group. On failure the transaction is aborted and the partition forwarded
        again from its committed offset."""
        producer = self.producers[tp]
        ingress = self.topics[tp.topic]
        try:
            async with producer.transaction():
                sent = [await self._one(producer, ingress, record) for record in records]
                await asyncio.gather(*sent)  # aiokafka commits a transaction whose batches failed: check first
                await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group)
        except Exception:  # KafkaError, and IllegalOperation (not a KafkaError) once a transaction went bad
            self.failures += 1
            log.exception("forwarding %s failed: forwarding it again from its committed offset in 1 s", tp)
            del self.producers[tp]
            self.retry_at[tp] = asyncio.get_running_loop().time() + 1.0
            await _stop(producer)
            if tp in self.consumer.assignment():
                self.consumer.pause(tp)

    async def _one(self, producer: AIOKafkaProducer, ingress: str, record: Record) -> Any:
        """Queue the record's forwarding (to the events topic, or set aside); returns the future of its delivery."""
        raw = record.value or b""
        origin = f"{record.topic}/{record.partition}:{record.offset}".encode()
        verdict = admit(ingress, raw, self.clock.now(), self.max_skew)
        if isinstance(verdict, Admitted):
            self.forwarded += 1
            headers = [("tiergate-origin", origin)]
            return await producer.send(self.kafka.topic(EVENTS), raw, key=verdict.action_type.encode(), headers=headers)
        self.refused += 1
        headers = [("tiergate-result", b"rejected"), ("tiergate-reason", verdict.reason.encode())]
        headers.append(("tiergate-origin", origin))
        if len(raw) > MAX_EVENT_BYTES:  # kept as far as it is an event's size: a huge record must not wedge forwarding
            headers.append(("tiergate-truncated", str(len(raw)).encode()))
            raw = raw[:MAX_EVENT_BYTES]
        return await producer.send(self.kafka.topic(DLQ), raw, key=record.key, headers=headers)


async def _stop(producer: Any) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except (KafkaError, TimeoutError) as error:
        log.warning("a forwarding producer did not stop cleanly (%r)", error)
