"""`tiergate worker`: the fold on Apache Kafka, one aiokafka consumer group member per process.

- The worker is a member of the consumer group `tiergate-worker` on `tiergate.events.v1` (keyed by action
  type), through aiokafka's public API: `subscribe` with a rebalance listener, `getmany`, `seek`,
  `pause`/`resume`, `commit`. Each `getmany` batch is folded partition by partition, key by key, through
  the one ingest pipeline with the Kafka admission (streams/keyed.py, streams/signing.py).
- Each input partition is folded in offset order from its resume point; records below it are redeliveries.
  The input is read `read_committed`: an aborted transaction's records never count, and the offsets the
  client steps over (transaction markers) hold no record.
- The worker also forwards the ingress topics (agents' actions, reporters' outcomes) into the input topic,
  exactly once, in its own consumer group (streams/forwarder.py).
- Each key's state (the core's `KeyState`, the offset of the last input record applied to it, the number
  of records folded) lives in memory while the worker owns the key's partition, and in the state changelog
  (streams/changelog.py): a *snapshot* writes the record of every key folded since the last one, every
  `snapshot_interval` seconds, when partitions are given up and when the worker stops.
- Outputs before state before offsets: a snapshot first waits until the decisions, tier records and
  set-aside input of everything it covers are acknowledged, then writes the keys' records and waits for
  them, and only then commits each partition's next offset to the group. The committed offset is where a
  partition resumes; the input between it and a crash is folded again, and a key skips the records at or
  below the offset its record carries (the changelog write and the commit are not atomic).
- Before a snapshot the worker proves it still belongs to the group (a commit of what it committed last;
  the broker refuses commits from an expired member), so a worker that stalled past its session does not
  write the state of partitions that another worker now folds.
- A rebalance waits for the batch in progress (a lock), snapshots and commits, then gives the partitions
  up; a partition it is given is paused until its keys' state is read back from the changelog.
- A failure while folding or delivering is supervised: the partitions it touched forget their unsnapshotted
  state and resume from their last snapshot after a backoff; the others go on.
- Each worker ticks the keys of the partitions it owns, by the one tick rule both live runtimes share
  (models.ticks.due_ticks), on an injected clock (unless started with `--no-ticks`, to backfill a history
  through the topic). Tick ids name the window boundary: a tick sent twice around a rebalance is a duplicate.
- Decisions go to `tiergate.decisions.v1`, tier records to the compacted `tiergate.tier-map.v1` (a
  tombstone for a retired type), bad and late input to `tiergate.events.v1.dlq` with reason and origin in
  headers. `/metrics` and `/healthz` are served by aiohttp on loopback by default.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.fold import LATE, REJECTED
from tiergate.models.policy import Policy
from tiergate.models.state import State
from tiergate.models.ticks import due_ticks
from tiergate.models.wire import ACTION_TYPE_PATTERN

from .backlog import Backlog, TickHold
from .changelog import Changelog, Restored
from .clock import Clock, SystemClock
from .codec import encode
from .forwarder import Forwarder
from .kafka import DECISIONS, DLQ, EVENTS, TIER_MAP, WORKER_GROUP, BrokerLog, KafkaSettings, home_partition, read_topics
from .keyed import KeyedFold, Outputs, Saved
from .metrics import TiergateCollector, WorkerCollector, registry_with
from .pipeline import Counting, Input, Rejected, Tallies
from .signing import kafka_admission, signing_key

log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"  # an input record: topic, partition, offset, key, value
ACTION_TYPE = re.compile(ACTION_TYPE_PATTERN.encode())


class WorkerSettings(BaseSettings):
    """`tiergate worker`: TIERGATE_WORKER_* variables (or flags)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_WORKER_", extra="ignore")

    policy: Path | None = Field(None, description="only for a log whose events begin before its first activation")
    app_id: str = Field(
        WORKER_GROUP, description="the consumer group (after the topic prefix) and its <app_id>-state-changelog"
    )
    web_host: str = Field("127.0.0.1", description="/metrics and /healthz bind here (loopback by default)")
    web_port: int = 6066
    tick_interval: float = Field(1.0, gt=0, description="seconds between clock checks")
    ticks: bool = Field(True, description="tick on the clock; off while a history is backfilled")
    tick_hold: float = Field(
        300.0,
        ge=0,
        description="seconds due ticks wait at most for the forwarding of ingress input sent before them "
        "(0: they never wait)",
    )
    late_warning: float = Field(0.2, ge=0, le=1, description="warn when this share of recent input is late")
    stop_timeout: float = Field(20.0, gt=0, description="seconds a stop may take before the worker exits anyway")
    batch: int = Field(5000, gt=0, description="input records fetched and folded per batch at most")
    batch_within: float = Field(0.2, gt=0, description="seconds to wait for input when none is fetched yet")
    forward: bool = Field(True, description="forward the ingress topics (actions, outcomes) into the events topic")
    max_skew: int = Field(
        300, ge=0, description="seconds an ingress event's ts may be ahead of the clock (else future)"
    )
    snapshot_interval: float = Field(
        5.0, gt=0, description="seconds between snapshots of the keys' state (and offset commits)"
    )
    session_timeout: float = Field(6.0, gt=0, description="seconds without a heartbeat before the group drops a worker")
    stale_after: int = Field(6 * 3600, gt=0, description="seconds without a window close before evidence is stale")


