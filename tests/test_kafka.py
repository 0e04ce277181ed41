"""The Kafka runtime on a real Apache Kafka broker (deploy/kafka): workers decide exactly what the pure
fold of the events topic decides, through crashes, rebalances and broker restarts."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tiergate.models.fold import LATE, initial_state, step
from tiergate.models.wire import parse_ts
from tiergate.streams.codec import decode
from tiergate.streams.kafka import DECISIONS, DLQ, EVENTS, STATE_CHANGELOG, TIER_MAP, describe_topics, home_partition
from tiergate.streams.kafka_replay import read_topic, refold_key, replay_topic, saved_state
from tiergate.streams.keyed import KeyedFold, Saved
from tiergate.streams.pipeline import Input, Sink
from tiergate.streams.policy_file import read_policy
from tiergate.streams.signing import OperatorKey, kafka_admission
from tiergate.streams.simulate import history, story_fleet
from tiergate.streams.worker import Worker, WorkerSettings

from .kafka_harness import (
    BOOTSTRAP,
    POLICY,
    ROOT,
    TEST_TOPICS,
    Deployment,
    broker,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.kafka
GOLDEN = ROOT / "tests" / "golden"
NO_TICKS = {"TIERGATE_WORKER_TICK_INTERVAL": "1000000"}


@pytest.fixture
def deployment(kafka_broker: None, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    d.create_topics()
    yield d
    d.stop_all()


@functools.cache
def story(days: int = 24, scale: float = 0.6) -> tuple[bytes, ...]:
    """A realistic history (late, out-of-order and duplicated deliveries, an operator cap) under the golden
    policy, dated before the workers' clock so their ticks come after it."""
    start = parse_ts("2026-10-01T00:00:00Z")
    events = history(story_fleet(start, seed=5, days=days, scale=scale), read_policy(POLICY), start, days * 24)
    return tuple(orjson.dumps(e) for e in events if e["action_type"] != "escalate_to_human")


