"""Benchmark: the SDK's `tier_for` cost, and the time from a tier decision to `tier_for` answering it.

    python bench/sdk.py                       # tier_for cost and the HTTP transport
    python bench/sdk.py --kafka               # also the Kafka transport (needs deploy/kafka/broker.sh start)

1. `tier_for` on a loaded client, against a bare dict lookup in the same run (the floor); and `decide()`
   (tier_for, then the action event built, validated, encoded and queued for buffered delivery).
2. HTTP: 40 action types at the edge of a promotion on an embedded server (in this process, loopback); for
   each, the time from posting the tick that closes the promoting window to `tier_for` returning walk.
3. Kafka: the same with a `tiergate worker` and the client following the compacted tier map.
Target: p99 under 1 s on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.kafka import DEFAULT_TOPICS_FILE, EVENTS, SINGLE_BROKER, KafkaSettings, create_topics
from tiergate.streams.policy_file import read_policy
from tiergate.streams.sdk import (
    ActionGate,
    HttpTierTransport,
    KafkaTierTransport,
    MemoryEventSink,
    MemoryTierTransport,
    Reporter,
    TierMapClient,
)
from tiergate.streams.settings import ServeSettings

sys.path.insert(0, str(Path(__file__).parent))
from kafka_worker import (
    BOOTSTRAP,
    EDGE_START,
    closing_tick,
    edge_events,
    latency_policy,
    metric_total,
    produce,
    start_worker,
    wait_healthy,
)


def summary(samples: list[float]) -> dict[str, Any]:
    samples = sorted(samples)
    return {
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000, 1),
        "target_p99_ms": 1000,
    }


async def tier_for_cost() -> dict[str, Any]:
    transport = MemoryTierTransport()
    client = TierMapClient(transport)
    await client.start()
    transport.push(*({"action_type": f"k{i:02d}", "tier": "walk", "version": 1} for i in range(60)))
    transport.finish_load()
    await asyncio.sleep(0.01)
    plain = {f"k{i:02d}": "walk" for i in range(60)}
    runs = 200_000
    lookup = min(timeit.repeat(lambda: plain.get("k07", "crawl"), number=runs, repeat=5)) / runs
    tier_for = min(timeit.repeat(lambda: client.tier_for("k07"), number=runs, repeat=5)) / runs
    decide = await decide_cost(client)
    await client.close()
    return {
        "tier_for_us": round(tier_for * 1e6, 3),
        "dict_get_us": round(lookup * 1e6, 3),
        "ratio_to_dict_get": round(tier_for / lookup, 1),
        "decide_us": round(decide * 1e6, 1),
    }


async def decide_cost(client: TierMapClient, runs: int = 20_000) -> float:
    """Seconds per decide() into a reporter whose queue holds every event (delivery not timed)."""
    reporter = Reporter(MemoryEventSink(), queue_size=runs + 1, batch_size=runs)
    gate = ActionGate(client, reporter)
    started = time.perf_counter()
    for i in range(runs):
        await gate.decide("k07", action_id=f"a{i}", attributes={"amount": 12.5})
    elapsed = time.perf_counter() - started
    await reporter.close()
    assert reporter.stats().delivered == runs
    return elapsed / runs


async def http_latency(types: int, tmp: Path) -> dict[str, Any]:
    policy_path = latency_policy(tmp, types)
    evaluator = EmbeddedRuntime(read_policy(policy_path), tmp / "data", ManualClock(EDGE_START + 5 * 3600))
    runner = web.AppRunner(make_app(evaluator, ServeSettings(policy=policy_path, data_dir=tmp / "data"), ticking=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    samples = []
    try:
        async with aiohttp.ClientSession() as http, TierMapClient(HttpTierTransport(url)) as client:
            await http.post(f"{url}/v1/events", data=b"\n".join(edge_events(types)))
            await client.wait_until_ready(10)
            for i in range(types):
                key = f"k{i:02d}"
                sent = time.perf_counter()
                await http.post(f"{url}/v1/events", data=closing_tick(key))
                assert await client.wait_for(lambda c, k=key: c.tier_for(k) == "walk", 5)
                samples.append(time.perf_counter() - sent)
    finally:
        await runner.cleanup()
        evaluator.close()
    return summary(samples)


async def kafka_latency(types: int, tmp: Path) -> dict[str, Any]:
    policy = latency_policy(tmp, types)
    prefix = f"sdk{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=prefix, topics_file=DEFAULT_TOPICS_FILE)
    await create_topics(settings, 1, SINGLE_BROKER)
    events = edge_events(types)
    await produce(settings.topic(EVENTS), events)
    port = 16069
    worker = start_worker(policy, prefix, port, tmp / "sdk-worker.log")
    samples = []
    try:
        await asyncio.to_thread(wait_healthy, port)
        while metric_total(port, "tiergate_events_total") < len(events):
            await asyncio.sleep(0.1)
        async with TierMapClient(KafkaTierTransport(settings)) as client:
            await client.wait_until_ready(30)
            for i in range(types):
                key = f"k{i:02d}"
                sent = time.perf_counter()
                await produce(settings.topic(EVENTS), [closing_tick(key)])
                assert await client.wait_for(lambda c, k=key: c.tier_for(k) == "walk", 10)
                samples.append(time.perf_counter() - sent)
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    return summary(samples)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--types", type=int, default=40)
    args.add_argument("--kafka", action="store_true")
    options = args.parse_args()
    print(json.dumps({"tier_for": asyncio.run(tier_for_cost())}, indent=2), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(
            json.dumps({"http_decision_to_tier_for": asyncio.run(http_latency(options.types, Path(tmp)))}, indent=2),
            flush=True,
        )
        if options.kafka:
            result = asyncio.run(kafka_latency(options.types, Path(tmp)))
            print(json.dumps({"kafka_decision_to_tier_for": result}, indent=2))


if __name__ == "__main__":
    main()
