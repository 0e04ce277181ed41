"""The SDK's Kafka transport and sink on the real local broker. The clients here get settings whose topic
file does not exist: the SDK must need no file from the repository."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tiergate.streams.kafka import EVENTS, TIER_MAP, KafkaSettings
from tiergate.streams.sdk import KafkaEventSink, KafkaTierTransport, Reporter, TierMapClient, TierMapNotReady

from .kafka_harness import BOOTSTRAP, Deployment, broker
from .live_server import TEN
from .test_kafka import _send, deployment, records
from .test_restart import free_port

pytestmark = pytest.mark.kafka
CLIMB = (Path(__file__).parent / "golden" / "clean_climb" / "events.jsonl").read_bytes().splitlines()
__all__ = ["deployment"]  # the fixture, shared with test_kafka


def sdk_settings(deployment: Deployment, bootstrap: str = BOOTSTRAP) -> KafkaSettings:
    """The deployment's connection and prefix, with a topic file that does not exist."""
    return KafkaSettings(
        bootstrap=bootstrap, topic_prefix=deployment.prefix, topics_file=Path("/nonexistent/topics.yaml")
    )


def test_a_promotion_decided_by_the_worker_reaches_a_kafka_client(deployment: Deployment) -> None:
    """Events → worker → compacted tier map → the SDK's client answers Run."""
    deployment.produce(CLIMB)
    deployment.start_worker()

    async def watch() -> bool:
        async with TierMapClient(KafkaTierTransport(sdk_settings(deployment))) as client:
            await client.wait_until_ready(30)
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

    async def load() -> tuple[str, str]:
        async with TierMapClient(KafkaTierTransport(sdk_settings(deployment))) as client:
            await client.wait_until_ready(30)
            return client.tier_for("a"), client.tier_for("b")

    assert asyncio.run(load()) == (tiers[30 % 3], tiers[30 % 3])


def test_a_tombstone_retires_a_type_and_the_client_answers_crawl(deployment: Deployment) -> None:
    """A null value for a key of the tier map (a retired type) makes a following client forget the type, and
    a client started afterwards never holds it."""

    async def produce(key: bytes, value: bytes | None) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        try:
            await producer.send_and_wait(deployment.settings.topic(TIER_MAP), value, key=key)
        finally:
            await producer.stop()

    async def scenario() -> tuple[str, str, str]:
        await produce(b"t", orjson.dumps({"action_type": "t", "tier": "walk", "version": 1}))
        async with TierMapClient(KafkaTierTransport(sdk_settings(deployment))) as client:
            await client.wait_until_ready(30)
            before = client.tier_for("t")
            await produce(b"t", None)
            assert await client.wait_for(lambda c: c.record("t") is None, 30)
            after = client.tier_for("t")
        async with TierMapClient(KafkaTierTransport(sdk_settings(deployment))) as fresh:
            await fresh.wait_until_ready(30)
            return before, after, fresh.tier_for("t") if fresh.record("t") is None else "held"

    assert asyncio.run(scenario()) == ("walk", "crawl", "crawl")


def test_an_unreachable_broker_or_a_missing_topic_is_shown_in_status(deployment: Deployment) -> None:
    """A client that cannot reach its broker, or whose tier-map topic does not exist, is not ready, keeps
    retrying, and says why in status() and in TierMapNotReady."""

    async def scenario() -> tuple[str, str]:
        unreachable = sdk_settings(deployment, bootstrap=f"127.0.0.1:{free_port()}")
        async with TierMapClient(KafkaTierTransport(unreachable, backoff=(0.1, 0.5))) as client:
            with pytest.raises(TierMapNotReady) as no_broker:
                await client.wait_until_ready(3)
            assert client.status().running and client.tier_for("reply_to_ticket") == "crawl"
        missing = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix="nothing-here.", topics_file=Path("/nonexistent"))
        transport = KafkaTierTransport(missing, assignment_timeout=1, backoff=(0.1, 0.5))
        async with TierMapClient(transport) as client:
            with pytest.raises(TierMapNotReady) as no_topic:
                await client.wait_until_ready(3)
        return str(no_broker.value), str(no_topic.value)

    no_broker, no_topic = asyncio.run(scenario())
    assert "not ready after 3s" in no_broker and "KafkaConnectionError" in no_broker
    assert "topic nothing-here.tiergate.tier-map.v1 has no partitions: create it" in no_topic


def test_the_client_rides_out_a_broker_restart_and_the_sink_keys_events_by_type(deployment: Deployment) -> None:
    """A Kafka client keeps following after the broker restarts; the reporter's buffered events are produced
    keyed by their type once flushed."""

    async def scenario() -> bool:
        async with TierMapClient(KafkaTierTransport(sdk_settings(deployment))) as client:
            await client.wait_until_ready(30)
            broker("stop")
            broker("start")
            await asyncio.to_thread(
                _send, deployment, TIER_MAP, b"t", orjson.dumps({"action_type": "t", "tier": "walk", "version": 1})
            )
            followed = await client.wait_for(lambda c: c.tier_for("t") == "walk", 60)
        async with Reporter(KafkaEventSink(sdk_settings(deployment)), agent="bot", clock=lambda: TEN) as reporter:
            receipt = await reporter.record_action("reply_to_ticket", "crawl", action_id="k-1")
            await reporter.report_outcome(receipt, "review", "accepted")
            assert await reporter.flush(30)
        assert reporter.stats().delivered == 2
        return followed

    assert asyncio.run(scenario())
    produced = [(key, orjson.loads(value)["event_id"]) for key, value, _ in records(deployment, EVENTS)]
    assert produced == [(b"reply_to_ticket", "k-1/action"), (b"reply_to_ticket", "k-1/review")]
