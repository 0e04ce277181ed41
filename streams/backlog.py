"""Input still waiting in the ingress topics: the workers' clock ticks wait for it.

Agents and reporters write to the ingress topics; the forwarding (streams/forwarder.py, the consumer group
`<app_id>-forward`) appends their records to the one input log. While no worker forwards — a restart, a
handover of ingress partitions — those records wait in the ingress topics, on time. A worker that ticks
before they are forwarded closes their windows first, and the whole backlog is judged late when it lands
behind the tick: kept, never counted as evidence. So a worker sends the ticks it owes only once the
forwarding has appended everything sent before the clock reading the ticks carry: what a forwarder that
never stopped would have appended before them. (Not only what was sent before the watermark a tick sets:
the allowed lateness is there for input sent after a window's end about that window, and it would be late.)

"Appended everything sent before a moment" is read from the broker, whoever forwards (this worker, another
one, or a forwarder elsewhere): for each ingress partition, the first record Kafka dates at or after the
moment (`offsets_for_times`; a record's timestamp is when its producer sent it) against the offset the
forwarding group has committed. The records from the committed offset up to that first one were sent
before the moment and are not forwarded yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tiergate.models.wire import format_ts

from .kafka import ACTIONS, OUTCOMES, KafkaSettings, read_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Waiting:
    """An ingress partition with records sent before a moment that the forwarding has not committed past."""

    partition: TopicPartition
    records: int  # offsets from the committed one to the first record dated at or after the moment (at most)

    def __str__(self) -> str:
        return f"{self.partition.topic}/{self.partition.partition}: {self.records}"


class Backlog:
    """Asks the broker which ingress records sent before a moment the forwarding group has not forwarded.

    Its own clients, apart from the forwarder's: a consumer in no group (it only looks offsets up) and an
    admin client for the group's committed offsets. Both start on first use, so a broker that is down
    shows up as a failed check, not as a worker that cannot start."""

    def __init__(self, kafka: KafkaSettings, app_id: str) -> None:
        self.kafka = kafka
        self.group = kafka.topic(f"{app_id}-forward")
        topics = read_topics(kafka.topics_file)  # the counts from the definition: a consumer in no group knows none
        self.partitions = [
            TopicPartition(kafka.topic(name), number)
            for name in (ACTIONS, OUTCOMES)
            for number in range(topics[name].partitions)
        ]
        self.consumer: AIOKafkaConsumer | None = None
        self.admin: AIOKafkaAdminClient | None = None

    async def waiting(self, moment: int) -> list[Waiting]:
        """The ingress partitions holding records sent before `moment` (Unix seconds) that are not forwarded."""
        consumer, admin = await self._clients()
        found = await consumer.offsets_for_times({tp: moment * 1000 for tp in self.partitions})
        unbounded = [tp for tp in self.partitions if found[tp] is None]  # every record was sent before it
        ends = await consumer.end_offsets(unbounded) if unbounded else {}
        starts = await consumer.beginning_offsets(self.partitions)
        committed = await admin.list_consumer_group_offsets(self.group, partitions=self.partitions)
        waiting = []
        for tp in self.partitions:
            at = found[tp]
            sent_before = ends[tp] if at is None else at.offset  # the records before this offset were sent before
            done = committed.get(tp)
            forwarded = starts[tp] if done is None or done.offset < 0 else max(starts[tp], done.offset)
            if sent_before > forwarded:
                waiting.append(Waiting(tp, sent_before - forwarded))
        return waiting

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        """The clients, started now if they are not yet (a start that fails closes what it opened)."""
        if self.consumer is None:
            consumer = AIOKafkaConsumer(
                **self.kafka.client_kwargs(), enable_auto_commit=False, isolation_level="read_committed"
            )  # as the forwarder reads: an ingress transaction still open is not forwardable yet
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self.consumer = consumer
        if self.admin is None:
            admin = AIOKafkaAdminClient(**self.kafka.client_kwargs())
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self.admin = admin
        return self.consumer, self.admin

    async def stop(self) -> None:
        consumer, admin, self.consumer, self.admin = self.consumer, self.admin, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()


class Pending(Protocol):
    async def waiting(self, moment: int) -> list[Waiting]: ...


class TickHold:
    """Whether a worker's due ticks wait for the forwarding, said once per change of state.

    Ticks wait while ingress input sent before the clock reading they carry is not forwarded, and at most
    `limit` seconds: a forwarding that is down for good (no worker forwards, a partition that cannot be
    forwarded) must not stop the clock of every type, holds and demotions included. Past the limit the
    worker ticks anyway and says so; what is still waiting is then late when it is forwarded (the late
    warning and the rejected input show it). A check that fails holds the ticks too, within the same limit."""

    def __init__(self, backlog: Pending, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backlog, self.limit, self.clock = backlog, limit, clock
        self.since: float | None = None  # when the ticks began to wait (monotonic), while the forwarding is behind
        self.gave_up = False  # ticking anyway: the forwarding stayed behind past the limit

    @property
    def held_seconds(self) -> float:
        """How long due ticks have waited so far (0 when they do not wait)."""
        return 0.0 if self.since is None or self.gave_up else self.clock() - self.since

    def nothing_due(self) -> None:
        """No tick is due: whatever held them is over (the forwarded input has moved the keys' time on itself,
        the usual end of a restart's backlog), so the hold ends here rather than at the next due tick."""
        if self.since is not None and not self.gave_up:
            log.info("ticks resumed: none is due any more (behind for %.0f s)", self.clock() - self.since)
        self.since, self.gave_up = None, False

    async def holds(self, moment: int) -> bool:
        """Do ticks dated `moment` (the clock reading, Unix seconds) wait for the forwarding?"""
        try:
            waiting = await self.backlog.waiting(moment)
            behind = f"waiting per ingress partition: {'; '.join(map(str, waiting))}" if waiting else ""
        except Exception as error:  # any failure to read it holds, within the limit: never a clock stopped for good
            behind = f"the forwarding's progress could not be read: {error!r}"
        now = self.clock()
        if not behind:
            if self.since is not None:
                log.info("ticks resumed: the forwarding has caught up (behind for %.0f s)", now - self.since)
            self.since, self.gave_up = None, False
            return False
        if self.since is None:
            self.since = now
            log.info(
                "ticks held: ingress input sent before %s may not be forwarded yet, and a tick now would make "
                "it late (%s); holding them for %.0f s at most",
                format_ts(moment),
                behind,
                self.limit,
            )
        if now - self.since < self.limit:
            return True
        if not self.gave_up:
            self.gave_up = True
            log.warning(
                "ticks resume although the forwarding is still behind after %.0f s (%s): the input still waiting "
                "will be late when it is forwarded. Is any worker forwarding (TIERGATE_WORKER_FORWARD)?",
                now - self.since,
                behind,
            )
        return False
