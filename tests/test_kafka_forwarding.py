"""The ingress topics on the real broker: agents' actions and reporters' outcomes are forwarded into the one
input log exactly once, through worker kills, and what an ingress topic does not take never reaches it."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import urllib.request
from collections import Counter, defaultdict

import orjson
import pytest

from tiergate.models.wire import parse_ts
from tiergate.streams.forwarder import Admitted, Refused, admit
from tiergate.streams.kafka import ACTIONS, DLQ, EVENTS, OUTCOMES
from tiergate.streams.kafka_replay import read_topic

from .kafka_harness import Deployment, free_port, wait_for
from .test_kafka import deployment, story

pytestmark = pytest.mark.kafka
__all__ = ["deployment"]  # the fixture, shared with test_kafka

OVERRIDE = orjson.dumps(
    {
        "type": "override",
        "event_id": "slipped-in",
        "ts": "2026-10-02T00:00:00Z",
        "action_type": "reply_to_ticket",
        "op": "promote",
        "actor": "support-bot",
        "reason": "I am doing fine",
    }
)
TICK = orjson.dumps({"type": "tick", "event_id": "t", "ts": "2026-10-02T00:00:00Z", "action_type": "reply_to_ticket"})


def ingress_of(raw: bytes) -> str:
    """Where a producer of each role writes an event: actions by agents, outcomes by reporters; the rest
    (ticks, overrides, policy events) is the workers' and operators', straight into the events topic —
    but for the override an agent slips into the actions topic and the tick a reporter slips into its own."""
    if raw in (OVERRIDE, TICK):
        return ACTIONS if raw == OVERRIDE else OUTCOMES
    kind = orjson.loads(raw)["type"]
    return ACTIONS if kind == "action" else OUTCOMES if kind in ("outcome", "checkpoint") else EVENTS


def test_an_ingress_topic_admits_only_its_own_types() -> None:
    """The actions topic takes actions, the outcomes topic outcomes and checkpoints; an override, a tick or
    a record that is not an event is refused with a reason that says where it belongs."""
    action = orjson.dumps({"type": "action", "action_type": "reply_to_ticket"})
    outcome = orjson.dumps({"type": "outcome", "action_type": "reply_to_ticket"})
    assert admit(ACTIONS, action) == Admitted("reply_to_ticket")
    assert admit(OUTCOMES, outcome) == Admitted("reply_to_ticket")
    refused = admit(ACTIONS, OVERRIDE)
    assert isinstance(refused, Refused) and "takes actions only" in refused.reason and "signed" in refused.reason
    assert isinstance(admit(OUTCOMES, TICK), Refused)
    assert isinstance(admit(ACTIONS, outcome), Refused)
    assert isinstance(admit(ACTIONS, b"{not json"), Refused)
    assert isinstance(admit(ACTIONS, orjson.dumps({"type": "action", "action_type": "no spaces"})), Refused)
    dated = {"type": "action", "action_type": "reply_to_ticket", "ts": "2099-01-01T00:00:00Z"}
    future = admit(ACTIONS, orjson.dumps(dated), now=parse_ts("2026-11-29T21:00:00Z"))
    assert isinstance(future, Refused) and future.reason.startswith(
        "future: ts 2099-01-01T00:00:00Z is more than 300 s"
    )
    assert admit(ACTIONS, orjson.dumps(dated), now=parse_ts("2098-12-31T23:58:00Z")) == Admitted("reply_to_ticket")
    huge = admit(ACTIONS, orjson.dumps({"type": "action", "action_type": "reply_to_ticket", "pad": "x" * 70_000}))
    assert isinstance(huge, Refused) and "over the 65536 byte limit" in huge.reason


def test_every_ingress_record_is_appended_exactly_once_in_order_through_worker_kills(deployment: Deployment) -> None:
    """The story goes to the ingress topics (ticks and overrides to the events topic) in five parts; after
    each of the first four, a worker starts forwarding the backlog and is killed (SIGKILL) within a moment
    of its first forwarded record, mid-batch; the fifth is forwarded by a worker left running. Afterwards
    each admitted ingress record is in the events topic exactly once, each ingress partition's records in
    their order, the refused ones (an override slipped into the actions topic, a tick into the outcomes
    topic) only in the DLQ, and the fold of the events topic equals what the workers recorded."""
    events = list(story())
    planted = [*events[:2000], OVERRIDE, *events[2000:4000], TICK, *events[4000:]]
    schedule = random.Random(16)
    parts = [planted[i * len(planted) // 5 : (i + 1) * len(planted) // 5] for i in range(5)]
    for part in parts[:4]:
        deployment.produce(part, topic=ingress_of)
        port = free_port()
        worker = deployment.start_worker(web_port=port)
        wait_for(lambda: _forwarded(port) > 0, 60, "the worker's first forwarded record")  # noqa: B023
        time.sleep(schedule.uniform(0.0, 0.3))
        deployment.kill(worker, signal.SIGKILL)
    deployment.produce(parts[4], topic=ingress_of)
    deployment.start_worker()
    wait_for(deployment.forwarded_all, 120, "every ingress offset forwarded")
    deployment.wait_consistent(timeout=120)

    log = asyncio.run(read_topic(deployment.settings, EVENTS))
    origins = [dict(r.headers)["tiergate-origin"].decode() for r in log if "tiergate-origin" in dict(r.headers)]
    ingress = {name: asyncio.run(read_topic(deployment.settings, name)) for name in (ACTIONS, OUTCOMES)}
    admitted = [
        f"{r.topic}/{r.partition}:{r.offset}"
        for records in ingress.values()
        for r in records
        if r.value not in (OVERRIDE, TICK)
    ]
    twice = [origin for origin, n in Counter(origins).items() if n > 1]
    assert twice == [] and sorted(origins) == sorted(admitted)
    assert _in_ingress_order(log)
    rejected = {
        r.value: dict(r.headers)["tiergate-reason"].decode() for r in asyncio.run(read_topic(deployment.settings, DLQ))
    }
    assert "takes actions only" in rejected[OVERRIDE] and "takes outcomes and checkpoints only" in rejected[TICK]
    assert not {OVERRIDE, TICK} & {r.value for r in log}


def _forwarded(port: int) -> float:
    """tiergate_worker_forwarded_total of the worker on `port` (0 while it is not serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return 0.0
    return sum(float(line.split()[1]) for line in lines if line.startswith("tiergate_worker_forwarded_total"))


def _in_ingress_order(log: list) -> bool:  # type: ignore[type-arg]
    """Within each events partition, the records forwarded from one ingress partition keep its order."""
    last: dict[tuple[int, str], int] = defaultdict(lambda: -1)
    for record in log:
        origin = dict(record.headers).get("tiergate-origin")
        if origin is None:
            continue
        source, _, offset = origin.decode().rpartition(":")
        if int(offset) <= last[record.partition, source]:
            return False
        last[record.partition, source] = int(offset)
    return True
