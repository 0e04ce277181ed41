"""`tiergate worker`: the fold as a faust-streaming worker on Apache Kafka (DESIGN.md §8, §10).

- One agent consumes `tiergate.events.v1` (keyed by action type) in batches (`take_events`); the batch
  is folded key by key and each key's state is written to the faust Table once per batch.
- The Table (changelog-backed, keyed by action type, `use_partitioner` so a key's changelog partition
  is its input partition) holds the core's `KeyState` — its event-time window aggregates — plus the offset
  of the last input event applied. Window closing is the core's, driven by event time in the log; faust's
  windowed tables and `on_window_close` are not used.
- A crash between the changelog write and the offset commit replays some input: events at or below the
  stored offset are skipped, so nothing counts twice. Decisions may be produced again; their ids and the
  tier records' versions make that harmless (consumers keep the first id and the highest version).
- Each worker ticks the keys of the partitions it owns, by the one tick rule both live runtimes share
  (models.ticks.due_ticks), reading an injected `Clock`.
- Decisions go to `tiergate.decisions.v1`, tier records to the compacted `tiergate.tier-map.v1`, bad and
  late input to `tiergate.events.v1.dlq` with the reason and origin in headers.
- faust's web server binds to loopback and serves `/metrics` and `/healthz`; its table pages are off.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.streams import Stream
from faust.types import EventT, StreamT
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.policy import Policy
from tiergate.models.state import KeyState, State
from tiergate.models.ticks import due_ticks

from .clock import Clock, SystemClock
from .codec import encode
from .kafka import DECISIONS, DLQ, EVENTS, TIER_MAP, KafkaSettings, read_topics
from .keyed import KeyedFold, Outputs, Saved
from .metrics import TiergateCollector, WorkerCollector
from .pipeline import Counting, Input, Rejected, Tallies


class WorkerSettings(BaseSettings):
    """`tiergate worker`: TIERGATE_WORKER_* variables (or flags)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_WORKER_", extra="ignore")

    policy: Path | None = Field(None, description="only for a log whose events begin before its first activation")
    app_id: str = "tiergate-worker"
    web_host: str = Field("127.0.0.1", description="/metrics and /healthz bind here (loopback by default)")
    web_port: int = 6066
    data_dir: Path = Path("tiergate-worker-data")
    tick_interval: float = Field(1.0, gt=0, description="seconds between clock checks")
    ticks: bool = Field(True, description="tick on the clock; off while a history is produced (backfill)")
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


class Worker:
    """The faust app and the fold it runs; `app` is what `faust worker` would run."""

    def __init__(
        self, policy: Policy | None, settings: WorkerSettings, kafka: KafkaSettings, clock: Clock | None = None
    ) -> None:
        self.policy, self.settings, self.kafka = policy, settings, kafka
        self.clock = clock or SystemClock()
        partitions = self.partitions = read_topics(kafka.topics_file)[EVENTS].partitions
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
        self.keyed = KeyedFold(policy)
        self.batches = self.batched = 0
        self.live: dict[bytes, Saved] = {}  # key -> what it last wrote to the table: no rebuild per batch
        self.position: dict[int, int] = {}  # input partition -> offset of the last event taken
        self.rebalances = 0

        async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.rebalances += 1

        self.app.on_partitions_assigned.connect(assigned)
        self.app.agent(self.events, name="evaluate")(self._evaluate)
        if settings.ticks:
            self.app.timer(settings.tick_interval)(self._tick)
        worker = self

        async def metrics(view: Any, request: Any) -> Any:  # faust binds page functions to its View
            return worker._metrics(view)

        async def healthz(view: Any, request: Any) -> Any:
            return worker._health(view)

        self.app.page("/metrics")(metrics)
        self.app.page("/healthz")(healthz)

    # -- the fold ------------------------------------------------------------------------------------

    async def _evaluate(self, stream: StreamT[bytes]) -> None:
        assert isinstance(stream, Stream)  # take_events is on the implementation, not the protocol
        async for batch in stream.take_events(self.settings.batch, within=self.settings.batch_within):
            self.batches += 1
            self.batched += len(batch)
            for event in batch:
                self.position[event.message.partition] = event.message.offset
            by_key: dict[bytes, list[EventT[bytes]]] = defaultdict(list)
            for event in batch:
                by_key[event.message.key or b""].append(event)
            for key, events in by_key.items():
                try:
                    await self._fold_key(key, events)
                except BaseException:
                    self.live.pop(key, None)  # it may be half-advanced: rebuild it from the table next time
                    raise

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

    async def _fold_key(self, key: bytes, events: list[EventT[bytes]]) -> None:
        """Fold one key's events of a batch, in log order, through the ingest pipeline; write its state once."""
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
        self.table[key] = saved.to_dict()
        self.live[key] = saved

    async def _publish(self, decision: Decision) -> None:
        key = decision.action_type.encode()
        await self.decisions.send(key=key, value=decision.to_json().encode())
        if decision.moves:
            await self.tier_map.send(key=key, value=TierRecord.from_decision(decision).to_json().encode())

    async def _reject(self, key: bytes, rejected: Rejected) -> None:
        headers = {
            "tiergate-result": rejected.result.encode(),
            "tiergate-reason": rejected.reason.encode(),
            "tiergate-origin": rejected.origin.encode(),
        }
        await self.dlq.send(key=key, value=rejected.raw, headers=headers)

    # -- the clock -----------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """The one tick rule (models.ticks.due_ticks) over the keys of the partitions this worker owns:
        each owner ticks its own keys, so a key's ticks come from the worker that holds its state. Tick
        ids name the window boundary, so a tick sent twice around a rebalance is a duplicate."""
        owned = {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.events.get_topic_name()
        }
        keys = {
            saved.state.action_type: saved.state
            for key, saved in list(self.live.items())
            if saved.state is not None and self._partition(key) in owned
        }
        for tick in due_ticks(State(keys), self.clock.now()):
            await self.events.send(key=tick.action_type.encode(), value=encode(tick))

    def _partition(self, key: bytes) -> int:
        """The input partition of a key, as the producers' default partitioner (murmur2) places it."""
        return int(murmur2(key) & 0x7FFFFFFF) % self.partitions

    # -- observability -------------------------------------------------------------------------------

    def consumer_lag(self) -> dict[int, int]:
        """Messages behind the end of each assigned input partition."""
        consumer, lag = self.app.consumer, {}
        committed = getattr(consumer, "_committed_offset", {})  # faust keeps no public accessor for it
        for tp in self.app.assignor.assigned_actives():
            if tp.topic != self.events.get_topic_name():
                continue
            end = consumer.highwater(tp)
            done = self.position.get(tp.partition)
            next_offset = done + 1 if done is not None else (committed.get(tp) or 0)
            lag[tp.partition] = max(0, (end or 0) - next_offset)
        return lag

    def local_state(self) -> State:
        """The keys this worker holds now (its assigned partitions)."""
        keys = {}
        for key, saved in list(self.table.items()):
            if saved and saved["state"] is not None:
                keys[key.decode()] = KeyState.from_dict(saved["state"])
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
        registry.register(WorkerCollector(self.consumer_lag, lambda: self.rebalances, lambda: self.batches))
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
