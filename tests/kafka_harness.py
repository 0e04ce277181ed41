"""The real local broker (deploy/kafka/broker.sh) and tiergate workers as subprocesses, for the Kafka tests.

Each test gets its own topic prefix (and so its own topics, consumer group and changelog), so tests
never see each other's records on the one broker.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
)

from tiergate.streams.kafka import (
    ACTIONS,
    DECISIONS,
    DEFAULT_TOPICS_FILE,
    DLQ,
    EVENTS,
    OUTCOMES,
    SINGLE_BROKER,
    KafkaSettings,
    create_topics,
    read_topics,
)
from tiergate.streams.kafka_replay import read_topic, replay_topic, verify, verify_state
from tiergate.streams.policy_file import read_policy

from .test_restart import free_port

ROOT = Path(__file__).parent.parent
BROKER = ROOT / "deploy" / "kafka" / "broker.sh"
BOOTSTRAP = f"127.0.0.1:{os.environ.get('TIERGATE_KAFKA_PORT', '19092')}"
POLICY = ROOT / "tests" / "golden" / "policy.yaml"
# What the tests override of the topic definition's production settings: one broker, and segments rolled and
# compacted within seconds (the tier-map tests watch compaction happen).
TEST_TOPICS = SINGLE_BROKER | {
    "segment.ms": "10000",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
}


def kafka_ports(count: int) -> list[int]:
    """Free ports for broker listeners below the machine's ephemeral range (32768–60999 here): on an
    ephemeral port, a client's reconnects can take the port while the broker restarts."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    found: list[int] = []
    for port in random.sample(range(20000, min(low, 32768)), 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"no {count} free ports between 20000 and {low}")


def broker(action: str) -> None:
    subprocess.run([str(BROKER), action], check=True, cwd=ROOT)


def broker_running() -> bool:
    return subprocess.run([str(BROKER), "status"], capture_output=True, cwd=ROOT).returncode == 0


