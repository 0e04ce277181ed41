"""The console of a Kafka deployment: what the workers wrote, read from their topics, read-only.

`TopicView` holds what the console shows, built from records in the order they are read: the compacted
tier map (the newest version per action type; a tombstone or a record without a tier is a retired type),
the promotion log (the decisions topic) and rejected input (the DLQ topic, its headers giving result,
reason and origin). It keeps the newest `KEEP` decisions and rejected inputs; the whole log stays in the
topics. Policy activations come from the policies topic (each activation's signed document: when, who,
why, which key) and from the decisions they made (`initial`, `policy` and `retire` decisions name their
activation; their moves are what it moved at once).

`KafkaSource` tails the topics from offset 0 with one consumer and tells the console's watchers when
something arrived. Nothing here writes to Kafka: on this deployment an operator acts with the signed CLI
commands the page shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tiergate.models.decisions import KINDS
from tiergate.models.wire import format_ts

from ..kafka import DECISIONS, DLQ, POLICIES, TIER_MAP, read_topics
from ..kafka_replay import dlq_row
from .views import ROWS, Filters, policy_yaml

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from ..kafka import KafkaSettings

log = logging.getLogger("tiergate.console")

KEEP = 10_000  # decisions and rejected inputs held for the page (the topics keep everything)
ACTIVATING = ("initial", "policy", "retire")


@dataclass
class TopicView:
    """The tier map, the newest decisions and rejected inputs, and the activations, as read so far."""

    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)  # action type -> newest tier record
    retired: set[str] = field(default_factory=set)
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEEP))
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # action type -> its newest decision
    rejected: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEEP))
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)  # in the order first read
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # activation id -> its policy document
    unreadable: int = 0  # records that are not what the workers write (counted, shown, never a crash)

    # -- reading records ---------------------------------------------------------------------------------

    def tier_record(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the compacted tier map: the newest version per key wins; no tier means retired."""
        if value is None:  # a tombstone: the type left the map
            if key is not None:
                name = key.decode("utf-8", "replace")
                self.tiers.pop(name, None)
                self.retired.add(name)
            return
        record = self._json(value)
        if record is None or not isinstance(record.get("action_type"), str):
            return
        name = record["action_type"]
        held = self.tiers.get(name)
        if held is not None and held.get("version", -1) > record.get("version", -1):
            return  # an older version read after a newer one (the map is at-least-once)
        if record.get("tier") is None:
            self.tiers.pop(name, None)
            self.retired.add(name)
        else:
            self.tiers[name] = record
            self.retired.discard(name)

    def decision(self, value: bytes | None) -> None:
        """A decision of the promotion log."""
        record = None if value is None else self._json(value)
        if record is None or not isinstance(record.get("action_type"), str):
            return
        self.decisions.append(record)
        self.latest[record["action_type"]] = record
        if record.get("kind") in ACTIVATING and record.get("activation_id") is not None:
            self._activation(record)

    def rejected_input(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.rejected.append(dlq_row(record))

    def policy_record(self, value: bytes | None) -> None:
        """An activation's document as `tiergate policy apply --kafka` records it (signed by a key)."""
        record = None if value is None else self._json(value)
        if record is None or not isinstance(record.get("activation_id"), str):
            return
        found = self._activation_of(record["activation_id"], record)
        ts = record.get("ts")
        found |= {
            "ts": format_ts(ts) if isinstance(ts, int) else None,
            "actor": record.get("actor"),
            "reason": record.get("reason"),
            "principal": record.get("key_id"),  # the operator key that signed it
            "source": "kafka",
        }
        if isinstance(record.get("policy"), dict):
            self.documents[record["activation_id"]] = record["policy"]

    def _activation_of(self, activation_id: str, first: dict[str, Any]) -> dict[str, Any]:
        return self.activations.setdefault(
            activation_id,
            {
                "activation_id": activation_id,
                "policy_version": first.get("policy_version"),
                "policy_sha256": first.get("policy_sha256"),
                "actor": first.get("actor"),
                "reason": None,
                "ts": None,
                "principal": None,
                "source": None,
                "types": [],
                "moved": [],
            },
        )

    def _activation(self, decision: dict[str, Any]) -> None:
        found = self._activation_of(str(decision["activation_id"]), decision)
        found["types"].append(decision["action_type"])
        if decision.get("kind") != "initial" and found["reason"] is None:
            found["reason"] = decision.get("reason")  # policy and retire decisions carry the activation's
        if decision.get("kind") != "initial" and decision.get("from_tier") != decision.get("to_tier"):
            start, end = decision.get("from_tier") or "·", decision.get("to_tier") or "retired"
            found["moved"].append(f"{decision['action_type']}: {start} → {end}")

    def _json(self, value: bytes) -> dict[str, Any] | None:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            self.unreadable += 1
            return None
        return record

    # -- what the page shows -----------------------------------------------------------------------------

    def catalog(self) -> set[str]:
        return set(self.tiers) | self.retired | set(self.latest)

    def everything(self, filters: Filters) -> dict[str, Any]:
        current = self.current()
        return {
            "tiers": self.tier_rows(),
            "log": self.log_rows(filters.action_type, filters.kind),
            "overrides": self.log_rows(None, "override"),
            "rejected": self.rejected_rows(filters),
            "policy_version": None if current is None else current["policy_version"],
            "policy_sha256": None if current is None else current["policy_sha256"],
            "catalog": sorted(self.catalog()),
            "live_types": sorted(self.tiers),
            "kinds": KINDS,
            "unreadable": self.unreadable,
        }

    def tier_rows(self) -> list[dict[str, Any]]:
        """Each type's tier record and its newest decision (the bars live in the workers' state; the newest
        decision's evidence is what was last judged)."""
        rows = []
        for name in sorted(set(self.tiers) | self.retired):
            record = self.tiers.get(name, {})
            rows.append(
                {
                    "action_type": name,
                    "tier": record.get("tier"),
                    "version": record.get("version"),
                    "since": record.get("since"),
                    "decision_id": record.get("decision_id"),
                    "policy_version": record.get("policy_version"),
                    "retired": name in self.retired,
                    "latest": self.latest.get(name),
                }
            )
        return rows

    def log_rows(self, action_type: str | None, kind: str | None) -> list[dict[str, Any]]:
        """The newest decisions (by their date, then as read), optionally of one type and one kind."""
        found = [
            (d.get("at") or "", i, d)
            for i, d in enumerate(self.decisions)
            if (action_type is None or d["action_type"] == action_type) and (kind is None or d.get("kind") == kind)
        ]
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [d for _, _, d in found[:ROWS]]

    def rejected_rows(self, filters: Filters) -> list[dict[str, Any]]:
        """The newest rejected inputs, filtered like the embedded store's (reason substring, result, type)."""
        found = []
        for row in reversed(self.rejected):
            if filters.reason is not None and filters.reason.lower() not in row["reason"].lower():
                continue
            if filters.result is not None and row["result"] != filters.result:
                continue
            if filters.rejected_type is not None and row["action_type"] != filters.rejected_type:
                continue
            found.append(row)
            if len(found) == ROWS:
                break
        return found

    def current(self) -> dict[str, Any] | None:
        """The newest activation the workers applied (its decisions name it), by the time it was produced,
        then by the order read; one only on the policies topic (refused by the workers, or not folded yet) is
        listed but not in force."""
        applied = [(found.get("ts") or "", order, found) for order, found in enumerate(self.activations.values())]
        newest = max((entry for entry in applied if entry[2]["types"]), default=None, key=lambda e: e[:2])
        return None if newest is None else newest[2]

    def policy(self) -> dict[str, Any]:
        current = self.current()
        document = None if current is None else self.documents.get(current["activation_id"])
        return {
            "current": current,
            "document": "" if document is None else policy_yaml(document),
            "activations": list(reversed(self.activations.values())),
        }


class KafkaSource:
    """The console's source on a Kafka deployment: the topics, tailed into a `TopicView`."""

    writable = False

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.view = TopicView()
        self._watchers: set[asyncio.Queue[int | None]] = set()
        self._changes = 0  # records (or the catching up) the watchers have been told of
        self.caught_up = asyncio.Event()  # set once the records present at start are read
        self._task: asyncio.Task[None] | None = None
        self.problem: str | None = None  # the last read's error while it lasts (the page shows it)
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def watchers(self) -> set[asyncio.Queue[int | None]]:
        return self._watchers

    @property
    def changes(self) -> int:
        return self._changes

    def catalog(self) -> set[str]:
        return self.view.catalog()

    async def everything(self, filters: Filters) -> dict[str, Any]:
        return self.view.everything(filters) | {"problem": self.problem, "reading": not self.caught_up.is_set()}

    async def policy(self) -> dict[str, Any]:
        return self.view.policy()

    async def start(self) -> None:
        """Assign every partition of the topics (their counts from the topic definition, as `read_topic`
        takes them: a consumer without a subscription knows no topic's partitions) from offset 0, and start
        tailing them."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(**self.settings.client_kwargs(), enable_auto_commit=False)
        await consumer.start()
        try:
            known = await consumer.topics()
            counts = read_topics(self.settings.topics_file)  # as read_topic does: the definition's partitions
            partitions = []
            for name in (TIER_MAP, DECISIONS, DLQ, POLICIES):
                topic = self.settings.topic(name)
                if topic not in known and name == POLICIES:
                    continue  # a deployment from before activations were recorded there: decisions suffice
                if topic not in known:
                    raise ValueError(f"topic {topic} does not exist: run `tiergate topics create`")
                partitions += [TopicPartition(topic, p) for p in range(counts[name].partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(consumer, {tp: end for tp, end in ends.items() if end > 0}))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        for watcher in self._watchers:
            watcher.put_nowait(None)

    async def _tail(self, consumer: AIOKafkaConsumer, behind: dict[Any, int]) -> None:
        if not behind:
            self.caught_up.set()
        while True:
            batch = await self._next(consumer)
            read = sum(self._read(tp.topic, records) for tp, records in batch.items())
            for tp, records in batch.items():
                if tp in behind and records and records[-1].offset >= behind[tp] - 1:
                    del behind[tp]
            arrived = not behind and not self.caught_up.is_set()
            if arrived:
                self.caught_up.set()
            if read or arrived:
                self._changes += max(read, 1)
                for watcher in self._watchers:
                    watcher.put_nowait(read)

    async def _next(self, consumer: AIOKafkaConsumer) -> dict[Any, list[ConsumerRecord[bytes, bytes]]]:
        """The next records, or none while the cluster cannot be read (the problem is kept and shown)."""
        from aiokafka.errors import KafkaError

        try:
            batch: dict[Any, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
                timeout_ms=1000, max_records=10_000
            )
        except KafkaError as error:
            self.problem = f"cannot read the topics ({type(error).__name__}: {error}); retrying"
            log.warning("%s", self.problem)
            await asyncio.sleep(1.0)
            return {}
        self.problem = None
        return batch

    def _read(self, topic: str, records: Iterable[ConsumerRecord[bytes, bytes]]) -> int:
        count = 0
        for record in records:
            count += 1
            if topic == self.settings.topic(TIER_MAP):
                self.view.tier_record(record.key, record.value)
            elif topic == self.settings.topic(DECISIONS):
                self.view.decision(record.value)
            elif topic == self.settings.topic(POLICIES):
                self.view.policy_record(record.value)
            else:
                self.view.rejected_input(record)
        return count
