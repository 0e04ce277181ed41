"""`tiergate worker`: the fold as a faust-streaming worker on Apache Kafka.

- One agent consumes `tiergate.events.v1` (keyed by action type) in batches (`take_events`). Each input
  partition is folded in offset order from its resume point, without a gap: faust can deliver messages
  past ones it dropped around a rebalance, so the worker folds only the run that continues the partition
  and reads the partition again from the first missing offset.
- The Table (changelog-backed, keyed by action type, `use_partitioner` so a key's changelog partition
  is its input partition) holds per key the core's `KeyState` — its event-time window aggregates — the
  offset of the last input event applied, the number of input events folded, the partition, and the
  partition's `position`: the last record a batch writes for a partition carries the offset the batch
  folded it to. A partition resumes after the highest position among its keys' records; faust's committed
  offset only says where faust starts fetching. Window closing is the core's, driven by event time in
  the log; faust's windowed tables and `on_window_close` are not used.
- Decisions, tier records and set-aside input are delivered before the records of the state that covers
  them. A crash between a key's record and its partition's position replays some input: events at or
  below a key's stored offset are skipped, so nothing counts twice. Decisions may be produced again;
  their ids and the tier records' versions make that harmless (consumers keep the first id and the
  highest version).
- Each worker ticks the keys of the partitions it owns, by the one tick rule both live runtimes share
  (models.ticks.due_ticks), on an injected clock (unless started with `--no-ticks`, to backfill a history
  through the topic). Tick ids name the window boundary: a tick sent twice around a rebalance is a duplicate.
- Each key's batch goes through the one ingest pipeline (streams/pipeline.py) with the Kafka admission:
  events under their own key, operator events signed by a key the key's policy trusts (streams/signing.py).
  Workers need no policy file: the policy lives in the log (a `--policy` serves only logs whose events
  begin before their first activation).
- Decisions go to `tiergate.decisions.v1`, tier records to the compacted `tiergate.tier-map.v1`, bad and
  late input to `tiergate.events.v1.dlq` with the reason and origin in headers.
- faust's web server binds to loopback and serves `/metrics` and `/healthz`; its table pages are off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import faust
from faust.streams import Stream
from faust.types import TP, EventT, StreamT
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.fold import LATE, REJECTED
from tiergate.models.policy import Policy
from tiergate.models.state import State
from tiergate.models.ticks import due_ticks

from .clock import Clock, SystemClock
from .codec import encode
from .kafka import DECISIONS, DLQ, EVENTS, TIER_MAP, BrokerLog, KafkaSettings, home_partition, read_topics
from .keyed import KeyedFold, Outputs, Saved
from .metrics import TiergateCollector, WorkerCollector
from .pipeline import Counting, Input, Rejected, Tallies
from .signing import kafka_admission, signing_key

log = logging.getLogger(__name__)


class WorkerSettings(BaseSettings):
    """`tiergate worker`: TIERGATE_WORKER_* variables (or flags)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_WORKER_", extra="ignore")

    policy: Path | None = Field(None, description="only for a log whose events begin before its first activation")
    app_id: str = "tiergate-worker"
    web_host: str = Field("127.0.0.1", description="/metrics and /healthz bind here (loopback by default)")
    web_port: int = 6066
    data_dir: Path = Path("tiergate-worker-data")
    tick_interval: float = Field(1.0, gt=0, description="seconds between clock checks")
    ticks: bool = Field(True, description="tick on the clock; off while a history is backfilled")
    late_warning: float = Field(0.2, ge=0, le=1, description="warn when this share of recent input is late")
    stop_timeout: float = Field(20.0, gt=0, description="seconds a stop may take before the worker exits anyway")
    batch: int = Field(5000, gt=0, description="events folded per batch at most")
    batch_within: float = Field(0.2, gt=0, description="seconds to wait for a batch to fill")
    replication_factor: int = 1
    stale_after: int = Field(6 * 3600, gt=0, description="seconds without a window close before evidence is stale")


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def _credentials(kafka: KafkaSettings) -> Any:
    if kafka.security_protocol.startswith("SASL"):
        kwargs = kafka.client_kwargs()
        return faust.SASLCredentials(
            username=kwargs["sasl_plain_username"],
            password=kwargs["sasl_plain_password"],
            ssl_context=kafka.ssl_context(),
            mechanism=kafka.sasl_mechanism,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def by_partition(batch: Sequence[EventT[bytes]]) -> dict[int, list[EventT[bytes]]]:
    """A batch's events per input partition, each in the order faust delivered them."""
    grouped: dict[int, list[EventT[bytes]]] = defaultdict(list)
    for event in batch:
        grouped[event.message.partition].append(event)
    return grouped


def by_key(events: Sequence[EventT[bytes]]) -> dict[bytes, list[EventT[bytes]]]:
    """A partition's events per message key, each in log order (keys in the order they first appear)."""
    grouped: dict[bytes, list[EventT[bytes]]] = defaultdict(list)
    for event in events:
        grouped[event.message.key or b""].append(event)
    return grouped


def in_order(events: Sequence[EventT[bytes]], start: int) -> tuple[list[EventT[bytes]], bool]:
    """The events that continue a partition's input from offset `start` without a gap, and whether any
    event lies beyond them (a gap: the missing offsets must be read again). Offsets below `start` are
    redeliveries of what was already folded."""
    run, expected = [], start
    for event in events:
        if event.message.offset == expected:
            run.append(event)
            expected += 1
    return run, any(event.message.offset >= expected for event in events)


class LateShare:
    """The share of the worker's recent input that was late, and a warning when it crosses a threshold:
    history produced to the topic after the leader's ticks passed it turns late (`--no-ticks` backfills)."""

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
                "after the leader's ticks passed it? Backfill with the workers' ticks off (tiergate worker "
                "--no-ticks), then start them with ticks.",
                100 * self.share,
                self.total,
            )
        elif self.warned and self.share < self.threshold / 2:
            self.warned = False
            log.info("late input is back to %.0f%% of the last %d events", 100 * self.share, self.total)


