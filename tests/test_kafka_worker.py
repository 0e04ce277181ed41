"""The Kafka worker's consumption rules that need no broker: gap-free runs of a partition, the late-input
warning, and the broker-outage log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from tiergate.streams.kafka import BrokerLog
from tiergate.streams.worker import LateShare, in_order


@dataclass
class Message:
    offset: int


@dataclass
class Delivered:
    message: Message


def delivered(*offsets: int) -> list[Any]:
    """Stand-ins for faust's events: the rules read only `event.message.offset`."""
    return [Delivered(Message(offset)) for offset in offsets]


def offsets(events: list[Any]) -> list[int]:
    return [event.message.offset for event in events]


def test_a_partition_is_folded_only_as_far_as_it_continues_without_a_gap() -> None:
    """From its resume point a partition's run takes each next offset in turn, skips redeliveries below
    it, and stops at a gap: what lies beyond the gap must be read again."""
    run, gap = in_order(delivered(8, 9, 10, 11, 13, 14), 10)
    assert (offsets(run), gap) == ([10, 11], True)
    run, gap = in_order(delivered(12, 13, 10, 11, 12), 10)  # 12 and 13 came early
    assert (offsets(run), gap) == ([10, 11, 12], True)
    run, gap = in_order(delivered(5, 6, 7), 10)
    assert (offsets(run), gap) == ([], False)
    run, gap = in_order(delivered(10, 11, 12), 10)
    assert (offsets(run), gap) == ([10, 11, 12], False)


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
