"""`tiergate replay --from-kafka [--verify]`: fold the input topic from offset 0 to its end, and compare
the result with what the workers recorded: the decisions topic, the compacted tier map, and the state
the workers saved in their changelog.

Logs from different runtimes are compared per key, and within a key byte for byte. The
decisions topic is at-least-once: a decision id seen twice must carry the same bytes both times, and
counts once. Decisions alone can agree while input went missing (a lost outcome need not change a
decision), so each key's saved state is checked too: its input offset, the number of input events it
folded (each exactly once), and its windows and remembered ids against a re-fold of the topic up to
that offset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tiergate.models.decisions import Decision
from tiergate.models.policy import Policy
from tiergate.models.state import KeyState

from .kafka import (
    DECISIONS,
    EVENTS,
    STATE_CHANGELOG,
    TIER_MAP,
    WORKER_GROUP,
    KafkaSettings,
    home_partition,
    read_topics,
    state_changelog,
)
from .keyed import KeyedFold, Outputs
from .pipeline import Input, Rejected, named_action_type
from .replay import Replay, replay_inputs
from .signing import kafka_admission, signing_key


async def read_topic(
    settings: KafkaSettings, name: str, named: str | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a defined topic from offset 0 to the end offsets read at the start, partition by
    partition (the partition count comes from the topic definition; `named`: the topic under another name,
    such as the state changelog of a group of its own)."""
    topic = settings.topic(named or name)
    count = read_topics(settings.topics_file)[name].partitions
    consumer = AIOKafkaConsumer(
        **settings.client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # as the workers read: an aborted transaction's records never happened
    )
    try:
        await consumer.start()
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
            for tp in list(remaining):  # the position, not the last record: a transaction marker has no record
                if await consumer.position(tp) >= ends[tp]:
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
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)  # the input, as read
    settings: KafkaSettings | None = None

    def lines(self) -> Iterator[str]:
        for name in sorted(self.decisions):
            yield from self.decisions[name]


async def replay_topic(settings: KafkaSettings, policy: Policy | None) -> KafkaReplay:
    return replay_records(settings, policy, await read_topic(settings, EVENTS))


def replay_records(
    settings: KafkaSettings, policy: Policy | None, records: list[ConsumerRecord[bytes, bytes]]
) -> KafkaReplay:
    """The reference fold, with the worker's admission: events under their own key, operator events signed
    by a trusted key for this deployment (the genesis keys of the settings)."""
    out: dict[str, list[str]] = defaultdict(list)
    rejected: list[Rejected] = []

    def decided(decision: Decision) -> None:
        out[decision.action_type].append(decision.to_json())

    inputs = (
        Input(f"{record.topic}/{record.partition}", record.offset, record.value or b"", record.key)
        for record in records
    )
    admit = kafka_admission(settings.deployment, settings.genesis_keys)
    replay = replay_inputs(inputs, policy, decided, rejected.append, admit=admit, principal=signing_key)
    return KafkaReplay(replay, out, rejected, records, settings)


@dataclass(frozen=True, slots=True)
class Difference:
    action_type: str
    problem: str
    pending: bool = False  # not a difference: input after the key's last snapshot, which no saved state covers yet


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
        if record.value is None:  # a tombstone: the type was retired and left the map
            latest.pop((record.key or b"").decode(), None)
            continue
        tier = orjson.loads(record.value)
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


async def saved_state(settings: KafkaSettings, app_id: str = WORKER_GROUP) -> dict[bytes, dict[str, Any]]:
    """The latest record per key of the state changelog of the workers' group `app_id` (JSON,
    streams/changelog.py)."""
    latest: dict[bytes, dict[str, Any]] = {}
    for record in await read_topic(settings, STATE_CHANGELOG, state_changelog(app_id)):
        if record.key is None:
            continue
        if record.value is None:
            latest.pop(record.key, None)
        else:
            latest[record.key] = orjson.loads(record.value)
    return latest