@dataclass
class Deployment:
    """One isolated tiergate deployment on the shared broker: its topics, its workers."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)  # extra TIERGATE_WORKER_* settings
    policy: Path | None = POLICY  # for logs that begin before their first activation; None: the log carries it

    @property
    def settings(self) -> KafkaSettings:
        """The deployment's settings as its workers read them (genesis keys included, when they are given)."""
        genesis = self.worker_env.get("TIERGATE_KAFKA_GENESIS_KEYS")
        return KafkaSettings(
            bootstrap=BOOTSTRAP,
            topic_prefix=self.prefix,
            topics_file=DEFAULT_TOPICS_FILE,
            genesis_keys=None if genesis is None else Path(genesis),
        )

    def create_topics(self) -> None:
        asyncio.run(create_topics(self.settings, 1, TEST_TOPICS))

    def produce(
        self,
        events: Iterable[bytes],
        raw_keys: Iterable[bytes] | None = None,
        per_second: float | None = None,
        topic: str | Callable[[bytes], str] = EVENTS,
    ) -> int:
        """Produce events keyed by their action type (or by `raw_keys`), as the SDK does, to `topic` (or the
        topic it names for each event); at most `per_second` of them a second if given (a live stream rather
        than a backlog)."""
        keys = None if raw_keys is None else list(raw_keys)
        to = topic if callable(topic) else lambda raw: str(topic)
        return asyncio.run(self._produce(list(events), keys, per_second, to))

    async def _produce(
        self, events: list[bytes], keys: list[bytes] | None, per_second: float | None, to: Callable[[bytes], str]
    ) -> int:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        await producer.start()
        started = time.monotonic()
        try:
            for i, raw in enumerate(events):
                key = keys[i] if keys is not None else _key_of(raw)
                await producer.send(self.settings.topic(to(raw)), raw, key=key)
                if per_second is not None:
                    await asyncio.sleep(max(0.0, started + i / per_second - time.monotonic()))
            await producer.flush()
        finally:
            await producer.stop()
        return len(events)

    def start_worker(
        self, web_port: int | None = None, bootstrap: str = BOOTSTRAP, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        port = web_port or free_port()
        given = {"TIERGATE_KAFKA_BOOTSTRAP": bootstrap, "TIERGATE_KAFKA_TOPIC_PREFIX": self.prefix}
        env = os.environ | self.worker_env | given | (env or {})
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiergate.streams.cli",
                "worker",
                *([] if self.policy is None else ["--policy", str(self.policy)]),
                "--web-port",
                str(port),
                "--loglevel",
                os.environ.get("TIERGATE_TEST_WORKER_LOGLEVEL", "info"),  # debug: every Kafka request
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        wait_for(lambda: _healthy(port) or process.poll() is not None, 60, "worker health")
        assert process.poll() is None, (self.tmp / f"worker-{len(self.workers) - 1}.log").read_text()[-3000:]
        return process

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        process.send_signal(sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def differences(self) -> list[str]:
        """Differences between a reference fold of the events topic and what the workers recorded: the
        decisions, the tier map and each key's saved state (`replay --from-kafka --verify`)."""

        async def check() -> list[str]:
            reference = await replay_topic(self.settings, None if self.policy is None else read_policy(self.policy))
            found = await verify(self.settings, reference) + await verify_state(self.settings, reference)
            return [f"{d.action_type}: {d.problem}" for d in found]

        return asyncio.run(check())

    def partitions(self, name: str) -> list[TopicPartition]:
        """A defined topic's partitions (the count from the topic definition, not the client's metadata)."""
        count = read_topics(self.settings.topics_file)[name].partitions
        return [TopicPartition(self.settings.topic(name), p) for p in range(count)]

    def committed_all(self) -> bool:
        """Has the workers' consumer group committed every input offset (the end of each partition)?"""
        return self._group_at_end("tiergate-worker", self.partitions(EVENTS))

    def forwarded_all(self) -> bool:
        """Has the workers' forwarding group committed every offset of the ingress topics?"""
        return self._group_at_end("tiergate-worker-forward", self.partitions(ACTIONS) + self.partitions(OUTCOMES))

    def _group_at_end(self, group: str, partitions: list[TopicPartition]) -> bool:
        """Has `group` committed the end of every partition? Not yet while the broker is still electing the
        group's coordinator (a group that has just started, on a loaded machine)."""

        async def check() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
            consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, isolation_level="read_committed")
            await admin.start()
            await consumer.start()
            try:
                committed = await admin.list_consumer_group_offsets(self.settings.topic(group))
                ends = await consumer.end_offsets(partitions)
                return all(ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp]) for tp in partitions)
            except (GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError, CoordinatorLoadInProgressError):
                return False
            finally:
                await consumer.stop()
                await admin.close()

        return asyncio.run(check())

    def output_offsets(self) -> tuple[int, ...]:
        """The end offsets of the decisions and rejected-input topics (they stop moving once all is out)."""

        async def ends() -> tuple[int, ...]:
            consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
            await consumer.start()
            try:
                partitions = self.partitions(DECISIONS) + self.partitions(DLQ)
                found = await consumer.end_offsets(partitions)
                return tuple(found[tp] for tp in partitions)
            finally:
                await consumer.stop()

        return asyncio.run(ends())

    def wait_drained(self, timeout: float = 90) -> None:
        """Until every input offset is committed (so folded) and the output topics have stopped growing."""
        wait_for(self.committed_all, timeout, "the workers to commit every input offset")
        last: tuple[int, ...] = ()

        def settled() -> bool:
            nonlocal last
            now, last = self.output_offsets(), last
            done, last = now == last, now
            return done

        wait_for(settled, timeout, "the output topics to stop growing")

    def outcome(self, out: Any) -> Any:
        """Fill a contract `Outcome` from the decisions and rejected-input topics."""
        for record in asyncio.run(read_topic(self.settings, DECISIONS)):
            line = (record.value or b"").decode()
            out.decisions[orjson.loads(line)["action_type"]].append(line)
        for record in asyncio.run(read_topic(self.settings, DLQ)):
            headers = dict(record.headers)
            out.rejected.append(
                (headers["tiergate-result"].decode(), headers["tiergate-reason"].decode(), record.value or b"")
            )
        return out

    def wait_consistent(self, timeout: float = 90) -> None:
        """Poll until the recorded decisions and tier map equal the reference fold (workers catch up)."""
        last: list[str] = []

        def consistent() -> bool:
            nonlocal last
            last = self.differences()
            return not last

        wait_for(consistent, timeout, "decisions equal to the reference fold", lambda: "; ".join(last[:5]))


def _key_of(raw: bytes) -> bytes:
    try:
        return str(orjson.loads(raw)["action_type"]).encode()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return b"unknown"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str, detail=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}. {detail()}")