def by_key(records: Sequence[Record]) -> dict[bytes, list[Record]]:
    """A partition's records per message key, each in log order (keys in the order they first appear)."""
    grouped: dict[bytes, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.key or b""].append(record)
    return grouped


def continuing(records: Sequence[Record], start: int) -> tuple[list[Record], int]:
    """The records that continue a partition's input from offset `start`, in offset order, and how many
    offsets they step over. Offsets below `start` are redeliveries of what was folded. The client hands a
    partition's records over in offset order from where it was sought to; the offsets it steps over hold
    no record of the input (a transaction's markers, an aborted transaction's records)."""
    run: list[Record] = []
    expected = start
    for record in records:
        if record.offset >= expected:
            run.append(record)
            expected = record.offset + 1
    return run, expected - start - len(run)


def policy_in_force(state: State, fallback: Policy | None) -> tuple[str, str]:
    """(version, sha256) of the policy in force among the keys `state` holds: the newest activation's (the ids
    tiergate makes begin with their time, so they sort by it; an id an operator chose sorts where it sorts),
    else the `--policy` a log from before its first activation folds under, else none."""
    activated = [key for key in state.keys.values() if key.activation_id is not None]
    if activated:
        newest = max(activated, key=lambda key: key.activation_id or "")
        return newest.policy_version, newest.policy_sha256
    return ("", "") if fallback is None else (fallback.version, fallback.sha256)


def warn_without_genesis_keys(kafka: KafkaSettings) -> None:
    """A worker without genesis keys refuses every type's first activation (and so everything after it): say
    so at start, rather than only in the DLQ's reasons."""
    if kafka.genesis_keys is None:
        log.warning(
            "TIERGATE_KAFKA_GENESIS_KEYS is not set: policy events will be refused (to the DLQ) until it names the "
            "deployment's genesis keys file, which a type's first activation must be signed by"
        )


@dataclass(slots=True)
class Partition:
    """An input partition this worker folds: its keys' state, and where its input stands."""

    number: int
    keys: dict[bytes, Saved]
    next: int  # the next input offset to fold
    committed: int  # committed to the group: the input before it is covered by the changelog
    dirty: set[bytes] = field(default_factory=set)  # keys folded since their last snapshot


class LateShare:
    """The share of the worker's recent input that was late, and a warning when it crosses a threshold:
    history produced to the topic after the workers' ticks passed it turns late (`--no-ticks` backfills)."""

    WINDOW = 1000  # events, about: whole batches are added and dropped
    LEAST = 200  # events seen before a share means anything

    def __init__(self, threshold: float) -> None:
        self.threshold, self.warned = threshold, False
        self.batches: deque[tuple[int, int]] = deque()
        self.late = self.total = 0

    @property
    def share(self) -> float:
        return self.late / self.total if self.total else 0.0

    def add(self, late: int, total: int) -> None:
        self.batches.append((late, total))
        self.late, self.total = self.late + late, self.total + total
        while self.batches and self.total - self.batches[0][1] >= self.WINDOW:
            gone_late, gone_total = self.batches.popleft()
            self.late, self.total = self.late - gone_late, self.total - gone_total
        self._report()

    def _report(self) -> None:
        """Log once when the share crosses the threshold, and once when it is back under half of it."""
        if not self.warned and self.total >= self.LEAST and self.share >= self.threshold > 0:
            self.warned = True
            log.warning(
                "%.0f%% of the last %d input events were late (their windows had closed): was a history produced "
                "after the workers' ticks passed it? Backfill with the workers' ticks off (tiergate worker "
                "--no-ticks), then start them with ticks.",
                100 * self.share,
                self.total,
            )
        elif self.warned and self.share < self.threshold / 2:
            self.warned = False
            log.info("late input is back to %.0f%% of the last %d events", 100 * self.share, self.total)


