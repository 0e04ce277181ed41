"""`tiergate replay --from-kafka [--verify]`: fold the input topic from offset 0 to its end, and compare
the result with what the workers recorded in the decisions topic and the compacted tier map.

Logs from different runtimes are compared per key, and within a key byte for byte (DESIGN.md §6.7). The
decisions topic is at-least-once: a decision id seen twice must carry the same bytes both times, and
counts once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tiergate.models.decisions import Decision
from tiergate.models.policy import Policy

from .kafka import DECISIONS, EVENTS, TIER_MAP, KafkaSettings, read_topics
from .pipeline import Input, Rejected, key_matches, named_action_type
from .replay import Replay, replay_inputs


async def read_topic(settings: KafkaSettings, name: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a defined topic from offset 0 to the end offsets read at the start, partition by
    partition (the partition count comes from the topic definition)."""
    topic = settings.topic(name)
    count = read_topics(settings.topics_file)[name].partitions
    consumer = AIOKafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            raise ValueError(f"topic {topic} does not exist: run `tiergate topics create`")
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, messages in batch.items():
                records[tp].extend(m for m in messages if m.offset < ends[tp])
                if messages and messages[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return [record for tp in partitions for record in records[tp]]
    finally:
        await consumer.stop()


def dlq_row(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A DLQ record as a rejected-input row: its headers give the result, reason and origin."""
    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
    raw: bytes = record.value or b""
    return {
        "id": f"{record.partition}:{record.offset}",
        "origin": headers.get("tiergate-origin", ""),
        "result": headers.get("tiergate-result", ""),
        "reason": headers.get("tiergate-reason", ""),
        "action_type": named_action_type(raw),
        "event": raw.decode("utf-8", "replace"),
    }


@dataclass
class KafkaReplay:
    """The reference fold of the input topic, per key."""

    replay: Replay
    decisions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    rejected: list[Rejected] = field(default_factory=list)

    def lines(self) -> Iterator[str]:
        for name in sorted(self.decisions):
            yield from self.decisions[name]


async def replay_topic(settings: KafkaSettings, policy: Policy | None) -> KafkaReplay:
    records = await read_topic(settings, EVENTS)
    out: dict[str, list[str]] = defaultdict(list)
    rejected: list[Rejected] = []

    def decided(decision: Decision) -> None:
        out[decision.action_type].append(decision.to_json())

    inputs = (
        Input(f"{record.topic}/{record.partition}", record.offset, record.value or b"", record.key)
        for record in records
    )
    replay = replay_inputs(inputs, policy, decided, rejected.append, admit=key_matches)
    return KafkaReplay(replay, out, rejected)


@dataclass(frozen=True, slots=True)
class Difference:
    action_type: str
    problem: str


async def verify(settings: KafkaSettings, reference: KafkaReplay) -> list[Difference]:
    """Every difference between the reference fold and the decisions topic and tier map as recorded."""
    recorded: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, str] = {}
    problems: list[Difference] = []
    for record in await read_topic(settings, DECISIONS):
        line = (record.value or b"").decode()
        decision = orjson.loads(line)
        earlier = seen.get(decision["decision_id"])
        if earlier is None:
            seen[decision["decision_id"]] = line
            recorded[decision["action_type"]].append(line)
        elif earlier != line:
            problems.append(
                Difference(decision["action_type"], f"{decision['decision_id']} recorded twice, differently")
            )
    for name in sorted(set(reference.decisions) | set(recorded)):
        want, got = reference.decisions.get(name, []), recorded.get(name, [])
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
            problems.append(
                Difference(
                    name, f"decision log differs from decision {at}: reference has {len(want)}, topic has {len(got)}"
                )
            )
    latest: dict[str, dict[str, object]] = {}
    for record in await read_topic(settings, TIER_MAP):
        tier = orjson.loads(record.value or b"{}")
        held = latest.get(tier["action_type"])
        if held is None or int(tier["version"]) > int(held["version"]):  # type: ignore[call-overload]
            latest[tier["action_type"]] = tier
    for expected in reference.replay.tier_lines():
        want_record = orjson.loads(expected)
        got_record = latest.get(want_record["action_type"])
        if got_record != want_record:
            problems.append(
                Difference(want_record["action_type"], f"tier map holds {got_record}, reference {want_record}")
            )
    return problems
