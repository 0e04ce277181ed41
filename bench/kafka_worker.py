"""Benchmark: the tiergate worker against a bare aiokafka consumer on the same topic, and tier-change latency.

    deploy/kafka/broker.sh start && python bench/kafka_worker.py [--events 300000] [--rounds 3] [--profile]

1. Throughput, in alternating rounds. Each round produces a history (bench/replay.py's generator: 60
   action types, 1 h windows, 7 d lookback, late and duplicate deliveries) to a fresh events topic, then
   reads it with each of these, in an order that rotates from round to round:
   - a bare consumer (`getmany`, each value decoded with the worker's codec), from offset 0 to the end;
   - one `tiergate worker` (ticks off), from the moment it folds all six partitions until its
     tiergate_events_total covers the topic;
   - two workers in one group (three partitions each): the combined rate, and whether both finish;
   - the previous worker (a faust agent, `--old-path` names its commit), for at most `--old-seconds`.
   Reported: each reader's median over the rounds, and the median of the per-round ratios worker / bare
   consumer (target ≥ 0.3).
2. Profile (`--profile`): py-spy samples one more worker's run; the share of samples under each part of
   the consumption path is printed.
3. Latency. For 40 action types brought to the edge of a promotion, one event each closes the window
   that promotes it — a tick written to the events topic for half of them, a reporter's outcome written
   to the outcomes topic (forwarded, then folded) for the other half; the time from producing it to the
   tier record being readable on the tier map (a consumer tailing it) is recorded; p50 and p99 of each.
   Target: p99 under 1 s.
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tiergate.models.wire import format_ts, parse_ts
from tiergate.streams.codec import decode
from tiergate.streams.kafka import (
    DEFAULT_TOPICS_FILE,
    EVENTS,
    OUTCOMES,
    SINGLE_BROKER,
    STATE_CHANGELOG,
    TIER_MAP,
    KafkaSettings,
    create_topics,
    read_topics,
    state_changelog,
)
from tiergate.streams.policy_file import read_policy

sys.path.insert(0, str(Path(__file__).parent))
from replay import generate

ROOT = Path(__file__).parent.parent
BOOTSTRAP = f"127.0.0.1:{os.environ.get('TIERGATE_KAFKA_PORT', '19092')}"
PARTITIONS = 6
OLD_PATH = "44cc41b"  # the last commit whose worker consumed through a faust agent (main, after issue 13)


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


def free_port() -> int:
    """A port for a web server of this run (several developers may run the benchmark at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def events_total(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tiergate_events_total{"))


class Workers:
    """Worker processes of one deployment (a topic prefix), started with the given command prefix."""

    def __init__(self, prefix: str, policy: Path, log_dir: Path, app_id: str, env: dict[str, str] | None = None):
        self.prefix, self.policy, self.log_dir, self.app_id = prefix, policy, log_dir, app_id
        self.env = (
            os.environ
            | {
                "TIERGATE_KAFKA_BOOTSTRAP": BOOTSTRAP,
                "TIERGATE_KAFKA_TOPIC_PREFIX": prefix,
                "TIERGATE_KAFKA_TOPICS_FILE": str(DEFAULT_TOPICS_FILE),
                "TIERGATE_WORKER_TICKS": "false",
                "TIERGATE_WORKER_APP_ID": app_id,
            }
            | (env or {})
        )
        self.processes: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self, extra: list[str] | None = None) -> int:
        port = free_port()
        log = open(self.log_dir / f"{self.app_id}-{port}.log", "wb")  # noqa: SIM115 - the child writes it
        args = [sys.executable, "-m", "tiergate.streams.cli", "worker", "--policy", str(self.policy)]
        args += ["--web-port", str(port), *(extra or [])]
        process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append((process, port))
        return port

    def stop(self) -> None:
        for process, _ in self.processes:
            process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def folded(self) -> float:
        """Input events the workers folded: /healthz where it says (a /metrics scrape costs the worker more)."""
        health = [(get_json(port, "/healthz") or {}, port) for _, port in self.processes]
        return sum(h["folded_events"] if "folded_events" in h else events_total(port) for h, port in health)

    def rate(self, total: int, ready: Callable[[], bool], budget: float) -> tuple[float, bool]:
        """Events/s from `ready()` until the workers folded `total` events (or `budget` seconds passed), and
        whether they finished."""
        deadline = time.monotonic() + 120
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in self.processes):
                raise SystemExit(f"workers of {self.app_id} did not start: see {self.log_dir}")
            time.sleep(0.05)
        started = time.perf_counter()
        while (done := self.folded()) < total and time.perf_counter() - started < budget:
            time.sleep(0.25)
        return done / (time.perf_counter() - started), done >= total


def folding_all(ports: list[int]) -> Callable[[], bool]:
    """All six input partitions are being folded (their state read back) by these workers."""

    def ready() -> bool:
        health = [get_json(port, "/healthz") or {} for port in ports]
        return sum(h.get("folding", 0) for h in health) == PARTITIONS

    return ready


async def create_changelog(prefix: str, app_id: str) -> None:
    """The state changelog of a worker group other than the default one (as the definition's changelog)."""
    spec = read_topics(DEFAULT_TOPICS_FILE)[STATE_CHANGELOG]
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        name, config = prefix + state_changelog(app_id), spec.config | SINGLE_BROKER
        await admin.create_topics([NewTopic(name, spec.partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


def new_workers(prefix: str, policy: Path, tmp: Path, count: int, total: int) -> tuple[float, bool]:
    app_id = f"workers{count}"
    asyncio.run(create_changelog(prefix, app_id))
    workers = Workers(prefix, policy, tmp, app_id)
    try:
        ports = [workers.start() for _ in range(count)]
        return workers.rate(total, folding_all(ports), budget=600)
    finally:
        workers.stop()


def old_tree(commit: str, tmp: Path) -> Path | None:
    """The package as it was at `commit` (models and streams under tiergate/), for PYTHONPATH; None outside a
    git checkout."""
    root = tmp / f"old-{commit}"
    if root.exists():
        return root
    archive = subprocess.run(["git", "archive", commit, "models", "streams"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        return None
    (root / "tiergate").mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(root / "tiergate")], input=archive.stdout, check=True)
    return root


def without_rules(policy: Path) -> Path:
    """The policy as the old worker reads it: without the bar rules' fields, which came later (it folds
    v1's rules, a little cheaper per window close than the sequential tests the new worker runs)."""
    raw = yaml.safe_load(policy.read_text())
    raw.pop("promotion", None)
    for field in ("rule", "threshold", "floor", "tripwire"):
        raw.get("demotion", {}).pop(field, None)
    path = policy.with_name(f"v1-{policy.name}")
    path.write_text(yaml.safe_dump(raw))
    return path


def old_path(prefix: str, policy: Path, tmp: Path, total: int, commit: str, budget: float) -> float | None:
    """Events/s of the worker at `commit` (a faust agent), over at most `budget` seconds of folding."""
    tree = old_tree(commit, tmp)
    if tree is None:
        return None
    workers = Workers(prefix, without_rules(policy), tmp, "tiergate-worker", env={"PYTHONPATH": str(tree)})
    try:
        port = workers.start(extra=["--data-dir", str(tmp / f"faust-{prefix}")])
        ready = lambda: (get_json(port, "/healthz") or {}).get("assigned", 0) > 0  # noqa: E731
        return workers.rate(total, ready, budget)[0]
    finally:
        workers.stop()


def one_round(lines: list[bytes], policy: Path, tmp: Path, turn: int, options: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=DEFAULT_TOPICS_FILE)
    asyncio.run(create_topics(settings, 1, SINGLE_BROKER))
    topic, total = settings.topic(EVENTS), len(lines)
    asyncio.run(produce(topic, lines))
    readers: dict[str, Callable[[], Any]] = {
        "bare": lambda: asyncio.run(bare_consumer(topic, total)),
        "worker": lambda: new_workers(prefix, policy, tmp, 1, total),
        "two_workers": lambda: new_workers(prefix, policy, tmp, 2, total),
    }
    if options.old_path:
        readers["old_path"] = lambda: old_path(prefix, policy, tmp, total, options.old_path, options.old_seconds)
    names = list(readers)
    order = names[turn % len(names) :] + names[: turn % len(names)]
    result: dict[str, Any] = {"order": order}
    for name in order:
        result[name] = readers[name]()
        print(f"  round {turn + 1}: {name} {result[name]}", file=sys.stderr, flush=True)
    return result


def throughput(events: int, rounds: int, tmp: Path, options: argparse.Namespace) -> dict[str, Any]:
    history, policy = generate(events, 60, 90)
    lines = history.read_bytes().splitlines()
    results = [one_round(lines, policy, tmp, turn, options) for turn in range(rounds)]
    worker = [r["worker"][0] for r in results]
    pair = [r["two_workers"][0] for r in results]
    bare = [r["bare"] for r in results]
    report: dict[str, Any] = {
        "events": len(lines),
        "rounds": rounds,
        "bare_consumer_events_per_s": round(statistics.median(bare)),
        "worker_events_per_s": round(statistics.median(worker)),
        "ratio": round(statistics.median(w / b for w, b in zip(worker, bare, strict=True)), 3),
        "ratios": [round(w / b, 3) for w, b in zip(worker, bare, strict=True)],
        "target_ratio": 0.3,
        "two_workers_events_per_s": round(statistics.median(pair)),
        "two_workers_finished": f"{sum(r['two_workers'][1] for r in results)} of {rounds} runs",
        "worker_finished": f"{sum(r['worker'][1] for r in results)} of {rounds} runs",
    }
    old = [(r["old_path"], r["bare"]) for r in results if r.get("old_path") is not None]
    if old:
        report["old_path_events_per_s"] = round(statistics.median(o for o, _ in old))
        report["old_path_ratio"] = round(statistics.median(o / b for o, b in old), 3)
    return report


PROFILED = {  # what the profile reports: a frame's name as py-spy prints it -> what it is
    "Worker._fold_batch": "the worker's batch (all of tiergate's per-batch work)",
    "Worker._fold_key": "  the per-key fold through the pipeline",
    "Pipeline.handle": "    decode → admit → step, per event",
    "decode (streams/codec.py": "      decoding (JSON, then the wire models' validation)",
    "step (models/fold.py": "      the core's step (window closes, bars, decisions)",
    "Worker._publish": "  decisions and tier records produced",
    "Worker._reject": "  set-aside input produced",
    "Worker._snapshot_all": "snapshots: outputs awaited, state written, offsets committed",
    "Saved.to_dict": "  a key's state serialised",
    "AIOKafkaConsumer.getmany": "aiokafka's getmany (records handed over)",
    "Fetcher._fetch_requests_routine": "aiokafka's fetcher (fetch requests, decompression, record parsing)",
}


def profile(lines: list[bytes], policy: Path, tmp: Path, seconds: int) -> dict[str, Any]:
    """Sample one worker folding the topic with py-spy; the share of samples under each PROFILED frame."""
    prefix = f"prof{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=DEFAULT_TOPICS_FILE)
    asyncio.run(create_topics(settings, 1, SINGLE_BROKER))
    asyncio.run(produce(settings.topic(EVENTS), lines))
    raw = tmp / "profile.txt"
    workers = Workers(prefix, policy, tmp, "tiergate-worker")
    try:
        port = workers.start()
        ready = folding_all([port])
        while not ready():
            time.sleep(0.05)
        pid = str(workers.processes[0][0].pid)
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy), "record", "--format", "raw", "-o", str(raw), "-d", str(seconds), "--pid", pid]
        subprocess.run(command, check=True, capture_output=True)
    finally:
        workers.stop()
    return summarise(raw)


def summarise(raw: Path) -> dict[str, Any]:
    samples: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in PROFILED:
            if frame in stack:
                samples[frame] += int(count)
    return {"samples": total} | {
        f"{what} ({frame.split(' ')[0]})": f"{100 * samples[frame] / max(total, 1):.1f}%"
        for frame, what in PROFILED.items()
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


def closing_outcome(key: str) -> bytes:
    """A reporter's review dated past 04:00 + the allowed lateness: it too closes window 03:00-04:00."""
    return orjson.dumps(
        {
            "type": "outcome",
            "event_id": f"close-{key}",
            "ts": format_ts(EDGE_START + 4 * 3600 + 900),
            "action_type": key,
            "action_id": f"close-{key}",
            "tier": "crawl",
            "kind": "review",
            "result": "accepted",
        }
    )


async def latency(types: int, tmp: Path) -> dict[str, Any]:
    """Per type, the closing event produced, then the wait for version 1 on the tier map: half of the types
    closed by a tick written to the events topic, half by a reporter's outcome written to the outcomes topic
    (forwarded by the worker, then folded)."""
    policy = latency_policy(tmp, types)
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=DEFAULT_TOPICS_FILE)
    await create_topics(settings, 1, SINGLE_BROKER)
    reviews = edge_events(types)
    await produce(settings.topic(EVENTS), reviews)
    # The edge is dated years ahead so that the workers' clock ticks cannot close it; the forwarder would
    # refuse the reporter's outcome as from the future, so its allowed skew reaches that far.
    skew = str(EDGE_START + 5 * 3600 - int(time.time()))
    env = {"TIERGATE_WORKER_TICKS": "true", "TIERGATE_WORKER_MAX_SKEW": skew}
    workers = Workers(prefix, policy, tmp, "tiergate-worker", env=env)
    port = workers.start()
    tail = AIOKafkaConsumer(settings.topic(TIER_MAP), bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=0)
    await tail.start()
    await producer.start()
    samples: dict[str, list[float]] = {"tick to the events topic": [], "outcome to the outcomes topic": []}
    try:
        while events_total(port) < len(reviews) or (get_json(port, "/healthz") or {}).get("forwarding", 0) < 12:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        while await tail.getmany(timeout_ms=500):  # drain the initial records
            pass
        for i in range(types):
            key = f"k{i:02d}"
            via, topic, event = (
                ("tick to the events topic", EVENTS, closing_tick(key))
                if i % 2 == 0
                else ("outcome to the outcomes topic", OUTCOMES, closing_outcome(key))
            )
            sent = time.perf_counter()
            await producer.send_and_wait(settings.topic(topic), event, key=key.encode())
            found, deadline = False, time.monotonic() + 60
            while not found:
                if time.monotonic() > deadline:
                    raise SystemExit(f"latency: {key}'s tier change never reached the tier map ({via})")
                for messages in (await tail.getmany(timeout_ms=2000)).values():
                    found = found or any(
                        orjson.loads(m.value)["action_type"] == key and orjson.loads(m.value)["version"] == 1
                        for m in messages
                    )
            samples[via].append(time.perf_counter() - sent)
    finally:
        await producer.stop()
        await tail.stop()
        await asyncio.to_thread(workers.stop)
    return {via: percentiles(found) for via, found in samples.items()}


def percentiles(samples: list[float]) -> dict[str, Any]:
    samples = sorted(samples)
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
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--old-path", default=OLD_PATH, help="commit of the faust-agent worker ('' to skip it)")
    args.add_argument("--old-seconds", type=float, default=30, help="time the old path folds for, at most")
    args.add_argument("--profile", type=int, default=0, metavar="SECONDS", help="py-spy a worker for SECONDS")
    args.add_argument("--types", type=int, default=40, help="action types in the latency run")
    options = args.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = throughput(options.events, options.rounds, Path(tmp), options)
        print(json.dumps({"throughput": report}, indent=2), flush=True)
        if options.profile:
            history, policy = generate(options.events, 60, 90)
            found = profile(history.read_bytes().splitlines(), policy, Path(tmp), options.profile)
            print(json.dumps({"profile": found}, indent=2), flush=True)
        print(json.dumps({"tier_change_latency": asyncio.run(latency(options.types, Path(tmp)))}, indent=2))


if __name__ == "__main__":
    main()
