"""A soak of the Kafka runtime on the real broker: a history is produced as a live stream while workers
join, leave (SIGTERM) and die (SIGKILL) over and over; afterwards every input offset must have been
folded exactly once — each key's saved state counts the events it folded, checked against the topic —
and the decisions must equal the reference fold."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import threading
import time

import pytest

from tiergate.streams.kafka import EVENTS, home_partition
from tiergate.streams.kafka_replay import read_topic, saved_state

from .kafka_harness import Deployment
from .test_kafka import deployment, story

pytestmark = pytest.mark.kafka
__all__ = ["deployment"]  # the fixture, shared with test_kafka

Process = subprocess.Popen[bytes]
CYCLES = 14  # joins, leaves and kills
PER_SECOND = 220  # the story's 19k events over about 90 s: the cycles happen while input streams in


def test_every_input_offset_is_folded_exactly_once_through_joins_leaves_and_kills(deployment: Deployment) -> None:
    """While a history streams in, workers join, leave and are killed 14 times (a seeded schedule); then
    each key's saved state has folded exactly the events of the topic up to its input offset, that offset
    is the key's last, and the decisions and tier map equal the reference fold."""
    events = list(story())
    producer = threading.Thread(target=deployment.produce, args=(events,), kwargs={"per_second": PER_SECOND})
    producer.start()
    alive = [deployment.start_worker()]
    schedule = random.Random(13)
    for _ in range(CYCLES):
        time.sleep(schedule.uniform(3.0, 6.0))
        alive = _change(deployment, alive, schedule)
    producer.join()
    if len(alive) < 2:
        alive.append(deployment.start_worker())
    deployment.wait_consistent(timeout=120)
    assert _not_folded_exactly_once(deployment) == []


def _change(deployment: Deployment, alive: list[Process], schedule: random.Random) -> list[Process]:
    """One step of the schedule: a worker joins (up to three), leaves, or is killed (one always remains,
    or is restarted at once after a kill)."""
    move = schedule.choice(["join", "leave", "kill"] if len(alive) < 3 else ["leave", "kill"])
    if move == "join":
        return [*alive, deployment.start_worker()]
    victim = schedule.choice(alive)
    deployment.kill(victim, signal.SIGTERM if move == "leave" and len(alive) > 1 else signal.SIGKILL)
    rest = [worker for worker in alive if worker is not victim]
    return rest or [deployment.start_worker()]


def _not_folded_exactly_once(deployment: Deployment) -> list[str]:
    """Per key: the events it folded against the topic (all of them, each once), and its last offset."""
    records = asyncio.run(read_topic(deployment.settings, EVENTS))
    saved = asyncio.run(saved_state(deployment.settings))
    per_key: dict[bytes, list[int]] = {}
    for record in records:
        if record.key and record.partition == home_partition(record.key, 6):
            per_key.setdefault(record.key, []).append(record.offset)
    wrong = []
    for key, offsets in sorted(per_key.items()):
        held = saved.get(key, {})
        if held.get("folded") != len(offsets) or held.get("offset") != offsets[-1]:
            wrong.append(
                f"{key.decode()}: folded {held.get('folded')} of {len(offsets)} events, "
                f"up to offset {held.get('offset')} of {offsets[-1]}"
            )
    return wrong