class Worker:
    """The faust app and the fold it runs; `app` is what `faust worker` would run."""

    def __init__(
        self, policy: Policy | None, settings: WorkerSettings, kafka: KafkaSettings, clock: Clock | None = None
    ) -> None:
        self.policy, self.settings, self.kafka = policy, settings, kafka
        self.clock = clock or SystemClock()
        partitions = read_topics(kafka.topics_file)[EVENTS].partitions
        self.app = faust.App(
            kafka.topic(settings.app_id),
            broker=_broker_url(kafka.bootstrap),
            broker_credentials=_credentials(kafka),
            broker_client_id=kafka.client_id,
            store="memory://",
            datadir=str(settings.data_dir),
            topic_partitions=partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=True,
            web_enabled=True,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_tables_enabled=False,
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=1.0,
            broker_request_timeout=40.0,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=5000,
            producer_acks=-1,
            table_cleanup_interval=3600.0,
            autodiscover=False,
        )
        self.events, self.decisions, self.tier_map, self.dlq = (
            self.app.topic(
                kafka.topic(name), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
            for name in (EVENTS, DECISIONS, TIER_MAP, DLQ)
        )
        self.table = self.app.Table("state", default=None, partitions=partitions, key_type=bytes, use_partitioner=True)
        self.tallies = Tallies.empty()
        self.keyed = KeyedFold(policy, kafka_admission(kafka.deployment, kafka.genesis_keys), signing_key)
        self.batches = self.batched = 0
        self.live: dict[bytes, Saved] = {}  # key -> what it last wrote to the table: no rebuild per batch
        self.partitions = partitions
        self.next: dict[int, int] = {}  # input partition -> the next offset to fold (this assignment)
        self.rereads: dict[int, tuple[int, float]] = {}  # input partition -> (offset sought, when)
        self.sending: list[Awaitable[Any]] = []  # outputs of the batch, not yet known to be delivered
        self.rebalances = self.gaps = 0

        async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.next.clear()
            await self._drain_producer()

        async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.rebalances += 1
            self.next.clear()  # resume points come from the table once it is recovered

        self.app.on_partitions_revoked.connect(revoked)
        self.app.on_partitions_assigned.connect(assigned)
        self.app.agent(self.events, name="evaluate")(self._evaluate)
        if settings.ticks:
            self.app.timer(settings.tick_interval)(self._tick)
        self.late = LateShare(settings.late_warning)
        self.broker_log = BrokerLog()
        self.app.timer(1.0)(self._check_broker)
        worker = self

        async def metrics(view: Any, request: Any) -> Any:  # faust binds page functions to its View
            return worker._metrics(view)

        async def healthz(view: Any, request: Any) -> Any:
            return worker._health(view)

        self.app.page("/metrics")(metrics)
        self.app.page("/healthz")(healthz)

    # -- consumption: each input partition is folded in offset order, without a gap -----------------

    async def _evaluate(self, stream: StreamT[bytes]) -> None:
        assert isinstance(stream, Stream)  # take_events is on the implementation, not the protocol
        async for batch in stream.take_events(self.settings.batch, within=self.settings.batch_within):
            self.batches += 1
            self.batched += len(batch)
            before = self.tallies.events.total(), self._late_total()
            for partition, events in by_partition(batch).items():
                await self._fold_partition(partition, events)
            self.late.add(self._late_total() - before[1], self.tallies.events.total() - before[0])

    def _late_total(self) -> int:
        return sum(n for (_, result), n in self.tallies.events.items() if result == LATE)

    async def _fold_partition(self, partition: int, events: list[EventT[bytes]]) -> None:
        """Fold the events that continue the partition's input from its resume point; read a gap again.

        faust can hand the stream a partition's messages past a gap (messages it fetched and dropped
        around a rebalance, delivered later or never) and commit offsets it never delivered, so neither
        its delivery order nor its committed offset says what was folded. The state does: each partition
        resumes after the highest `position` its keys' records carry (docs/decisions.md)."""
        tp = TP(self.events.get_topic_name(), partition)
        if tp not in self.app.assignor.assigned_actives():
            return  # revoked since it was fetched: its new owner folds it
        run, gap = in_order(events, await self._resume_point(tp))
        if run:
            await self._fold_run(partition, run)
        if gap:
            await self._read_again(tp, run[-1].message.offset + 1 if run else self.next[partition])

    async def _resume_point(self, tp: TP) -> int:
        """The next input offset a partition needs: after the position its keys' records carry (the
        table is recovered before the stream resumes), else the partition's first offset."""
        if tp.partition not in self.next:
            positions = [
                saved["position"]
                for saved in self.table.values()
                if saved and saved.get("partition") == tp.partition and "position" in saved
            ]
            if positions:
                self.next[tp.partition] = max(positions) + 1
            else:
                self.next[tp.partition] = (await self.app.consumer.earliest_offsets(tp))[tp]
        return self.next[tp.partition]

    async def _fold_run(self, partition: int, run: list[EventT[bytes]]) -> None:
        """Fold a gap-free run of a partition key by key; once the outputs are delivered, write each key's
        record, the last one carrying the run's end as the partition's position. The records of a
        partition go to one changelog partition, in order: if the last one is there, so are the others."""
        keyed = by_key(run)
        written: dict[bytes, Saved] = {}
        try:
            for key, events in keyed.items():
                if not key or home_partition(key, self.partitions) != partition:
                    await self._misrouted(key, partition, events)
                    continue
                written[key] = await self._fold_key(key, events)
            await self._delivered()  # decisions, tier records and set-aside input before the state covering them
        except BaseException:
            for key in keyed:
                self.live.pop(key, None)  # it may be half-advanced: rebuild it from the table next time
            raise
        before, position = run[0].message.offset - 1, run[-1].message.offset
        last = next(reversed(written), None)
        for key, saved in written.items():
            self.table[key] = saved.to_dict() | {
                "partition": partition,
                "position": position if key == last else before,
            }
            self.live[key] = saved
        self.next[partition] = position + 1

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Seek a partition back to the first offset it is missing (at most once a second per offset:
        messages fetched before the seek can still arrive out of order for a moment)."""
        now = time.monotonic()
        if self.rereads.get(tp.partition, (-1, 0.0))[0] == offset and now - self.rereads[tp.partition][1] < 1.0:
            return
        self.rereads[tp.partition] = (offset, now)
        self.gaps += 1
        log.info("input partition %d: offset %d did not arrive in order; reading again from it", tp.partition, offset)
        await self.app.consumer.seek_wait({tp: offset})

    async def _misrouted(self, key: bytes, partition: int, events: list[EventT[bytes]]) -> None:
        """Input that is not on its key's partition cannot be folded in order with the key's other events."""
        reason = (
            f"message key {key.decode('utf-8', errors='replace')!r} belongs to partition "
            f"{home_partition(key, self.partitions)} but came on partition {partition}: "
            "produce with key = action_type and the default partitioner"
            if key
            else "message has no key: produce with key = action_type"
        )
        for event in events:
            self.tallies.events["", REJECTED] += 1
            origin = f"{event.message.topic}/{event.message.partition}:{event.message.offset}"
            await self._reject(key, Rejected(origin, REJECTED, reason, event.value))

    async def _delivered(self) -> None:
        sending, self.sending = self.sending, []
        await asyncio.gather(*sending)

    async def _drain_producer(self) -> None:
        """Hand every buffered changelog record to the client and wait until the broker has them: a
        worker giving up partitions must not write their state after the next owner recovered it. (With
        the broker unreachable nothing can be written later either, and nobody can take the partitions
        over: give up after the request timeout.)"""
        producer = self.app.producer

        async def drain() -> None:
            while producer.buffer.size:
                await producer.buffer.flush()
            await asyncio.sleep(0)  # the buffer's sender hands over the record it took last
            await producer.flush()

        try:
            await asyncio.wait_for(drain(), timeout=self.app.conf.broker_request_timeout)
        except TimeoutError:
            log.warning("changelog records not delivered before giving up partitions: the broker is unreachable")

    def _load(self, key: bytes) -> Saved | None:
        """What the table holds for a key: the live object when it is still what the table holds (same
        offset), else rebuilt from the table (after a rebalance or a restart, say); None if nothing."""
        stored = self.table.get(key)
        if stored is None:
            return None
        live = self.live.get(key)
        if live is not None and live.offset == stored["offset"]:
            return live
        return Saved.from_dict(stored)

    async def _fold_key(self, key: bytes, events: list[EventT[bytes]]) -> Saved:
        """Fold one key's events of a run through the ingest pipeline, in log order, and queue what they
        made (delivered before the key's record is written). Records at or below the key's stored offset
        were applied before a crash: skipped."""
        name = key.decode("utf-8", errors="replace")
        saved = self._load(key)
        started: tuple[Decision, ...] = ()
        if saved is None:
            saved, started = self.keyed.start(name)
            self.tallies.decisions.update((d.action_type, d.kind) for d in started)
        records = [
            Input(f"{e.message.topic}/{e.message.partition}", e.message.offset, e.value, e.message.key) for e in events
        ]
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
        self.sending.append(await self.decisions.send(key=key, value=decision.to_json().encode()))
        if decision.moves:
            tier = TierRecord.from_decision(decision)
            value = None if tier.retired else tier.to_json().encode()
            self.sending.append(await self.tier_map.send(key=key, value=value))

    async def _reject(self, key: bytes, rejected: Rejected) -> None:
        headers = {
            "tiergate-result": rejected.result.encode(),
            "tiergate-reason": rejected.reason.encode(),
            "tiergate-origin": rejected.origin.encode(),
        }
        self.sending.append(await self.dlq.send(key=key, value=rejected.raw, headers=headers))

    # -- the clock -----------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """The one tick rule (models.ticks.due_ticks) over the keys of the partitions this worker owns:
        each owner ticks its own keys, so a key's ticks come from the worker that holds its state."""
        topic = self.events.get_topic_name()
        owned = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        keys = {
            saved.state.action_type: saved.state
            for key, saved in list(self.live.items())
            if saved.state is not None and home_partition(key, self.partitions) in owned
        }
        for tick in due_ticks(State(keys), self.clock.now()):
            await self.events.send(key=tick.action_type.encode(), value=encode(tick))

    async def _check_broker(self) -> None:
        line = self.broker_log.check()
        if line:
            log.info(line)

    # -- observability -------------------------------------------------------------------------------

    def consumer_lag(self) -> dict[int, int]:
        """Messages behind the end of each assigned input partition."""
        consumer, lag = self.app.consumer, {}
        committed = getattr(consumer, "_committed_offset", {})  # faust keeps no public accessor for it
        for tp in self.app.assignor.assigned_actives():
            if tp.topic != self.events.get_topic_name():
                continue
            end = consumer.highwater(tp)
            next_offset = self.next.get(tp.partition, committed.get(tp) or 0)
            lag[tp.partition] = max(0, (end or 0) - next_offset)
        return lag

    def local_state(self) -> State:
        """The keys this worker holds now (its assigned partitions)."""
        keys = {}
        for key, stored in list(self.table.items()):
            saved = Saved.from_dict(stored) if stored else None
            if saved is not None and saved.state is not None:
                keys[key.decode()] = saved.state
        return State(keys)

    def _metrics(self, web: Any) -> Any:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(
            TiergateCollector(
                lambda: ("", "") if self.policy is None else (self.policy.version, self.policy.sha256),
                self.local_state,
                lambda: self.tallies,
                self.clock.now,
                self.settings.stale_after,
            )
        )
        registry.register(
            WorkerCollector(
                self.consumer_lag,
                lambda: self.rebalances,
                lambda: self.batches,
                gaps=lambda: self.gaps,
                late_share=lambda: self.late.share,
            )
        )
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    def _health(self, web: Any) -> Any:
        return web.json(
            {
                "status": "ok",
                "fallback_policy": None if self.policy is None else self.policy.version,
                "assigned": len(self.app.assignor.assigned_actives()),
                "batches": self.batches,
                "batched_events": self.batched,
            }
        )


class WorkerProcess(faust.Worker):
    """faust's worker process, with a deadline on stopping and the Kafka client's connection errors logged
    once per change of state (`BrokerLog`).

    faust's stop waits on the Kafka client, which retries while the broker is unreachable: a SIGTERM then
    takes a minute or more. Past `stop_timeout` the process exits anyway; that loses nothing, as a crash
    does not (outputs are delivered before the state covering them, the state is in the changelog)."""

    def __init__(self, worker: Worker, loglevel: str) -> None:
        super().__init__(worker.app, loglevel=loglevel, quiet=True)
        self.broker_log, self.stop_timeout = worker.broker_log, worker.settings.stop_timeout
        self.deadline: threading.Timer | None = None
        threading.excepthook = _thread_ended  # one record, not a log line per character row of a traceback

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(self.broker_log)

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        for stop in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(stop, self._stop_by, stop)

    def _stop_by(self, stop: signal.Signals) -> None:
        if self.deadline is None:
            self.deadline = threading.Timer(self.stop_timeout, self._exit_anyway, (stop,))
            self.deadline.daemon = True
            self.deadline.start()
        self._schedule_shutdown(stop)  # faust's own orderly stop

    def _exit_anyway(self, stop: signal.Signals) -> None:
        log.warning(
            "not stopped %.0f s after %s (is the broker unreachable?): exiting without the rest of the "
            "shutdown; the state resumes from the changelog",
            self.stop_timeout,
            stop.name,
        )
        logging.shutdown()
        os._exit(0)


def _thread_ended(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one log record (the Kafka consumer thread's stop while the broker
    is unreachable ends in CancelledError)."""
    name = args.thread.name if args.thread is not None else "a thread"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    log.warning("%s ended with %s", name, args.exc_type.__name__, exc_info=exc_info)
