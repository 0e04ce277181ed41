"""The Kafka worker's rules that need no broker: gap-free runs of a partition, the late-input warning, the
broker-outage log, due ticks waiting for the forwarding, the policy its build info names and its warning
without genesis keys."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from tiergate.streams.backlog import TickHold, Waiting
from tiergate.streams.kafka import BrokerLog, KafkaSettings
from tiergate.streams.worker import LateShare, continuing, policy_in_force, warn_without_genesis_keys


@dataclass
class Record:
    offset: int


def records(*offsets: int) -> list[Any]:
    """Stand-ins for aiokafka's records: the rule reads only `record.offset`."""
    return [Record(offset) for offset in offsets]


def offsets(found: list[Any]) -> list[int]:
    return [record.offset for record in found]


def test_a_partition_is_folded_in_offset_order_from_its_next_offset() -> None:
    """From its next offset a partition's run takes the records in offset order and skips redeliveries
    below it; offsets that hold no record (a transaction's markers) are stepped over and counted."""
    run, stepped = continuing(records(8, 9, 10, 11, 13, 14), 10)
    assert (offsets(run), stepped) == ([10, 11, 13, 14], 1)
    run, stepped = continuing(records(5, 6, 7), 10)
    assert (offsets(run), stepped) == ([], 0)
    run, stepped = continuing(records(10, 11, 12), 10)
    assert (offsets(run), stepped) == ([10, 11, 12], 0)
    run, stepped = continuing(records(12, 13, 11, 14), 10)  # 11 arrives after 13: never folded twice or back
    assert (offsets(run), stepped) == ([12, 13, 14], 2)


def test_the_late_warning_is_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    """A share of late input at or over the threshold is warned about once, however many batches; the
    share falling under half of it is said once; the share covers about the last 1,000 events."""
    late = LateShare(0.2)
    with caplog.at_level(logging.INFO, logger="tiergate.streams.worker"):
        for _ in range(10):
            late.add(90, 100)
        assert late.share == pytest.approx(0.9) and late.total == 1000
        for _ in range(20):
            late.add(0, 100)
        assert late.share == 0.0
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "90% of the last 200 input events were late" in lines[0] and "--no-ticks" in lines[0]
    assert lines[1].startswith("late input is back to")


def test_a_broker_outage_is_logged_as_changes_of_state_not_per_retry() -> None:
    """The client's connection errors become one warning when the broker becomes unreachable, summaries
    after 10 s, 30 s, 70 s (doubling intervals), and one line once no error came for 10 s."""
    now = [0.0]
    broker_log = BrokerLog(clock=lambda: now[0])
    logged = []
    for tenth in range(800):  # 80 s of errors, ten a second
        now[0] = tenth / 10
        record = logging.LogRecord(
            "aiokafka.conn", logging.ERROR, "", 0, "Unable connect to node with id %s", (1,), None
        )
        if broker_log.filter(record):
            logged.append((now[0], record.levelname, record.getMessage()))
    assert [at for at, _, _ in logged] == [0.0, 10.0, 30.0, 70.0]
    assert logged[0][1:] == (
        "WARNING",
        "Kafka broker unreachable (Unable connect to node with id 1); retrying, "
        "further connection errors are summarised",
    )
    assert logged[3][2] == "Kafka broker still unreachable after 70 s (701 connection errors)"
    unrelated = logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Topic authorization failed", (), None)
    assert broker_log.filter(unrelated) and unrelated.getMessage() == "Topic authorization failed"
    now[0] = 85.0
    assert broker_log.check() is None  # 5.1 s without an error: not yet
    now[0] = 90.0
    assert broker_log.check() == (
        "Kafka broker reachable again: no connection error for 10 s (unreachable for 80 s, 800 connection errors)"
    )
    assert broker_log.check() is None


def test_the_build_info_names_the_policy_the_log_put_in_force() -> None:
    """The policy a worker's `tiergate_build_info` names is the newest activation among the keys it holds,
    not only a --policy file; a log from before its first activation shows the --policy it folds under."""
    from tiergate.models import fold

    from .builders import Log, policy

    first, second = policy(), policy(policy_version="test-2")
    log = Log().activate(0, first, "20261101T000000Z-aaaa").apply(1, second, "20261102T000000Z-bbbb")
    state, _ = fold(log.models())
    assert policy_in_force(state, None) == ("test-2", second.sha256)
    assert policy_in_force(state, first) == ("test-2", second.sha256)
    before, _ = fold([], first)
    assert policy_in_force(before, first) == ("test-1", first.sha256)
    assert policy_in_force(before, None) == ("", "")


