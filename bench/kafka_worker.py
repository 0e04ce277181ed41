"""Benchmark: the tiergate worker against a bare aiokafka consumer on the same topic, and tier-change latency.

    deploy/kafka/broker.sh start && python bench/kafka_worker.py [--events 300000]

1. Throughput. A history (bench/replay.py's generator: 60 action types, 1 h windows, 7 d lookback, late
   and duplicate deliveries) is produced to a fresh events topic. In the same run: a bare consumer
   (`getmany`, each value decoded with the worker's codec) reads it from offset 0 to the end; then a
   `tiergate worker` (a faust agent) folds it, timed from when it reports healthy until its
   tiergate_events_total covers the topic. Target: worker ≥ 0.3 × the bare consumer.
2. Latency. For 40 action types brought to the edge of a promotion, one tick each closes the window
   that promotes it; the time from producing that tick to the tier record being readable on the tier
   map (a consumer tailing it) is recorded; p50 and p99. Target: p99 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tiergate.models.wire import format_ts, parse_ts
from tiergate.streams.codec import decode
from tiergate.streams.kafka import EVENTS, SINGLE_BROKER, TIER_MAP, KafkaSettings, create_topics
from tiergate.streams.policy_file import read_policy

sys.path.insert(0, str(Path(__file__).parent))
from replay import generate

ROOT = Path(__file__).parent.parent
BOOTSTRAP = f"127.0.0.1:{os.environ.get('TIERGATE_KAFKA_PORT', '19092')}"
PARTITIONS = 6


async def produce(topic: str, lines: list[bytes]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        for line in lines:
            key = orjson.loads(line)["action_type"].encode()
            await producer.send(topic, line, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def bare_consumer(topic: str, total: int) -> float:
    """Events/s of aiokafka getmany from offset 0 to the end, decoding each value as the worker does."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    seen, started = 0, time.perf_counter()
    try:
        while seen < total:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                for message in messages:
                    try:  # noqa: SIM105 - the same work as the worker's decode, no more
                        decode(message.value)
                    except ValueError:
                        pass
                seen += len(messages)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


def metric_total(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def start_worker(policy: Path, prefix: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"TIERGATE_KAFKA_BOOTSTRAP": BOOTSTRAP, "TIERGATE_KAFKA_TOPIC_PREFIX": prefix}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiergate.streams.cli",
            "worker",
            "--policy",
            str(policy),
            "--web-port",
            str(port),
            "--data-dir",
            str(log.parent / f"data-{port}"),
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


def free_port() -> int:
    """A port for a web server of this run (several developers may run the benchmark at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(port: int, timeout: float = 60, path: str = "/healthz") -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return time.perf_counter()
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the worker did not become healthy")


def trivial_agent(topic: str, total: int, tmp: Path) -> float:
    """Events/s of a faust agent that only decodes and counts (bench/faust_trivial.py): faust's ceiling."""
    port = free_port()
    log = open(tmp / "trivial.log", "wb")  # noqa: SIM115 - the child process writes it until it ends
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "faust_trivial.py"), topic, str(port)],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = wait_healthy(port, path="/count")
        while _count(port) < total:
            time.sleep(0.1)
        return total / (time.perf_counter() - ready)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _count(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=2) as response:
            return int(json.loads(response.read())["seen"])
    except OSError:
        return 0