class Backoff:
    """Seconds to wait before a failed partition is folded again: 1 s, doubling to 30 s, reset on success."""

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0

    def failed(self) -> float:
        delay = min(30.0, 2.0**self.failures)
        self.failures += 1
        self.until = time.monotonic() + delay
        return delay

    def ready(self) -> bool:
        return time.monotonic() >= self.until


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type information
    """aiokafka calls these while the group rebalances; the consumer fetches nothing meanwhile."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.give_up()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.take(assigned)


class Worker:
    """One worker process: the input consumer, the producer of outputs and snapshots, the clock, the web port."""

    RESEND_TICK = 30.0  # seconds before a tick that was sent but is not folded yet is sent again

    def __init__(
        self,
        policy: Policy | None,
        settings: WorkerSettings,
        kafka: KafkaSettings,
        clock: Clock | None = None,
        keyed: KeyedFold | None = None,
    ) -> None:
        self.policy, self.settings, self.kafka = policy, settings, kafka
        self.clock = clock or SystemClock()
        self.topic = kafka.topic(EVENTS)
        self.partitions = read_topics(kafka.topics_file)[EVENTS].partitions
        self.keyed = keyed or KeyedFold(policy, kafka_admission(kafka.deployment, kafka.genesis_keys), signing_key)
        self.tallies = Tallies.empty()
        self.owned: dict[int, Partition] = {}  # input partitions folded here, their state read back
        self.assigned: set[int] = set()  # input partitions the group gave this worker
        self.failed: dict[int, Backoff] = defaultdict(Backoff)
        self.sending: list[asyncio.Future[Any]] = []  # outputs not yet known to be delivered
        self.lock = asyncio.Lock()  # one batch, snapshot or rebalance step at a time
        self.stopping = asyncio.Event()
        self.late = LateShare(settings.late_warning)
        self.broker_log = BrokerLog()
        self.batches = self.batched = self.rebalances = self.gaps = self.failures = 0
        self.snapshot_at = time.monotonic() + settings.snapshot_interval
        self.ticked: dict[str, tuple[str, float]] = {}  # action type -> (id, when) of the last tick sent
        self.consumer = AIOKafkaConsumer(**self._consumer_settings())
        self.producer = AIOKafkaProducer(
            **kafka.client_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=16 * 1024 * 1024,  # a key's state record (the changelog allows 16 MiB)
            compression_type="gzip",  # a state's remembered ids compress well; no extra library needed
        )
        self.changelog = Changelog(kafka, self.producer, settings.app_id)
        self.forwarder = Forwarder(kafka, settings.app_id, self.clock, settings.max_skew) if settings.forward else None
        self.backlog = Backlog(kafka, settings.app_id)  # the ingress input not forwarded yet, whoever forwards it
        self.hold = TickHold(self.backlog, settings.tick_hold) if settings.tick_hold > 0 else None

    def _consumer_settings(self) -> dict[str, Any]:
        session = int(self.settings.session_timeout * 1000)
        return self.kafka.client_kwargs() | {
            "group_id": self.kafka.topic(self.settings.app_id),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session,
            "heartbeat_interval_ms": max(100, session // 5),
            "rebalance_timeout_ms": 60_000,  # a rebalance waits this long for a member's snapshot
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            "isolation_level": "read_committed",  # input of an aborted transaction never happened
        }

    # -- running -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until `stop()`: fold the input, tick, serve the web port; then snapshot and leave the group."""
        web_runner = await self._serve_web()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=Rebalance(self))
        chores = [asyncio.create_task(self._every(1.0, self._check_broker))]
        if self.settings.ticks:
            chores.append(asyncio.create_task(self._every(self.settings.tick_interval, self._tick)))
        forwarding = None if self.forwarder is None else asyncio.create_task(self.forwarder.run(self.stopping))
        try:
            await self._consume()
        finally:
            for chore in chores:
                chore.cancel()
            if forwarding is not None:
                await self._stopped(forwarding)
            await self._leave()
            await web_runner.cleanup()

    async def _stopped(self, forwarding: asyncio.Task[None]) -> None:
        """The forwarder ends its loop on `stopping`: wait for it (its transaction commits), within bounds;
        past them it is cancelled, and its clients are closed without waiting on the broker."""
        try:
            await asyncio.wait_for(asyncio.shield(forwarding), self.settings.stop_timeout / 3)
        except TimeoutError:
            log.warning("stopping: the forwarder did not finish; its open transaction is aborted by the next owner")
            forwarding.cancel()
            await asyncio.wait([forwarding], timeout=1.0)
        except Exception:
            log.exception("the forwarder failed")

    def stop(self) -> None:
        self.stopping.set()

    async def _consume(self) -> None:
        while not self.stopping.is_set():
            await self._take_pending()
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=int(self.settings.batch_within * 1000), max_records=self.settings.batch
                )
            except KafkaError as error:  # the client retries what it can; this is what it could not
                log.warning("fetching input failed (%r): trying again in 1 s", error)
                await asyncio.sleep(1.0)
                continue
            async with self.lock:
                await self._fold_batch(batch)
                if time.monotonic() >= self.snapshot_at:
                    await self._snapshot_all()

    async def _leave(self) -> None:
        """Snapshot what was folded, commit, leave the group and close the clients; each step bounded (the
        broker may be unreachable: then the next owner folds again from the last snapshot)."""
        timeout = self.settings.stop_timeout / 3
        # the state lands before the group is left; the backlog check's clients close last
        steps = (self.give_up, self.producer.stop, self.consumer.stop, self.backlog.stop)
        for step in steps:
            try:
                await asyncio.wait_for(step(), timeout)
            except (TimeoutError, KafkaError) as error:
                log.warning("stopping: %s did not finish (%r); going on", getattr(step, "__name__", step), error)

    async def _every(self, seconds: float, chore: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await chore()
            except (KafkaError, TimeoutError) as error:
                log.info("%s failed (%r): trying again in %.0f s", chore.__name__, error, seconds)
            except Exception:
                log.exception("%s failed: trying again in %.0f s", chore.__name__, seconds)

    # -- assignment ----------------------------------------------------------------------------------

    async def take(self, assigned: set[TopicPartition]) -> None:
        """The group's new assignment: pause each new input partition until its keys' state is read back."""
        self.rebalances += 1
        self.assigned = {tp.partition for tp in assigned if tp.topic == self.topic}
        for number in set(self.owned) - self.assigned:
            del self.owned[number]
        waiting = [TopicPartition(self.topic, p) for p in self.assigned if p not in self.owned]
        if waiting:
            self.consumer.pause(*waiting)  # read back by the fetch loop: no heartbeats while this callback runs

    async def _take_pending(self) -> None:
        """Read back the state of assigned partitions not folded yet, seek each to its resume point, resume."""
        pending = [p for p in sorted(self.assigned) if p not in self.owned and self.failed[p].ready()]
        if not pending:
            return
        async with self.lock:
            try:
                restored = await self.changelog.restore(pending, self.topic)
                for number in pending:
                    await self._resume(number, restored[number])
            except (KafkaError, TimeoutError) as error:
                delay = max(self.failed[p].failed() for p in pending)
                log.warning("reading back partitions %s failed (%r): again in %.0f s", pending, error, delay)
            except Exception:
                delay = max(self.failed[p].failed() for p in pending)
                log.exception("reading back partitions %s failed: again in %.0f s", pending, delay)

    async def _resume(self, number: int, restored: Restored) -> None:
        """Fold a partition from its committed offset (the input before it is in the changelog), or from its
        start when nothing was committed or a key's record could not be read back."""
        tp = TopicPartition(self.topic, number)
        if number not in self.assigned or tp not in self.consumer.assignment():
            return  # given up while its state was read back
        committed = await self.consumer.committed(tp)
        first, keys = restored.first, restored.keys
        start = first if committed is None or restored.unreadable else max(first, committed)
        self.owned[number] = Partition(number, keys, start, start)
        self.consumer.seek(tp, start)
        self.consumer.resume(tp)
        log.info("input partition %d: %d keys read back, folding from offset %d", number, len(keys), start)

    async def give_up(self) -> None:
        """Before a rebalance (and on stopping): wait for the batch in progress, snapshot, commit, forget."""
        async with self.lock:
            try:
                await asyncio.wait_for(self._snapshot_all(), self.settings.stop_timeout)
            except TimeoutError:
                log.warning(
                    "giving partitions up without a snapshot (the broker is slow or unreachable): "
                    "their next owner folds again from the last one"
                )
                await self._settle()
            finally:
                self.owned.clear()
                self.assigned = set()

    async def _settle(self) -> None:
        """After a snapshot cut short: let the state records already handed to the producer land (or fail)
        before the partitions are given up, so none lands after the next owner has read its state back."""
        try:
            await asyncio.wait_for(self.producer.flush(), self.settings.stop_timeout)
        except Exception as error:
            log.warning("state records still in flight when giving partitions up (%r)", error)

    # -- folding -------------------------------------------------------------------------------------

    async def _fold_batch(self, batch: dict[TopicPartition, list[Record]]) -> None:
        self.batches += 1
        before = self.tallies.events.total(), self._late_total()
        for tp, records in batch.items():
            part = self.owned.get(tp.partition)
            if part is None or tp.topic != self.topic:
                continue  # given up since it was fetched, or not read back yet: it is fetched again
            self.batched += len(records)
            try:
                await self._fold_partition(tp, part, records)
            except Exception:
                self._failed(part, "folding")
        self.late.add(self._late_total() - before[1], self.tallies.events.total() - before[0])

    def _late_total(self) -> int:
        return sum(n for (_, result), n in self.tallies.events.items() if result == LATE)

    async def _fold_partition(self, tp: TopicPartition, part: Partition, records: list[Record]) -> None:
        """Fold the records that continue the partition from its next offset, key by key."""
        run, stepped = continuing(records, part.next)
        self.gaps += stepped
        for key, events in by_key(run).items():
            if ACTION_TYPE.fullmatch(key) is None or home_partition(key, self.partitions) != part.number:
                await self._misrouted(key, part.number, events)
            else:
                part.keys[key] = await self._fold_key(key, part.keys.get(key), events)
                part.dirty.add(key)
        if run:
            part.next = run[-1].offset + 1

    def _failed(self, part: Partition, doing: str) -> None:
        """A failure while folding a partition: forget it (its unsnapshotted state may be half-advanced)
        and read it back from its last snapshot after a backoff; the other partitions go on."""
        self.failures += 1
        delay = self.failed[part.number].failed()
        log.exception(
            "input partition %d: %s failed; folding it again from its last snapshot in %.0f s",
            part.number,
            doing,
            delay,
        )
        self.owned.pop(part.number, None)
        tp = TopicPartition(self.topic, part.number)
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)

    async def _misrouted(self, key: bytes, partition: int, events: list[Record]) -> None:
        """Input that is not on its key's partition cannot be folded in order with the key's other events."""
        name = key.decode("utf-8", errors="replace")
        if not key:
            reason = "message has no key: produce with key = action_type"
        elif ACTION_TYPE.fullmatch(key) is None:
            reason = f"message key {name!r} is not an action type: produce with key = action_type"
        else:
            reason = (
                f"message key {name!r} belongs to partition {home_partition(key, self.partitions)} but came "
                f"on partition {partition}: produce with key = action_type and the default partitioner"
            )
        for event in events:
            self.tallies.events["", REJECTED] += 1
            origin = f"{event.topic}/{event.partition}:{event.offset}"
            await self._reject(key, Rejected(origin, REJECTED, reason, event.value or b""))

    async def _fold_key(self, key: bytes, saved: Saved | None, events: list[Record]) -> Saved:
        """Fold one key's events of a run through the ingest pipeline, in log order, and queue what they
        made (delivered before the key's record is written). Records at or below the key's stored offset
        were applied before the last snapshot: skipped."""
        name = key.decode()
        started: tuple[Decision, ...] = ()
        if saved is None:
            saved, started = self.keyed.start(name)
            self.tallies.decisions.update((d.action_type, d.kind) for d in started)
        source = f"{events[0].topic}/{events[0].partition}"
        records = [Input(source, e.offset, e.value or b"", key) for e in events]
        outputs = Outputs(decisions=list(started))
        state = State({} if saved.state is None else {name: saved.state})
        saved = self.keyed.fold(name, saved, records, Counting(outputs, self.tallies, state))
        for decision in outputs.decisions:
            await self._publish(decision)
        for rejected in outputs.rejected:
            await self._reject(key, rejected)
        return saved

    async def _publish(self, decision: Decision) -> None:
        """A decision, and for a tier change its tier record (a tombstone when the type was retired)."""
        key = decision.action_type.encode()
        self.sending.append(await self.producer.send(self.kafka.topic(DECISIONS), decision.to_json().encode(), key=key))
        if decision.moves:
            tier = TierRecord.from_decision(decision)
            value = None if tier.retired else tier.to_json().encode()
            self.sending.append(await self.producer.send(self.kafka.topic(TIER_MAP), value, key=key))

    async def _reject(self, key: bytes, rejected: Rejected) -> None:
        headers = [
            ("tiergate-result", rejected.result.encode()),
            ("tiergate-reason", rejected.reason.encode()),
            ("tiergate-origin", rejected.origin.encode()),
        ]
        self.sending.append(await self.producer.send(self.kafka.topic(DLQ), rejected.raw, key=key, headers=headers))

    # -- snapshots -----------------------------------------------------------------------------------

    async def _snapshot_all(self) -> None:
        """Outputs, then state, then offsets: wait for the outputs queued so far, write the record of every
        key folded since the last snapshot, wait for them, commit each partition's next offset. A delivery
        that fails makes every partition fold again from its last snapshot (its outputs are made again)."""
        self.snapshot_at = time.monotonic() + self.settings.snapshot_interval
        parts = [part for part in self.owned.values() if part.dirty or part.next > part.committed]
        if not parts and not self.sending:
            return
        try:
            await self._delivered()
            if parts and await self._still_member(parts):
                await self._write(parts)
                await self._commit(parts)
        except Exception:  # a broker error, or any other: never the end of the fetch loop
            for part in list(self.owned.values()):
                self._failed(part, "delivering outputs or state")

    async def _delivered(self) -> None:
        sending, self.sending = self.sending, []
        await asyncio.gather(*sending)

    async def _still_member(self, parts: list[Partition]) -> bool:
        """Commit what was committed last: the group refuses a member whose session expired, and its
        partitions' state is no longer this worker's to write."""
        try:
            await self.consumer.commit(
                {TopicPartition(self.topic, p.number): OffsetAndMetadata(p.committed, "") for p in parts}
            )
        except CommitFailedError:
            log.warning(
                "no longer a member of the group: forgetting partitions %s unsnapshotted", [p.number for p in parts]
            )
            for part in parts:
                self.owned.pop(part.number, None)
            return False
        return True

    async def _write(self, parts: list[Partition]) -> None:
        written = []
        for part in parts:
            for key in part.dirty:
                written.append(await self.changelog.write(key, part.keys[key], part.number))
        results = await asyncio.gather(*written, return_exceptions=True)  # every write settled before failing
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for part in parts:
            part.dirty.clear()

    async def _commit(self, parts: list[Partition]) -> None:
        offsets = {TopicPartition(self.topic, p.number): OffsetAndMetadata(p.next, "") for p in parts}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError:
            log.info("offsets not committed: the group is rebalancing (the changelog holds the state)")
            return
        for part in parts:
            part.committed = part.next
            self.failed.pop(part.number, None)  # progress since a failure: the next one backs off from 1 s again

    # -- the clock -----------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """The one tick rule (models.ticks.due_ticks) over the keys of the partitions this worker owns:
        each owner ticks its own keys, so a key's ticks come from the worker that holds its state. Due ticks
        wait while ingress input sent before the clock reading they carry is not forwarded yet (after a
        restart or a handover of the forwarding): landing behind them, it could be late (streams/backlog.py)."""
        keys = {
            saved.state.action_type: saved.state
            for part in list(self.owned.values())
            for saved in part.keys.values()
            if saved.state is not None
        }
        clock = self.clock.now()
        ticks = due_ticks(State(keys), clock)
        if self.hold is not None:
            if not ticks:
                self.hold.nothing_due()
            elif await self.hold.holds(clock):
                return
        now = time.monotonic()
        for tick in ticks:
            sent = self.ticked.get(tick.action_type)
            if sent is None or sent[0] != tick.event_id or now - sent[1] > self.RESEND_TICK:
                self.ticked[tick.action_type] = (tick.event_id, now)
                await self.producer.send(self.topic, encode(tick), key=tick.action_type.encode())

    async def _check_broker(self) -> None:
        line = self.broker_log.check()
        if line:
            log.info(line)

    # -- observability -------------------------------------------------------------------------------

    def consumer_lag(self) -> dict[int, int]:
        """Records behind the end of each input partition folded here."""
        lag = {}
        for number, part in list(self.owned.items()):
            end = self.consumer.highwater(TopicPartition(self.topic, number))
            lag[number] = max(0, (end or 0) - part.next)
        return lag

    def local_state(self) -> State:
        """The keys this worker holds now (its assigned partitions)."""
        keys = {}
        for part in list(self.owned.values()):
            for key, saved in part.keys.items():
                if saved.state is not None:
                    keys[key.decode()] = saved.state
        return State(keys)

    async def _serve_web(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.web_port).start()
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = registry_with(
            TiergateCollector(
                lambda: policy_in_force(self.local_state(), self.policy),
                self.local_state,
                lambda: self.tallies,
                self.clock.now,
                self.settings.stale_after,
            ),
            WorkerCollector(
                self.consumer_lag,
                lambda: self.rebalances,
                lambda: self.batches,
                gaps=lambda: self.gaps,
                late_share=lambda: self.late.share,
                failures=lambda: self.failures,
                forwarded=None if self.forwarder is None else self._forwarded,
                ticks_held=None if self.hold is None else self._ticks_held,
            ),
        )
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _ticks_held(self) -> float:
        assert self.hold is not None
        return self.hold.held_seconds

    def _forwarded(self) -> tuple[int, int]:
        assert self.forwarder is not None
        return self.forwarder.forwarded, self.forwarder.refused

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "fallback_policy": None if self.policy is None else self.policy.version,
                "assigned": len(self.assigned),
                "folding": len(self.owned),
                "batches": self.batches,
                "batched_events": self.batched,
                "folded_events": self.tallies.events.total(),
                "forwarding": 0 if self.forwarder is None else len(self.forwarder.producers),
            }
        )


def run_worker(policy: Policy | None, settings: WorkerSettings, kafka: KafkaSettings, loglevel: str = "warn") -> None:
    """Run a worker until SIGTERM or SIGINT, with the Kafka client's connection errors logged once per change
    of state (`BrokerLog`). A stop that has not finished after `stop_timeout` (the broker unreachable, say)
    exits the process anyway: that loses nothing, as a crash does not (outputs are delivered before the
    state that covers them, the state is in the changelog)."""

    async def main() -> None:
        worker = Worker(policy, settings, kafka)  # aiokafka's clients belong to the running loop
        _collect_less()
        _log_to_stderr(loglevel, worker.broker_log)
        warn_without_genesis_keys(kafka)
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop, _stop_by, worker, stop)
        await worker.run()

    asyncio.run(main())


def _collect_less() -> None:
    """The fold makes many short-lived objects, none of them cyclic garbage worth chasing per 700
    allocations (Python's default): collect the young generation every 50,000, and leave what was loaded
    at start (modules, the policy) out of the collector's scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _stop_by(worker: Worker, stop: signal.Signals) -> None:
    if not worker.stopping.is_set():
        log.info("%s: stopping (a snapshot, then leaving the group)", stop.name)
        deadline = threading.Timer(worker.settings.stop_timeout, _exit_anyway, (worker.settings.stop_timeout, stop))
        deadline.daemon = True
        deadline.start()
    worker.stop()


def _exit_anyway(timeout: float, stop: signal.Signals) -> None:
    log.warning(
        "not stopped %.0f s after %s (is the broker unreachable?): exiting without the rest of the "
        "shutdown; the state resumes from the changelog",
        timeout,
        stop.name,
    )
    logging.shutdown()
    os._exit(0)


LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def _log_to_stderr(loglevel: str, broker_log: BrokerLog) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    handler.addFilter(broker_log)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[loglevel])