def test_a_worker_without_genesis_keys_warns_that_policy_events_will_be_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tiergate.streams.worker"):
        warn_without_genesis_keys(KafkaSettings(genesis_keys=None))
        warn_without_genesis_keys(KafkaSettings(genesis_keys=Path("genesis.yaml")))
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("TIERGATE_KAFKA_GENESIS_KEYS is not set: policy events will be refused")


class Ingress:
    """A stand-in for the broker's answer: the ingress partitions waiting, or an error."""

    def __init__(self) -> None:
        self.answer: list[Waiting] | Exception = []
        self.asked: list[int] = []

    async def waiting(self, moment: int) -> list[Waiting]:
        self.asked.append(moment)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_due_ticks_wait_for_the_forwarding_within_a_limit_and_say_so_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ticks wait while ingress input sent before their moment is not forwarded, said once when they start
    and once when they resume; a check that fails holds them too; past the limit they go anyway, with one
    warning, and the next catch-up is said once more."""
    now = [1000.0]
    ingress = Ingress()
    hold = TickHold(ingress, limit=300, clock=lambda: now[0])
    behind = [Waiting(TopicPartition("tiergate.actions.v1", 1), 200)]
    with caplog.at_level(logging.INFO, logger="tiergate.streams.backlog"):
        assert not await hold.holds(1_800_000_000) and hold.held_seconds == 0
        ingress.answer = behind
        assert await hold.holds(1_800_000_001)
        now[0] += 5
        assert await hold.holds(1_800_000_006) and hold.held_seconds == 5
        ingress.answer = KafkaConnectionError()
        assert await hold.holds(1_800_000_007)
        ingress.answer = []
        assert not await hold.holds(1_800_000_008) and hold.held_seconds == 0
        ingress.answer = behind
        assert await hold.holds(1_800_000_009)
        now[0] += 300
        assert not await hold.holds(1_800_000_309) and hold.held_seconds == 0  # past the limit: ticking anyway
        assert not await hold.holds(1_800_000_310)
        ingress.answer = []
        assert not await hold.holds(1_800_000_311)
    assert ingress.asked == [
        1_800_000_000,
        1_800_000_001,
        *range(1_800_000_006, 1_800_000_010),
        *range(1_800_000_309, 1_800_000_312),
    ]
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in lines] == ["INFO", "INFO", "INFO", "WARNING", "INFO"]
    assert lines[0][1] == (
        "ticks held: ingress input sent before 2027-01-15T08:00:01Z may not be forwarded yet, and a tick now would "
        "make it late (waiting per ingress partition: tiergate.actions.v1/1: 200); holding them for 300 s at most"
    )
    assert lines[1][1] == "ticks resumed: the forwarding has caught up (behind for 5 s)"
    assert lines[3][1].startswith("ticks resume although the forwarding is still behind after 300 s")
    assert "Is any worker forwarding (TIERGATE_WORKER_FORWARD)?" in lines[3][1]
    assert lines[4][1] == "ticks resumed: the forwarding has caught up (behind for 300 s)"


async def test_a_hold_ends_when_no_tick_is_due_any_more_and_a_failing_check_of_any_kind_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart's backlog, once forwarded, moves the keys' time itself and no tick is due: the hold ends
    there (its gauge back at 0, said once), not an hour later at the next due tick, where ordinary forwarding
    lag would look like a forwarding stuck past the limit. Any error reading the progress holds, within it."""
    now = [1000.0]
    ingress = Ingress()
    hold = TickHold(ingress, limit=300, clock=lambda: now[0])
    ingress.answer = [Waiting(TopicPartition("tiergate.actions.v1", 0), 3)]
    with caplog.at_level(logging.INFO, logger="tiergate.streams.backlog"):
        assert await hold.holds(1_800_000_000)
        now[0] += 4
        hold.nothing_due()
        assert hold.held_seconds == 0
        now[0] += 3600
        hold.nothing_due()
        assert await hold.holds(1_800_003_604) and hold.held_seconds == 0  # a fresh hold, not one 3604 s old
        ingress.answer = RuntimeError("no coordinator")
        now[0] += 10
        assert await hold.holds(1_800_003_614) and hold.held_seconds == 10
    lines = [record.getMessage() for record in caplog.records]
    assert lines[1] == "ticks resumed: none is due any more (behind for 4 s)" and len(lines) == 3
    assert not any(record.levelname == "WARNING" for record in caplog.records)
