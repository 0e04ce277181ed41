"""The agent-side SDK against the real embedded server (HTTP) and in memory; Kafka in test_sdk_kafka.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tiergate.models.wire import parse_ts
from tiergate.streams import sdk
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.sdk import (
    EventRejected,
    Gate,
    HttpEventSink,
    HttpTierTransport,
    InvalidEvent,
    MemoryEventSink,
    MemoryTierTransport,
    Mode,
    Receipt,
    ReceiptError,
    Reporter,
    SyncTierMapClient,
    TiergateError,
    TierMapClient,
)
from tiergate.streams.settings import ServeSettings

from .test_restart import free_port

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes()


class LiveServer:
    """`tiergate serve` in this process on a fixed loopback port, so it can be stopped and started again."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self.evaluator = EmbeddedRuntime(
            read_policy(POLICY), self.data_dir, ManualClock(parse_ts("2026-11-02T12:00:00Z"))
        )
        settings = ServeSettings(policy=POLICY, data_dir=self.data_dir)
        self.runner = web.AppRunner(make_app(self.evaluator, settings, ticking=False))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()
        self.evaluator.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    live = LiveServer(tmp_path / "data", free_port())
    await live.start()
    yield live
    await live.stop()


async def post(server: LiveServer, body: bytes) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.url}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
        )
        assert response.status == 200


def test_the_public_api_is_what_all_says_and_every_error_is_a_tiergate_error() -> None:
    """`__all__` names exist, and the documented exceptions form one tree."""
    assert all(hasattr(sdk, name) for name in sdk.__all__)
    defined = {
        name
        for name, obj in vars(sdk).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == sdk.__name__ and isinstance(obj, type)
    }
    assert defined == set(sdk.__all__)
    for error in (sdk.TransportError, InvalidEvent, EventRejected, ReceiptError):
        assert issubclass(error, TiergateError)


def test_receipts_round_trip_and_damaged_ones_are_refused() -> None:
    """A receipt carries action id, type and tier through a string; anything else is a ReceiptError."""
    receipt = Receipt("a-981", "refund_up_to_50", "walk")
    assert Receipt.parse(str(receipt)) == receipt and str(receipt).startswith("tg1.")
    for bad in ("", "tg1.!!!", "tg1.e30", "ticket-12"):
        with pytest.raises(ReceiptError):
            Receipt.parse(bad)


async def test_the_client_fails_closed_until_loaded_when_unknown_and_when_stale() -> None:
    """Crawl before the first full load, for unknown types, and once the view is older than the bound;
    an older version of a record never replaces a newer one."""
    now = [0.0]
    transport = MemoryTierTransport()
    async with TierMapClient(transport, staleness=30, clock=lambda: now[0]) as client:
        transport.push({"action_type": "t", "tier": "run", "version": 2})
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "crawl" and client.status().failing_closed  # not loaded yet
        transport.finish_load()
        transport.push({"action_type": "t", "tier": "walk", "version": 1})  # an older re-send
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "run" and client.tier_for("unknown") == "crawl"
        now[0] = 31.0
        assert client.tier_for("t") == "crawl" and not client.status().fresh
        transport.push({"action_type": "t", "tier": "run", "version": 3})
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "run"


async def test_a_promotion_reaches_the_http_client_and_it_survives_a_server_restart(server: LiveServer) -> None:
    """The client loads the map, sees the climb to Run within a second, reconnects after a restart."""
    async with TierMapClient(HttpTierTransport(server.url, backoff=(0.05, 0.2))) as client:
        assert await client.wait_for(lambda c: c.status().loaded, 5)
        assert client.tier_for("reply_to_ticket") == "crawl"
        await post(server, CLIMB)
        assert await client.wait_for(lambda c: c.tier_for("reply_to_ticket") == "run", 1.0)
        await server.stop()
        await server.start()  # same data directory, same port
        await post(
            server,
            b'{"type":"override","event_id":"o1","ts":"2026-11-02T11:00:00Z",'
            b'"action_type":"refund_over_50","op":"promote","actor":"ops","reason":"trial"}',
        )
        assert await client.wait_for(lambda c: c.tier_for("refund_over_50") == "walk", 5)
        assert client.tier_for("reply_to_ticket") == "run"


async def test_the_gate_records_each_action_at_its_tier_and_outcomes_count_once(server: LiveServer) -> None:
    """decide() maps the tier to a mode and records the action; an outcome reported through the receipt
    string counts once however often it is sent."""
    async with TierMapClient(HttpTierTransport(server.url)) as tiers:
        assert await tiers.wait_for(lambda c: c.status().loaded, 5)
        sink = HttpEventSink(server.url)
        reporter = Reporter(sink, agent="test-bot", clock=lambda: parse_ts("2026-11-02T10:00:00Z"))
        decision = await Gate(tiers, reporter).decide("refund_up_to_50", action_id="a-1")
        assert decision.mode is Mode.SUGGEST and decision.receipt == Receipt("a-1", "refund_up_to_50", "crawl")
        for _ in range(3):  # a reporter retrying after a timeout
            await reporter.report_outcome(str(decision.receipt), "review", "accepted")
        await sink.close()
    log = [json.loads(raw) for _, raw in server.evaluator.store.events()]
    assert [(e["type"], e["event_id"]) for e in log] == [("action", "a-1/action")] + [("outcome", "a-1/review")] * 3
    results = [r for (_, r) in server.evaluator.store.db.execute("SELECT action_type, result FROM events")]
    assert results == ["applied", "applied", "duplicate", "duplicate"]


