"""Input waiting in the ingress topics after a restart or a handover is judged on time: a worker's clock
ticks wait until the input sent before the moment they carry has been forwarded (streams/backlog.py)."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
)
from aiokafka.structs import OffsetAndMetadata

from tiergate.models.fold import APPLIED, initial_state, step
from tiergate.models.wire import format_ts
from tiergate.streams.backlog import Backlog, Waiting
from tiergate.streams.codec import decode
from tiergate.streams.forwarder import Forwarder
from tiergate.streams.kafka import ACTIONS, DECISIONS, DLQ, EVENTS, OUTCOMES
from tiergate.streams.kafka_replay import read_topic
from tiergate.streams.policy_file import read_policy

from .kafka_harness import BOOTSTRAP, ROOT, Deployment, free_port, wait_for

pytestmark = pytest.mark.kafka
AGENT_POLICY = ROOT / "examples" / "agent-policy.yaml"  # windows of 2 s, 1 s allowed lateness
TYPE = "refund_up_to_50"


@pytest.fixture
def agents(kafka_broker: None, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment under the example agent's policy (the log carries none: the workers' fallback)."""
    d = Deployment(tmp_path, policy=AGENT_POLICY)
    d.create_topics()
    yield d
    d.stop_all()


def action(event_id: str, ts: int) -> bytes:
    return orjson.dumps(
        {"type": "action", "event_id": event_id, "ts": format_ts(ts), "action_type": TYPE, "action_id": event_id}
        | {"tier": "crawl", "agent": "support-bot"}
    )


async def test_the_backlog_is_the_ingress_records_sent_before_a_moment_and_not_forwarded(agents: Deployment) -> None:
    """An ingress record Kafka dates before the moment and that the forwarding group has not committed past
    is waiting; one dated after it is not; committed offsets, and then the forwarder itself, clear it."""
    now = int(time.time())
    actions, outcomes = (
        TopicPartition(agents.settings.topic(ACTIONS), 2),
        TopicPartition(agents.settings.topic(OUTCOMES), 4),
    )
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:  # records dated by their producers 600 s and 300 s ago
        await producer.send_and_wait(
            actions.topic, action("a1", now - 600), partition=2, timestamp_ms=(now - 600) * 1000
        )
        await producer.send_and_wait(
            actions.topic, action("a2", now - 300), partition=2, timestamp_ms=(now - 300) * 1000
        )
        outcome = {"type": "outcome", "event_id": "a1/review", "ts": format_ts(now - 300), "action_type": TYPE}
        outcome |= {"action_id": "a1", "tier": "crawl", "kind": "review", "result": "accepted"}
        await producer.send_and_wait(
            outcomes.topic, orjson.dumps(outcome), partition=4, timestamp_ms=(now - 300) * 1000
        )
    finally:
        await producer.stop()

    backlog = Backlog(agents.settings, "tiergate-worker")
    try:
        assert await _waiting(backlog, now - 900) == []  # every record was sent after it
        assert await _waiting(backlog, now - 450) == [Waiting(actions, 1)]
        assert await _waiting(backlog, now) == [Waiting(actions, 2), Waiting(outcomes, 1)]

        await _commit(agents, agents.settings.topic("tiergate-worker-forward"), {actions: 1})
        assert await _waiting(backlog, now - 450) == []
        assert await _waiting(backlog, now) == [Waiting(actions, 1), Waiting(outcomes, 1)]

        await _forward_all(agents)
        assert await _waiting(backlog, now) == []
        assert await _waiting(backlog, now + 3600) == []  # nothing left to forward, whatever the moment
    finally:
        await backlog.stop()


async def _waiting(backlog: Backlog, moment: int) -> list[Waiting]:
    """`backlog.waiting(moment)` once the broker has a coordinator for the group (on a fresh broker its
    offsets topic is created on first use: until then it answers that none is available)."""
    for _ in range(60):
        try:
            return await backlog.waiting(moment)
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorForGroupError):
            await asyncio.sleep(0.5)
    return await backlog.waiting(moment)


