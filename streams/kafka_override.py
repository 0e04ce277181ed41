"""`tiergate override --kafka`: an operator's override, signed with their key, produced to the input topic
under its action type; the answer is what the workers' fold made of it.

On Kafka the state lives in the workers, so there is no dry run to ask first. The fold is still the judge:
the override's decision appears on the decisions topic (it names the override's `event_id`), or the
rejected-input topic keeps the override with the fold's reason (an override that cannot apply, an
unsigned or untrusted one). Both topics are read from their ends as they were before the override was
produced, so nothing older is mistaken for the answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .kafka import DECISIONS, DLQ, EVENTS, KafkaSettings, read_topics
from .kafka_replay import dlq_row


@dataclass(frozen=True, slots=True)
class Answer:
    """The fold's answer to one override: its decision, or the reason it was refused (None: no answer in time)."""

    decision: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None


async def send_override(settings: KafkaSettings, signed: dict[str, Any], wait: float) -> Answer:
    """Produce the signed override and wait up to `wait` seconds for the workers' answer."""
    consumer = AIOKafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = [
            TopicPartition(settings.topic(name), p)
            for name in (DECISIONS, DLQ)
            for p in range(read_topics(settings.topics_file)[name].partitions)
        ]
        consumer.assign(partitions)
        for partition, end in (await consumer.end_offsets(partitions)).items():
            consumer.seek(partition, end)
        await _produce(settings, signed)
        return await asyncio.wait_for(_answer(consumer, settings, signed["event_id"]), wait)
    except TimeoutError:
        return Answer()
    finally:
        await consumer.stop()


async def _produce(settings: KafkaSettings, signed: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**settings.client_kwargs(), acks="all", enable_idempotence=True)
    try:
        await producer.start()
        await producer.send_and_wait(settings.topic(EVENTS), orjson.dumps(signed), key=signed["action_type"].encode())
    finally:
        await producer.stop()


async def _answer(consumer: AIOKafkaConsumer, settings: KafkaSettings, event_id: str) -> Answer:
    dlq = settings.topic(DLQ)
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        for partition, records in batch.items():
            for record in records:
                if record.value is None:
                    continue
                if partition.topic == dlq:
                    row = dlq_row(record)
                    if _event_id(row["event"]) == event_id:
                        return Answer(refused=row)
                else:
                    decision = orjson.loads(record.value)
                    if decision.get("event_id") == event_id:
                        return Answer(decision=decision)


def _event_id(raw: str) -> Any:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data.get("event_id") if isinstance(data, dict) else None