async def test_bad_events_never_leave_and_rejections_come_back_as_errors(server: LiveServer) -> None:
    """A bad result is refused before sending; an event the server rejects raises EventRejected."""
    memory = MemoryEventSink()
    receipt = Receipt("a-2", "refund_up_to_50", "crawl")
    with pytest.raises(InvalidEvent, match="result 'great' is not valid for kind 'review'"):
        await Reporter(memory).report_outcome(receipt, "review", "great")
    assert memory.sent == []
    sink = HttpEventSink(server.url)
    with pytest.raises(EventRejected, match="unknown action_type 'nope'"):
        await Reporter(sink, clock=lambda: parse_ts("2026-11-02T10:00:00Z")).record_action("nope", "crawl")
    await sink.close()


async def test_the_sync_client_serves_synchronous_agent_code(server: LiveServer) -> None:
    """SyncTierMapClient runs its own loop thread: plain calls, the same answers."""
    client = SyncTierMapClient(HttpTierTransport(server.url))
    try:
        await post(server, CLIMB)
        for _ in range(100):
            if client.tier_for("reply_to_ticket") == "run":
                break
            await asyncio.sleep(0.05)
        assert client.tier_for("reply_to_ticket") == "run" and client.status().loaded
    finally:
        await asyncio.to_thread(client.close)


async def test_openfeature_reads_tiers_through_the_same_client(server: LiveServer) -> None:
    """An OpenFeature client resolves an action type's flag to its tier, failing closed like tier_for."""
    from openfeature import api

    from tiergate.streams.openfeature import TiergateProvider

    async with TierMapClient(HttpTierTransport(server.url)) as tiers:
        api.set_provider(TiergateProvider(tiers))
        flags = api.get_client()
        assert flags.get_string_details("reply_to_ticket", "run").reason == "STALE"  # not loaded: crawl
        assert flags.get_string_value("reply_to_ticket", "run") == "crawl"
        await tiers.wait_for(lambda c: c.status().loaded, 5)
        await post(server, CLIMB)
        assert await tiers.wait_for(lambda c: c.tier_for("reply_to_ticket") == "run", 2)
        details = flags.get_string_details("reply_to_ticket", "crawl")
        assert (details.value, details.reason, details.flag_metadata["version"]) == ("run", "STATIC", 2)
        assert flags.get_integer_value("reply_to_ticket", 0) == 2
        assert flags.get_string_details("no_such_type", "run").value == "crawl"
        assert flags.get_boolean_details("reply_to_ticket", True).error_code == "TYPE_MISMATCH"
        api.clear_providers()


async def test_the_example_agent_acts_as_each_tier_allows(server: LiveServer) -> None:
    """examples/agent.py suggests at Crawl, acts on staff at Walk, acts on customers at Run, reporting the
    outcomes each tier can observe."""
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location(
        "example_agent", Path(__file__).parent.parent / "examples" / "agent.py"
    )
    assert spec is not None and spec.loader is not None
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    sink = HttpEventSink(server.url)
    reporter = Reporter(sink, agent="example", clock=lambda: parse_ts("2026-11-02T10:00:00Z"))
    lines = []
    async with TierMapClient(HttpTierTransport(server.url)) as tiers:
        gate = Gate(tiers, reporter)
        for step, promote in enumerate((False, True, True)):
            if promote:
                await post(
                    server,
                    json.dumps(
                        {
                            "type": "override",
                            "event_id": f"p{step}",
                            "ts": "2026-11-02T09:00:00Z",
                            "action_type": "refund_up_to_50",
                            "op": "promote",
                            "actor": "ops",
                            "reason": "example",
                        }
                    ).encode(),
                )
            expected = ("crawl", "walk", "run")[step]
            assert await tiers.wait_for(lambda c, t=expected: c.tier_for("refund_up_to_50") == t, 5)  # type: ignore[misc]
            lines.append(await agent.handle_refund(gate, reporter, step, random.Random(step)))
    await sink.close()
    assert ["suggested" in lines[0], "staff account" in lines[1], "customer directly" in lines[2]] == [True] * 3
    outcomes = [
        (e["tier"], e["kind"])
        for e in (json.loads(raw) for _, raw in server.evaluator.store.events())
        if e["type"] == "outcome"
    ]
    assert outcomes == [("crawl", "review"), ("walk", "internal"), ("walk", "customer"), ("run", "customer")]


def test_the_sdk_works_without_faust_or_aiokafka_installed() -> None:
    """Agents import the SDK and use its HTTP and in-memory pieces with neither faust nor aiokafka present."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['faust'] = None; sys.modules['aiokafka'] = None\n"
        "import asyncio\n"
        "from tiergate.streams.sdk import HttpTierTransport, MemoryTierTransport, Receipt, TierMapClient\n"
        "from tiergate.streams.openfeature import TiergateProvider\n"
        "async def main():\n"
        "    t = MemoryTierTransport()\n"
        "    async with TierMapClient(t) as c:\n"
        "        t.push({'action_type': 'x', 'tier': 'walk', 'version': 1}); t.finish_load()\n"
        "        await c.wait_for(lambda c: c.status().loaded, 2)\n"
        "        print(c.tier_for('x'), Receipt.parse(str(Receipt('a', 'x', 'walk'))).tier)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["walk", "walk"]