def throughput(events: int, tmp: Path) -> dict[str, Any]:
    history, policy = generate(events, 60, 90)
    lines = history.read_bytes().splitlines()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=ROOT / "deploy" / "topics.yaml")
    asyncio.run(create_topics(settings, 1, SINGLE_BROKER))
    topic = settings.topic(EVENTS)
    produced_in = asyncio.run(produce(topic, lines))
    bare = asyncio.run(bare_consumer(topic, len(lines)))
    trivial = trivial_agent(topic, len(lines), tmp)
    port = free_port()
    worker = start_worker(policy, prefix, port, tmp / "worker.log")
    try:
        ready = wait_healthy(port)
        while metric_total(port, "tiergate_events_total") < len(lines):
            time.sleep(0.1)
        done = time.perf_counter()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    rate = len(lines) / (done - ready)
    return {
        "events": len(lines),
        "produce_s": round(produced_in, 1),
        "bare_consumer_events_per_s": round(bare),
        "trivial_faust_agent_events_per_s": round(trivial),
        "worker_events_per_s": round(rate),
        "ratio": round(rate / bare, 3),
        "target_ratio": 0.3,
        "worker_vs_trivial_agent": round(rate / trivial, 3),
    }


def latency_policy(tmp: Path, types: int) -> Path:
    policy = yaml.safe_load((ROOT / "tests" / "golden" / "policy.yaml").read_text())
    policy["action_types"] = {f"k{i:02d}": {} for i in range(types)}
    path = tmp / "latency-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    read_policy(path)
    return path


EDGE_START = parse_ts("2030-01-01T00:00:00Z")  # after the workers' clock ticks: they cannot close these windows


def edge_events(types: int) -> list[bytes]:
    """Per type k00…, the reviews of hours 0-3 (golden policy): passing from 02:00, promoted at the 04:00 close."""
    return [
        orjson.dumps(
            {
                "type": "outcome",
                "event_id": f"{k}-{h}-{n}",
                "ts": format_ts(EDGE_START + h * 3600 + 1800),
                "action_type": k,
                "action_id": f"{k}-{h}-{n}",
                "tier": "crawl",
                "kind": "review",
                "result": "accepted",
            }
        )
        for k in (f"k{i:02d}" for i in range(types))
        for h in range(4)
        for n in range(10)
    ]


def closing_tick(key: str) -> bytes:
    """The tick that closes window 03:00-04:00 of a type at the edge: it is promoted at that close."""
    return orjson.dumps(
        {"type": "tick", "event_id": f"close-{key}", "ts": format_ts(EDGE_START + 4 * 3600 + 900), "action_type": key}
    )


async def latency(types: int, tmp: Path) -> dict[str, Any]:
    policy = latency_policy(tmp, types)
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=ROOT / "deploy" / "topics.yaml")
    await create_topics(settings, 1, SINGLE_BROKER)
    reviews = edge_events(types)
    await produce(settings.topic(EVENTS), reviews)
    port = free_port()
    worker = start_worker(policy, prefix, port, tmp / "latency-worker.log")
    tail = AIOKafkaConsumer(settings.topic(TIER_MAP), bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=0)
    await tail.start()
    await producer.start()
    samples = []
    try:
        await asyncio.to_thread(wait_healthy, port)
        while metric_total(port, "tiergate_events_total") < len(reviews):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        while await tail.getmany(timeout_ms=500):  # drain the initial records
            pass
        for i in range(types):
            key = f"k{i:02d}"
            sent = time.perf_counter()
            await producer.send_and_wait(settings.topic(EVENTS), closing_tick(key), key=key.encode())
            found = False
            while not found:
                for messages in (await tail.getmany(timeout_ms=2000)).values():
                    found = found or any(
                        orjson.loads(m.value)["action_type"] == key and orjson.loads(m.value)["version"] == 1
                        for m in messages
                    )
            samples.append(time.perf_counter() - sent)
    finally:
        await producer.stop()
        await tail.stop()
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    samples.sort()
    return {
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000, 1),
        "max_ms": round(samples[-1] * 1000, 1),
        "target_p99_ms": 1000,
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=300_000)
    args.add_argument("--types", type=int, default=40, help="action types in the latency run")
    options = args.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({"throughput": throughput(options.events, Path(tmp))}, indent=2), flush=True)
        print(json.dumps({"tier_change_latency": asyncio.run(latency(options.types, Path(tmp)))}, indent=2))


if __name__ == "__main__":
    main()