async def _commit(agents: Deployment, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for a group that has no member, as a forwarder that forwarded up to them would have."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
    finally:
        await consumer.stop()


async def _forward_all(agents: Deployment) -> None:
    """Run the workers' forwarder (alone: no worker folds) until every ingress offset is forwarded."""
    stopping = asyncio.Event()
    forwarding = asyncio.create_task(Forwarder(agents.settings, "tiergate-worker").run(stopping))
    try:
        while not await asyncio.to_thread(agents.forwarded_all):
            assert not forwarding.done(), forwarding.exception()
            await asyncio.sleep(0.5)
    finally:
        stopping.set()
        await forwarding


def test_a_backlog_waiting_through_a_restart_is_folded_on_time(agents: Deployment) -> None:
    """A worker that folded a type's first action stops (SIGTERM); agents go on sending actions, which wait
    in the actions topic. The worker that takes over (forwarding off here, so nothing forwards until the test
    says so) owes ticks two seconds later (2 s windows, 1 s lateness): they wait, and say so, until a
    forwarder has appended the backlog; then every one of its actions folds as applied, none as late.

    Without the wait the new worker's ticks close the backlog's windows first: the test waits for that tick
    or for the hold, whichever comes, so it fails the same way every time when ticks do not wait."""
    first = agents.start_worker()
    agents.produce([action("first", int(time.time()))], topic=ACTIONS)
    wait_for(lambda: _folded_types(agents) == {TYPE}, 60, "the first action folded (its initial decision)")
    agents.kill(first, signal.SIGTERM)  # a snapshot of the key's state, then it leaves

    backlog = asyncio.run(_send_actions(agents, 200))
    earliest = min(orjson.loads(raw)["ts"] for raw in backlog)
    port = free_port()
    agents.start_worker(web_port=port, env={"TIERGATE_WORKER_FORWARD": "false"})
    log = agents.tmp / "worker-1.log"
    wait_for(
        lambda: "ticks held" in log.read_text() or _closed_past(agents, earliest),
        60,
        "the new worker's ticks to be held, or to close the backlog's windows",
        lambda: log.read_text()[-3000:],
    )
    if "ticks held" in log.read_text():  # held until the test forwards: the gauge shows it meanwhile
        wait_for(lambda: _ticks_held(port) > 0, 30, "tiergate_worker_ticks_held_seconds above 0")

    asyncio.run(_forward_all(agents))
    agents.wait_drained()
    late = [raw for raw in _dlq_values(agents) if raw in set(backlog)]
    assert late == [], f"{len(late)} of the backlog's {len(backlog)} actions were judged late"
    assert _results(agents, backlog) == {APPLIED: len(backlog)}
    wait_for(lambda: "ticks resumed" in log.read_text(), 30, "the ticks to resume", lambda: log.read_text()[-3000:])


async def _send_actions(agents: Deployment, count: int) -> list[bytes]:
    """Actions as an agent sends them, each dated when it is sent (Kafka stamps the send time too)."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    await producer.start()
    sent = []
    try:
        for i in range(count):
            sent.append(action(f"b{i}", int(time.time())))
            await producer.send(agents.settings.topic(ACTIONS), sent[-1], key=TYPE.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _ticks_held(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[1]) for line in lines if line.startswith("tiergate_worker_ticks_held_seconds "))


def _folded_types(agents: Deployment) -> set[str]:
    return {orjson.loads(r.value or b"")["action_type"] for r in asyncio.run(read_topic(agents.settings, DECISIONS))}


def _closed_past(agents: Deployment, ts: str) -> bool:
    """Is there a tick in the events topic that closes the window holding `ts` (so makes input of it late)?
    A tick's id names the window boundary it closes windows up to; a window ends on a boundary."""
    for record in asyncio.run(read_topic(agents.settings, EVENTS)):
        event = orjson.loads(record.value or b"")
        if event["type"] == "tick" and event["event_id"].rpartition("/")[2] > ts:
            return True
    return False


def _dlq_values(agents: Deployment) -> list[bytes]:
    return [r.value or b"" for r in asyncio.run(read_topic(agents.settings, DLQ))]


def _results(agents: Deployment, backlog: list[bytes]) -> dict[str, int]:
    """How a fold of the events topic judges the backlog's actions (what the worker judged: it is that fold)."""
    state, wanted, found = initial_state(read_policy(AGENT_POLICY)), set(backlog), dict[str, int]()
    for record in asyncio.run(read_topic(agents.settings, EVENTS)):
        result = step(state, decode(record.value or b"")).result
        if record.value in wanted:
            found[result] = found.get(result, 0) + 1
    return found