def refold_key(fold: KeyedFold, key: bytes, records: Iterable[ConsumerRecord[bytes, bytes]]) -> KeyState | None:
    """A key's state from its input records exactly as the worker folds them (its keyed fold, admission
    included), from the start."""
    name = key.decode("utf-8", errors="replace")
    saved, _ = fold.start(name)
    inputs = [Input(f"{r.topic}/{r.partition}", r.offset, r.value or b"", r.key) for r in records]
    return fold.fold(name, saved, inputs, Outputs()).state


def check_state(
    reference: KafkaReplay, saved: dict[bytes, dict[str, Any]], fold: KeyedFold, partitions: int
) -> list[Difference]:
    """Every key whose saved state is not exactly the fold of its input: events lost or folded twice
    (the count of events folded against the topic up to the saved offset), windows or remembered ids
    that differ from a re-fold up to that offset; and, marked `pending`, the keys with input after their
    last snapshot (on a live deployment, what the workers folded since: the next snapshot covers it)."""
    inputs: dict[bytes, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for record in reference.records:
        if record.key and record.partition == home_partition(record.key, partitions):
            inputs[record.key].append(record)
    problems = []
    for key in sorted(set(inputs) | set(saved)):
        name = key.decode("utf-8", errors="replace")
        problem = _state_problem(inputs.get(key, []), saved.get(key), key, fold)
        if problem:
            problems.append(Difference(name, problem))
            continue
        pending = _pending(inputs.get(key, []), saved.get(key))
        if pending:
            problems.append(Difference(name, pending, pending=True))
    return problems


def _state_problem(
    records: list[ConsumerRecord[bytes, bytes]], saved: dict[str, Any] | None, key: bytes, fold: KeyedFold
) -> str | None:
    if saved is None:
        return f"no saved state, the topic has {len(records)} events for it"
    covered = [r for r in records if r.offset <= saved["offset"]]
    if saved.get("folded") != len(covered):
        lost_or_twice = "lost" if saved.get("folded", 0) < len(covered) else "folded twice"
        return (
            f"saved state at input offset {saved['offset']} folded {saved.get('folded')} events, "
            f"the topic has {len(covered)} up to it: events {lost_or_twice}"
        )
    refolded = refold_key(fold, key, covered)
    if (None if refolded is None else refolded.to_dict()) != saved["state"]:
        return (
            f"saved state at input offset {saved['offset']} differs from a re-fold of the topic up to it "
            f"({_first_field_differing(refolded, saved['state'])})"
        )
    return None


def _pending(records: list[ConsumerRecord[bytes, bytes]], saved: dict[str, Any] | None) -> str | None:
    """Input after a key's last snapshot: not checked yet (the next snapshot covers it), not a difference."""
    if saved is None:
        return None
    after = sum(1 for r in records if r.offset > saved["offset"])
    snapshot = f"the last snapshot (input offset {saved['offset']})"
    return f"{after} events after {snapshot} are not checked: no saved state covers them yet" if after else None


def _first_field_differing(refolded: KeyState | None, saved: dict[str, Any] | None) -> str:
    want, got = ({} if refolded is None else refolded.to_dict()), saved or {}
    fields = [name for name in sorted(set(want) | set(got)) if want.get(name) != got.get(name)]
    return "fields " + ", ".join(fields) if fields else "state present on one side only"


async def verify_state(settings: KafkaSettings, reference: KafkaReplay, app_id: str = WORKER_GROUP) -> list[Difference]:
    """Every key whose state in the changelog of the workers' group `app_id` is not the fold of its input
    (see `check_state`)."""
    partitions = read_topics(settings.topics_file)[EVENTS].partitions
    fold = KeyedFold(reference.replay.policy, kafka_admission(settings.deployment, settings.genesis_keys), signing_key)
    return check_state(reference, await saved_state(settings, app_id), fold, partitions)
