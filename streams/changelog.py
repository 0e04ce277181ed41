"""The worker's state changelog: each action type's saved state as a record of a compacted topic.

A key's record goes to the changelog partition numbered like the key's input partition, so a worker that
is given an input partition restores the state of its keys from one changelog partition. Records are JSON
(`Saved.to_dict()` plus the partition), keyed by the action type; the latest record of a key is its state.
The worker writes a key's record when it snapshots (every few seconds, on giving up a partition, on
stopping), not after every batch: a key's state can be large, and the input since the snapshot is folded
again on recovery, which the offset each record carries makes safe.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer import AIOKafkaProducer

from tiergate.models.state import StateSchemaError

from .kafka import KafkaSettings, state_changelog
from .keyed import Saved

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Restored:
    """What a changelog partition holds: the saved state of each of its keys, and the keys whose record
    could not be read (another state schema): their input must be folded again from the start."""

    keys: dict[bytes, Saved] = field(default_factory=dict)
    unreadable: list[bytes] = field(default_factory=list)
    first: int = 0  # the first offset of the input partition (where folding again from the start begins)


def encode_saved(saved: Saved, partition: int) -> bytes:
    return orjson.dumps(saved.to_dict() | {"partition": partition})


def decode_saved(raw: bytes) -> Saved:
    data: dict[str, Any] = orjson.loads(raw)
    return Saved.from_dict(data)


def read_back(latest: dict[bytes, bytes | None]) -> Restored:
    """The latest record of each key, decoded (a tombstone removes the key)."""
    restored = Restored()
    for key, raw in latest.items():
        if raw is None:
            continue
        try:
            restored.keys[key] = decode_saved(raw)
        except StateSchemaError as error:
            log.warning("changelog record of %r: %s; folding its input again from the start", key, error)
            restored.unreadable.append(key)
    return restored


class Changelog:
    """Reads partitions of the state changelog back and writes keys' records to it."""

    def __init__(self, kafka: KafkaSettings, producer: AIOKafkaProducer, app_id: str) -> None:
        self.kafka, self.producer = kafka, producer
        self.topic = kafka.topic(state_changelog(app_id))

    async def write(self, key: bytes, saved: Saved, partition: int) -> asyncio.Future[Any]:
        """Queue a key's record; the future resolves once the broker acknowledged it."""
        future: asyncio.Future[Any] = await self.producer.send(
            self.topic, encode_saved(saved, partition), key=key, partition=partition
        )
        return future

    async def restore(self, partitions: list[int], input_topic: str) -> dict[int, Restored]:
        """The latest record of every key in each of `partitions`, read from their start to the end offsets
        taken when the read begins (the previous owner wrote everything it will write before it gave the
        partitions up), and the first offset of each input partition. A client of its own: the worker's
        consumer has a fetch waiting on the broker, which a request on its connection would queue behind."""
        consumer = AIOKafkaConsumer(**self.kafka.client_kwargs(), enable_auto_commit=False)
        try:  # started inside: a start that fails still closes it (else 'Unclosed' at exit)
            await consumer.start()
            restored = await self._read(consumer, [TopicPartition(self.topic, p) for p in partitions])
            inputs = [TopicPartition(input_topic, p) for p in partitions]
            for tp, first in (await consumer.beginning_offsets(inputs)).items():
                restored[tp.partition].first = first
            return restored
        finally:
            await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[int, Restored]:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        latest: dict[int, dict[bytes, bytes | None]] = {tp.partition: {} for tp in tps}
        remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.key is not None and record.offset < ends[tp]:
                        latest[tp.partition][record.key] = record.value
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return {partition: read_back(records) for partition, records in latest.items()}