def records(deployment: Deployment, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    found = asyncio.run(read_topic(deployment.settings, topic))
    return [(r.key, r.value or b"", dict(r.headers)) for r in found]


def decisions_so_far(deployment: Deployment) -> int:
    return len(records(deployment, DECISIONS))


def test_topics_are_created_from_the_one_definition(deployment: Deployment) -> None:
    """`tiergate topics create` makes every topic of the topic definition with its partitions and configs (as
    the tests override them), and `describe` holds the cluster to the production definition itself — with
    `min.insync.replicas` at most each topic's replication factor, so a single broker's topics differ only
    in what the tests override beyond that, with a warning that their writes are on one broker."""
    report, problems = asyncio.run(describe_topics(deployment.settings, TEST_TOPICS))
    assert [p for p in problems if not p.warning] == []
    _, production = asyncio.run(describe_topics(deployment.settings))
    differences = {(p.topic, p.problem) for p in production if not p.warning}
    changelog = deployment.settings.topic(STATE_CHANGELOG)
    assert differences == {(changelog, "segment.ms=10000, defined 3600000")}  # a test override
    assert {p.topic for p in production if p.warning and "replication factor 1" in p.problem} == set(report)
    tier_map = report[deployment.settings.topic(TIER_MAP)]
    assert tier_map["config"]["cleanup.policy"] == "compact" and tier_map["partitions"] == 6
    assert tier_map["replication_factor"] == 1
    assert report[deployment.settings.topic("tiergate.events.v1")]["config"]["retention.ms"] == "-1"


def tiergate(deployment: Deployment, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tiergate ARGV` against the deployment's topics, as an operator's shell runs it (without genesis keys
    unless `env` gives them)."""
    given = {"TIERGATE_KAFKA_BOOTSTRAP": BOOTSTRAP, "TIERGATE_KAFKA_TOPIC_PREFIX": deployment.prefix}
    shell = {name: value for name, value in os.environ.items() if name != "TIERGATE_KAFKA_GENESIS_KEYS"}
    return subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", *argv],
        cwd=ROOT,
        env=shell | given | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_worker_group_of_its_own_gets_its_changelog_from_topics_create(kafka_broker: None, tmp_path: Path) -> None:
    """The documented single-broker setup with TIERGATE_WORKER_APP_ID: `topics create --app-id` (or the
    variable) makes the group's changelog, `describe` checks it without the overrides given again, the
    worker starts, and `replay --from-kafka --verify` checks the state it saved there; a worker whose
    changelog is missing is told the command with its --app-id."""
    deployment = Deployment(tmp_path)
    try:
        single = ("--replication-factor", "1", "--config", "min.insync.replicas=1")
        created = tiergate(deployment, "topics", "create", *single, env={"TIERGATE_WORKER_APP_ID": "ours"})
        assert created.returncode == 0, created.stderr
        assert deployment.settings.topic("ours-state-changelog") in created.stderr
        assert deployment.settings.topic(STATE_CHANGELOG) not in created.stderr
        described = tiergate(deployment, "topics", "describe", "--app-id", "ours")
        assert described.returncode == 0, described.stderr
        assert "warning: 8 topics: replication factor 1, below" in described.stderr
        assert deployment.settings.topic("ours-state-changelog") in orjson.loads(described.stdout)
        missing = tiergate(deployment, "worker", env={"TIERGATE_WORKER_APP_ID": "theirs"})
        assert missing.returncode == 2 and "run `tiergate topics create --app-id theirs`" in missing.stderr
        deployment.start_worker(env={"TIERGATE_WORKER_APP_ID": "ours"})
        log = (tmp_path / "worker-0.log").read_text()
        assert "TIERGATE_KAFKA_GENESIS_KEYS is not set: policy events will be refused" in log
        deployment.produce(story()[:500])
        verify = ("replay", "--from-kafka", "--verify", "--policy", str(POLICY), "-o", "/dev/null")
        ours = {"TIERGATE_WORKER_APP_ID": "ours"}
        wait_for(lambda: tiergate(deployment, *verify, env=ours).returncode == 0, 90, "--verify of the group's state")
    finally:
        deployment.stop_all()


def test_replay_from_kafka_keeps_and_shows_the_set_aside_input_as_file_replay_does(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A log carrying its signed policy, and two events of a type no policy has: `replay --from-kafka`
    without the genesis keys refuses up front naming TIERGATE_KAFKA_GENESIS_KEYS (every activation would be
    refused); with them it writes --rejects, prints the first --show-rejects, and decides and counts what
    file replay of the same events does."""
    key = OperatorKey.read(GOLDEN / "operator.key")
    climb = [line for line in (GOLDEN / "clean_climb" / "events.jsonl").read_bytes().splitlines() if line.strip()]
    signed = [
        orjson.dumps(key.sign(event, "tiergate")) if event["type"] == "policy" else orjson.dumps(event)
        for event in map(orjson.loads, climb)
    ]
    stray = orjson.loads(next(line for line in signed if b'"type":"outcome"' in line))
    strays = [orjson.dumps(stray | {"action_type": "no_such_type", "event_id": f"stray-{n}"}) for n in (1, 2)]
    events = signed[:10] + strays + signed[10:]
    deployment.produce(events)
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(events) + b"\n")

    refused = tiergate(deployment, "replay", "--from-kafka")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds policy activations" in refused.stderr and "set TIERGATE_KAFKA_GENESIS_KEYS to" in refused.stderr

    rejects, out = tmp_path / "rejects.jsonl", tmp_path / "decisions.jsonl"
    genesis = {"TIERGATE_KAFKA_GENESIS_KEYS": str(GOLDEN / "genesis.yaml")}
    kept = ("--rejects", str(rejects), "--show-rejects", "1")
    done = tiergate(deployment, "replay", "--from-kafka", "-o", str(out), *kept, env=genesis)
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line)["event"] for line in rejects.read_text().splitlines()] == [s.decode() for s in strays]
    assert done.stderr.count("unknown action_type 'no_such_type'") == 1  # the first one shown, the other kept
    assert f"2 events did not count (rejected or late), 1 more not shown; kept in {rejects}" in done.stderr

    file_out = tmp_path / "file-decisions.jsonl"
    from_file = tiergate(deployment, "replay", str(history), "-o", str(file_out), "--show-rejects", "1")
    assert from_file.returncode == 0, from_file.stderr

    def per_type(path: Path) -> dict[str, list[str]]:
        decided: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            decided.setdefault(orjson.loads(line)["action_type"], []).append(line)
        return decided

    assert per_type(out) == per_type(file_out) and per_type(out)
    summary = [line.partition(":")[2] for line in done.stderr.splitlines() if line.startswith("replayed ")]
    assert summary == [line.partition(":")[2] for line in from_file.stderr.splitlines() if line.startswith("replayed ")]


def test_the_worker_decides_exactly_what_the_fold_of_the_topic_decides(deployment: Deployment) -> None:
    """Events (with poison, duplicates, late and out-of-order ones) → worker → the decisions topic and the
    compacted tier map equal a pure fold of the events topic as recorded, ticks included; poison goes to
    the DLQ with its reason and the stream goes on; `replay --from-kafka --verify` agrees, and catches a
    forged decision."""
    events = list(story())
    poison = [b'{"type":"action"', b'{"type":"tick","event_id":"x","ts":"2026-10-02T00:00:00Z","action_type":"nope"}']
    deployment.produce(events[:2000] + poison + events[2000:] + events[100:150])  # the last 50: redelivered
    deployment.start_worker()
    deployment.wait_consistent()
    kinds = [orjson.loads(value)["kind"] for _, value, _ in records(deployment, DECISIONS)]
    assert "promote" in kinds and kinds.count("initial") == 4

    def dlq_holds_both() -> bool:  # the DLQ is produced asynchronously: the decisions may be complete first
        reasons = {headers["tiergate-reason"].decode() for _, _, headers in records(deployment, DLQ)}
        return any(r.startswith("malformed JSON") for r in reasons) and any(
            "unknown action_type 'nope'" in r for r in reasons
        )

    wait_for(dlq_holds_both, 30, "the poison events in the DLQ")
    dlq = records(deployment, DLQ)
    assert all(headers["tiergate-origin"].startswith(deployment.prefix.encode()) for _, _, headers in dlq)
    verify = [
        sys.executable,
        "-m",
        "tiergate.streams.cli",
        "replay",
        "--from-kafka",
        "--verify",
        "--policy",
        str(POLICY),
        "--bootstrap",
        BOOTSTRAP,
        "--topic-prefix",
        deployment.prefix,
        "-o",
        "/dev/null",
    ]
    assert subprocess.run(verify, cwd=ROOT, capture_output=True).returncode == 0
    forged = orjson.loads(records(deployment, DECISIONS)[-1][1]) | {"decision_id": "reply_to_ticket/999"}
    _send(deployment, DECISIONS, b"reply_to_ticket", orjson.dumps(forged))
    checked = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 1 and "decision log differs" in checked.stderr


def test_verify_compares_the_saved_state_with_a_refold_and_fails_on_a_skipped_event(deployment: Deployment) -> None:
    """`replay --from-kafka --verify` checks each key's saved state, not only the decisions: a changelog
    record that claims an input offset but whose windows miss one event before it (what a skipped offset
    leaves behind) fails it with the key named, and so does one that counts an event too few."""
    deployment.produce(list(story())[:4000])
    deployment.kill(_fold_then_stop(deployment), signal.SIGTERM)
    assert _verify(deployment).returncode == 0
    deployment.produce(list(story())[:3])  # redelivered after the last snapshot: no saved state covers them
    behind = _verify(deployment)
    assert behind.returncode == 0 and "are not checked: no saved state covers them yet" in behind.stderr
    assert "as far as the workers' last snapshots reach" in behind.stderr
    key = b"reply_to_ticket"
    saved = asyncio.run(saved_state(deployment.settings))[key]
    covered = [r for r in asyncio.run(read_topic(deployment.settings, EVENTS)) if r.key == key]
    covered = [r for r in covered if r.offset <= saved["offset"]]
    outcome = max(i for i, r in enumerate(covered) if orjson.loads(r.value or b"")["type"] == "outcome")
    fold = KeyedFold(read_policy(POLICY), kafka_admission(deployment.settings.deployment, None))
    skipped = refold_key(fold, key, covered[:outcome] + covered[outcome + 1 :])
    assert skipped is not None and skipped.to_dict() != saved["state"], "the planted skip must change the state"
    home = home_partition(key, 6)
    _send(deployment, STATE_CHANGELOG, key, orjson.dumps(saved | {"state": skipped.to_dict()}), home)
    checked = _verify(deployment)
    assert checked.returncode == 1 and "reply_to_ticket: saved state at input offset" in checked.stderr
    assert "differs from a re-fold of the topic up to it" in checked.stderr
    _send(deployment, STATE_CHANGELOG, key, orjson.dumps(saved | {"folded": saved["folded"] - 1}), home)
    checked = _verify(deployment)
    assert checked.returncode == 1 and "events lost" in checked.stderr


def _fold_then_stop(deployment: Deployment) -> subprocess.Popen[bytes]:
    worker = deployment.start_worker(env=NO_TICKS)  # keep the story's windows open: a tick would close them all
    deployment.wait_consistent()
    return worker


def _verify(deployment: Deployment) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tiergate.streams.cli", "replay", "--from-kafka", "--verify", "-o", "/dev/null"]
    options = ["--policy", str(POLICY), "--bootstrap", BOOTSTRAP, "--topic-prefix", deployment.prefix]
    return subprocess.run(command + options, cwd=ROOT, capture_output=True, text=True)


def test_a_worker_killed_mid_stream_restarts_without_loss_or_double_counting(deployment: Deployment) -> None:
    """SIGKILL while folding, restart: the table recovers from its changelog, inputs already applied are
    skipped by their stored offsets, and the outputs equal the reference fold."""
    deployment.produce(story())
    worker = deployment.start_worker()
    wait_for(lambda: decisions_so_far(deployment) >= 6, 60, "the first promotions")
    deployment.kill(worker, signal.SIGKILL)
    assert deployment.differences(), "the worker finished before it was killed: the test proves nothing"
    deployment.start_worker()
    deployment.wait_consistent()


def test_a_second_worker_joining_and_leaving_rebalances_without_loss(deployment: Deployment) -> None:
    """A rebalance moves partitions and their table state between workers; the outputs stay exact."""
    deployment.produce(story())
    deployment.start_worker()
    wait_for(lambda: decisions_so_far(deployment) >= 6, 60, "the first promotions")
    second = deployment.start_worker()
    time.sleep(4)
    deployment.kill(second, signal.SIGTERM)
    deployment.wait_consistent()


def test_workers_ride_out_a_broker_restart(deployment: Deployment) -> None:
    """Stop the broker while the worker folds, start it again: the worker reconnects by itself, and logs
    the outage as a change of state (unreachable, reachable again)."""
    deployment.produce(story())
    deployment.start_worker()
    wait_for(lambda: decisions_so_far(deployment) >= 6, 60, "the first promotions")
    broker("stop")
    time.sleep(2)
    broker("start")
    deployment.wait_consistent(timeout=150)
    log = deployment.tmp / "worker-0.log"
    wait_for(lambda: "Kafka broker reachable again" in log.read_text(), 30, "the worker to log the broker back")
    assert log.read_text().count("Kafka broker unreachable") == 1


def test_a_worker_stops_on_sigterm_while_the_broker_is_down_and_logs_the_outage_not_each_retry(
    deployment: Deployment,
) -> None:
    """With the broker stopped under it, a worker logs one warning when the broker becomes unreachable and
    a summary after 10 s, not a line per retry (dozens a second), and SIGTERM makes it exit within its
    stop timeout although the Kafka client's own stop waits on the unreachable broker."""
    worker = deployment.start_worker(env={"TIERGATE_WORKER_STOP_TIMEOUT": "8"})
    log = deployment.tmp / "worker-0.log"
    quiet = log.read_text().count("\n")
    broker("stop")
    try:
        time.sleep(12)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)  # raises if it does not exit
    finally:
        broker("start")
    outage = log.read_text().splitlines()[quiet:]
    assert sum("Kafka broker unreachable" in line for line in outage) == 1
    assert any("Kafka broker still unreachable after 10 s" in line for line in outage)
    assert sum("[ERROR]" in line or "[WARNING]" in line for line in outage) < 10, "\n".join(outage[-20:])
    assert not any("Unclosed" in line for line in outage), "a Kafka client was left open at exit"


def test_a_fresh_consumer_of_the_compacted_tier_map_sees_the_latest_record_per_key(deployment: Deployment) -> None:
    """After compaction (forced within seconds by the tests' topic settings) a consumer reading from the
    beginning gets exactly one record per key: the newest."""
    topic = deployment.settings.topic(TIER_MAP)
    for version in range(1, 51):
        for key in (b"a", b"b", b"c"):
            _send(deployment, TIER_MAP, key, orjson.dumps({"action_type": key.decode(), "version": version}))
    time.sleep(11)  # past segment.ms: the next record of each partition rolls its segment; the old one is cleanable
    rolls = [(f"roll-{p}".encode(), p) for p in range(6)]
    for key, partition in rolls:
        _send(deployment, TIER_MAP, key, orjson.dumps({"action_type": key.decode(), "version": 1}), partition)
    expected = sorted([(b"a", 50), (b"b", 50), (b"c", 50)] + [(key, 1) for key, _ in rolls])

    def compacted() -> bool:
        seen = [(k, orjson.loads(v)["version"]) for k, v, _ in records(deployment, TIER_MAP)]
        return sorted(seen) == expected  # type: ignore[type-var]

    wait_for(compacted, 60, f"compaction of {topic}")


def _send(deployment: Deployment, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        try:
            await producer.send_and_wait(deployment.settings.topic(topic), value, key=key, partition=partition)
        finally:
            await producer.stop()

    asyncio.run(send())


def on_time(events: tuple[bytes, ...]) -> list[bytes]:
    """The story without its deliberately late deliveries: a history whose own fold has no late event
    (a late event changes no state, so the decisions stay the same)."""
    policy = read_policy(POLICY)
    state = initial_state(policy)
    return [raw for raw in events if step(state, decode(raw)).result != LATE]


def _backfill(deployment: Deployment, events: list[bytes], tmp: Path) -> None:
    history = tmp / "history.jsonl"
    history.write_bytes(b"\n".join(events) + b"\n")
    command = [sys.executable, "-m", "tiergate.streams.cli", "backfill", str(history), "--bootstrap", BOOTSTRAP]
    done = subprocess.run([*command, "--topic-prefix", deployment.prefix], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _late(deployment: Deployment) -> int:
    return asyncio.run(replay_topic(deployment.settings, read_policy(POLICY))).replay.results["late"]


def _ticks(deployment: Deployment) -> int:
    return sum(orjson.loads(value)["type"] == "tick" for _, value, _ in records(deployment, EVENTS))


def test_a_backfill_with_the_ticks_off_lands_with_no_late_event(deployment: Deployment, tmp_path: Path) -> None:
    """With the worker started --no-ticks, `tiergate backfill` produces a history while it runs and
    every event lands on time; restarted with ticks, the worker ticks the types whose state it read back,
    after the history, and the outputs still equal the reference fold, with no late event."""
    worker = deployment.start_worker(env={"TIERGATE_WORKER_TICKS": "false"})
    _backfill(deployment, on_time(story()), tmp_path)
    deployment.wait_consistent()
    assert _ticks(deployment) == 0 and _late(deployment) == 0
    deployment.kill(worker, signal.SIGTERM)
    deployment.start_worker()
    wait_for(lambda: _ticks(deployment) > 0, 30, "the workers' first ticks")
    deployment.wait_consistent()
    assert _late(deployment) == 0


def test_history_produced_after_the_ticks_turns_late_and_the_worker_warns(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A worker that ticks closes each type's windows up to its clock once the type has an event: the rest
    of a history produced after that is late (all but the read-only type's events), and the worker warns
    once in its log and in tiergate_worker_late_share."""
    port = free_port()
    deployment.start_worker(web_port=port)
    history = on_time(story())
    firsts = {orjson.loads(raw)["action_type"]: raw for raw in reversed(history)}
    deployment.produce(firsts.values())
    wait_for(lambda: _ticks(deployment) >= len(firsts), 30, "the workers' first tick of every type")
    rest = [raw for raw in history if raw not in set(firsts.values())]
    _backfill(deployment, rest, tmp_path)
    deployment.wait_consistent()
    evaluated = [raw for raw in rest if orjson.loads(raw)["action_type"] != "lookup_order"]
    assert _late(deployment) >= 0.99 * len(evaluated)
    log = (tmp_path / "worker-0.log").read_text()
    assert log.count("input events were late (their windows had closed)") == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    share = next(line for line in metrics.splitlines() if line.startswith("tiergate_worker_late_share "))
    assert float(share.split()[1]) > 0.5


def test_two_workers_started_together_on_a_backlog_both_finish(deployment: Deployment) -> None:
    """Two workers that join one group at once over a backlog on six partitions (three partitions each, and
    a rebalance while the first already folds) both get to the end: every offset folded exactly once."""
    deployment.produce(story())
    first, second = deployment.start_worker(), deployment.start_worker()
    deployment.wait_consistent(timeout=120)
    assert first.poll() is None and second.poll() is None


def test_offsets_taken_by_transaction_markers_are_stepped_over_and_aborted_input_never_counts(
    deployment: Deployment,
) -> None:
    """Input produced in Kafka transactions leaves offsets that hold no record (the markers): the worker
    reads each gap again once, steps over it when the broker confirms it, and folds everything after it;
    the input of an aborted transaction counts neither for the worker nor for replay."""
    events = list(story())
    aborted = [orjson.dumps(orjson.loads(raw) | {"event_id": f"aborted-{i}"}) for i, raw in enumerate(events[:300])]
    asyncio.run(_produce_in_transactions(deployment, events[:3000], aborted))
    deployment.produce(events[3000:])
    port = free_port()
    deployment.start_worker(web_port=port)
    deployment.wait_consistent()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    gaps = next(line for line in lines if line.startswith("tiergate_worker_input_gaps_total"))
    assert float(gaps.split()[1]) > 0, "no transaction marker was met: the test proves nothing"
    read = {orjson.loads(r.value or b"")["event_id"] for r in asyncio.run(read_topic(deployment.settings, EVENTS))}
    assert not any(event_id.startswith("aborted-") for event_id in read) and len(read) > len(events) / 2


async def _produce_in_transactions(deployment: Deployment, committed: list[bytes], aborted: list[bytes]) -> None:
    """`committed` in transactions of 500 events, then `aborted` in one transaction that is aborted."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=f"{deployment.prefix}tx")
    await producer.start()
    topic = deployment.settings.topic(EVENTS)
    try:
        for start in range(0, len(committed), 500):
            async with producer.transaction():
                for raw in committed[start : start + 500]:
                    await producer.send(topic, raw, key=orjson.loads(raw)["action_type"].encode())
        await producer.begin_transaction()
        for raw in aborted:
            await producer.send(topic, raw, key=orjson.loads(raw)["action_type"].encode())
        await producer.flush()
        await producer.abort_transaction()
    finally:
        await producer.stop()


class FailsOnce(KeyedFold):
    """The worker's fold, except that it raises once, for `name`, after `after` of its events were folded."""

    def __init__(self, name: str, after: int) -> None:
        super().__init__(read_policy(POLICY), kafka_admission("tiergate", None))
        self.name, self.after, self.failed_at = name, after, None

    def fold(self, name: str, saved: Saved, records: Iterable[Input], sink: Sink) -> Saved:
        if name == self.name and self.failed_at is None and saved.folded >= self.after:
            self.failed_at = saved.offset
            raise RuntimeError("a fold that fails once")
        return super().fold(name, saved, records, sink)


async def test_a_fold_that_fails_is_folded_again_from_the_last_snapshot_while_other_partitions_go_on(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """When a key's fold raises, its partition forgets its unsnapshotted state and folds again from the last
    snapshot after a backoff, while the other partitions go on folding; the outputs and the saved state end
    exactly as the reference fold has them (nothing lost, nothing twice)."""
    events = list(story())
    producing = asyncio.create_task(asyncio.to_thread(deployment.produce, events, per_second=2500))
    fold = FailsOnce("reply_to_ticket", after=1500)
    settings = WorkerSettings(web_port=free_port(), ticks=False, snapshot_interval=1.0)
    worker = Worker(read_policy(POLICY), settings, deployment.settings, keyed=fold)
    running = asyncio.create_task(worker.run())
    try:
        while worker.failures == 0:
            await asyncio.sleep(0.05)
        failed = home_partition(b"reply_to_ticket", 6)
        others = _folded_except(worker, "reply_to_ticket")
        while failed not in worker.owned:
            await asyncio.sleep(0.05)
        assert _folded_except(worker, "reply_to_ticket") > others, "the other partitions waited for the failed one"
        await producing
        await asyncio.to_thread(deployment.wait_consistent)
    finally:
        worker.stop()
        await running
    assert worker.failures == 1
    assert any("folding it again from its last snapshot" in r.getMessage() for r in caplog.records)


def _folded_except(worker: Worker, name: str) -> int:
    return sum(n for (action_type, _), n in worker.tallies.events.items() if action_type != name)
