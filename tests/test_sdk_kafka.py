"""The SDK's Kafka transport and sink on the real local broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from tiergate.models.wire import parse_ts
from tiergate.streams.kafka import EVENTS, TIER_MAP
from tiergate.streams.sdk import KafkaEventSink, KafkaTierTransport, Reporter, TierMapClient

from .kafka_harness import Deployment, broker
from .test_kafka import _send, deployment, records

pytestmark = pytest.mark.kafka
CLIMB = (Path(__file__).parent / "golden" / "clean_climb" / "events.jsonl").read_bytes().splitlines()
__all__ = ["deployment"]  # the fixture, shared with test_kafka


def test_a_promotion_decided_by_the_worker_reaches_a_kafka_client(deployment: Deployment) -> None:
    """Events → worker → compacted tier map → the SDK's client answers Run."""
    deployment.produce(CLIMB)
    deployment.start_worker()

    async def watch() -> bool:
        async with TierMapClient(KafkaTierTransport(deployment.settings)) as client:
            return await client.wait_for(lambda c: c.tier_for("reply_to_ticket") == "run", 60)

    assert asyncio.run(watch())


def test_a_client_started_after_compaction_sees_exactly_the_latest_tier_per_key(deployment: Deployment) -> None:
    """Thirty versions per key, compacted to the newest: a fresh client loads them and answers from them."""
    tiers = ("crawl", "walk", "run")
    for version in range(1, 31):
        for key in ("a", "b"):
            record = {"action_type": key, "tier": tiers[version % 3], "version": version}
            _send(deployment, TIER_MAP, key.encode(), orjson.dumps(record))
    time.sleep(11)  # past segment.ms, then roll every partition so the old segments can be cleaned
    for partition in range(6):
        _send(
            deployment,
            TIER_MAP,
            f"roll-{partition}".encode(),
            orjson.dumps({"action_type": f"roll-{partition}", "tier": "crawl", "version": 1}),
            partition,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(records(deployment, TIER_MAP)) != 8:
        time.sleep(1)
    assert len(records(deployment, TIER_MAP)) == 8  # compacted: the newest of a and b, and the rolls

    async def load() -> tuple[str, str, bool]:
        async with TierMapClient(KafkaTierTransport(deployment.settings)) as client:
            loaded = await client.wait_for(lambda c: c.status().loaded, 30)
            return client.tier_for("a"), client.tier_for("b"), loaded

    assert asyncio.run(load()) == (tiers[30 % 3], tiers[30 % 3], True)


def test_the_client_rides_out_a_broker_restart_and_the_sink_keys_events_by_type(deployment: Deployment) -> None:
    """A Kafka client keeps following after the broker restarts; the reporter's events are keyed by type."""

    async def scenario() -> bool:
        async with TierMapClient(KafkaTierTransport(deployment.settings)) as client:
            assert await client.wait_for(lambda c: c.status().loaded, 30)
            broker("stop")
            broker("start")
            await asyncio.to_thread(
                _send, deployment, TIER_MAP, b"t", orjson.dumps({"action_type": "t", "tier": "walk", "version": 1})
            )
            followed = await client.wait_for(lambda c: c.tier_for("t") == "walk", 60)
        sink = KafkaEventSink(deployment.settings)
        reporter = Reporter(sink, agent="bot", clock=lambda: parse_ts("2026-11-02T10:00:00Z"))
        receipt = await reporter.record_action("reply_to_ticket", "crawl", action_id="k-1")
        await reporter.report_outcome(receipt, "review", "accepted")
        await sink.close()
        return followed

    assert asyncio.run(scenario())
    produced = [(key, orjson.loads(value)["event_id"]) for key, value, _ in records(deployment, EVENTS)]
    assert produced == [(b"reply_to_ticket", "k-1/action"), (b"reply_to_ticket", "k-1/review")]
