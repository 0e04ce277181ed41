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
- The leader publishes clock ticks into the input topic once per window boundary, for every catalog type.
- Decisions go to `tiergate.decisions.v1`, tier records to the compacted `tiergate.tier-map.v1`, bad and
  late input to `tiergate.events.v1.dlq` with the reason and origin in headers.
- faust's web server binds to loopback and serves `/metrics` and `/healthz`; its table pages are off.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.evaluator import KeyState, Result, State, initial_decisions, initial_key, step
from tiergate.models.policy import Policy
from tiergate.models.wire import Tick, format_ts

from .codec import EventError, decode, encode
from .kafka import DECISIONS, DLQ, EVENTS, TIER_MAP, KafkaSettings, read_topics
from .metrics import Tallies, TiergateCollector, WorkerCollector, catalog_label


class WorkerSettings(BaseSettings):
    """`tiergate worker`: TIERGATE_WORKER_* variables (or flags)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_WORKER_", extra="ignore")

    policy: Path
    app_id: str = "tiergate-worker"
    web_host: str = Field("127.0.0.1", description="/metrics and /healthz bind here (loopback by default)")
    web_port: int = 6066
    data_dir: Path = Path("tiergate-worker-data")
    tick_interval: float = Field(1.0, gt=0, description="seconds between the leader's clock checks")
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

    def __init__(self, policy: Policy, settings: WorkerSettings, kafka: KafkaSettings) -> None:
        self.policy, self.settings, self.kafka = policy, settings, kafka
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
        self.event_counts: Counter[tuple[str, str]] = Counter()
        self.decision_counts: Counter[tuple[str, str]] = Counter()
        self.last_boundary: int | None = None
        self.batches = self.batched = 0
        self.live: dict[bytes, tuple[int, KeyState]] = {}  # key -> (offset applied, state): no rebuild per batch
        self.position: dict[int, int] = {}  # input partition -> offset of the last event taken
        self.rebalances = 0

        async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.rebalances += 1

        self.app.on_partitions_assigned.connect(assigned)
        self._initial = {d.action_type: d for d in initial_decisions(policy)}
        self.app.agent(self.events, name="evaluate")(self._evaluate)
        self.app.timer(settings.tick_interval, on_leader=True)(self._tick)
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

    def _load(self, key: bytes) -> tuple[KeyState | None, int, bool]:
        """(state, offset applied, stored) of a key: the live object when it is still what the table holds
        (same offset), else rebuilt from the table (after a rebalance or a restart, say)."""
        saved = self.table.get(key)
        if saved is None:
            return None, -1, False
        live = self.live.get(key)
        if live is not None and live[0] == saved["offset"]:
            return live[1], saved["offset"], True
        state = None if saved["state"] is None else KeyState.from_dict(saved["state"])
        return state, saved["offset"], True

    async def _fold_key(self, key: bytes, events: list[EventT[bytes]]) -> None:
        """Fold one key's events of a batch, in log order; write its state once."""
        name = key.decode("utf-8", errors="replace")
        key_state, applied, stored = self._load(key)
        if not stored and name in self.policy.types:
            key_state = initial_key(self.policy, name)
            await self._publish(self._initial[name])
        state = State({} if key_state is None else {name: key_state})
        label = catalog_label(self.policy, name)
        for event in events:
            offset = event.message.offset
            if offset <= applied:
                continue  # applied before a crash: the changelog is ahead of the committed offset
            applied = offset
            raw = event.value
            try:
                parsed = decode(raw)
                if parsed.action_type != name:
                    raise EventError(
                        f"message key {name!r} is not the action_type {parsed.action_type!r}: "
                        "produce with key = action_type"
                    )
            except EventError as error:
                self.event_counts[label, Result.REJECTED] += 1
                await self._set_aside(event, Result.REJECTED, error.reason)
                continue
            _, decisions, result, reason = step(state, parsed, self.policy)
            self.event_counts[label, result] += 1
            for decision in decisions:
                await self._publish(decision)
            if result in (Result.LATE, Result.REJECTED):
                assert reason is not None
                await self._set_aside(event, result, reason)
        self.table[key] = {"state": None if key_state is None else key_state.to_dict(), "offset": applied}
        if key_state is not None:
            self.live[key] = (applied, key_state)

    async def _publish(self, decision: Decision) -> None:
        key = decision.action_type.encode()
        self.decision_counts[decision.action_type, decision.kind] += 1
        await self.decisions.send(key=key, value=decision.to_json().encode())
        if decision.moves:
            await self.tier_map.send(key=key, value=TierRecord.from_decision(decision).to_json().encode())

    async def _set_aside(self, event: EventT[bytes], result: str, reason: str) -> None:
        message = event.message
        headers = {
            "tiergate-result": result.encode(),
            "tiergate-reason": reason.encode(),
            "tiergate-origin": f"{message.topic}/{message.partition}/{message.offset}".encode(),
        }
        await self.dlq.send(key=message.key, value=event.value, headers=headers)

    # -- the clock -----------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Once the clock, less the allowed lateness, passes a window boundary: a tick for every type."""
        policy, now = self.policy, int(time.time())
        boundary = (now - policy.allowed_lateness) // policy.window * policy.window
        if self.last_boundary is not None and boundary <= self.last_boundary:
            return
        self.last_boundary = boundary
        for name in policy.catalog:
            tick = Tick.model_validate(
                {"type": "tick", "event_id": f"tick/{name}/{boundary}", "ts": format_ts(now), "action_type": name}
            )
            await self.events.send(key=name.encode(), value=encode(tick))

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
                self.policy,
                self.local_state,
                lambda: Tallies(self.event_counts, self.decision_counts),
                lambda: int(time.time()),
                self.settings.stale_after,
            )
        )
        registry.register(WorkerCollector(self.consumer_lag, lambda: self.rebalances, lambda: self.batches))
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    def _health(self, web: Any) -> Any:
        return web.json(
            {
                "status": "ok",
                "policy_version": self.policy.version,
                "assigned": len(self.app.assignor.assigned_actives()),
                "batches": self.batches,
                "batched_events": self.batched,
            }
        )
