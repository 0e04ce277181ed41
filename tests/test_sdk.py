"""The agent-side SDK in memory: its public names, receipts, event validation, and the tier map client's
fail-closed rules (HTTP against a real server in test_sdk_http.py, Kafka in test_sdk_kafka.py)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest

from tiergate.models.wire import MAX_EVENT_BYTES
from tiergate.streams import sdk
from tiergate.streams.kafka import KafkaSettings
from tiergate.streams.sdk import (
    ActionGate,
    InvalidEvent,
    KafkaTierTransport,
    MemoryEventSink,
    MemoryTierTransport,
    Mode,
    Receipt,
    ReceiptError,
    Reporter,
    TiergateError,
    TierMapClient,
    TierMapEvent,
    TierMapNotReady,
    TransportError,
)

TEN = 1793613600  # 2026-11-02T10:00:00Z


def sdk_modules() -> list[object]:
    return [importlib.import_module(f"{sdk.__name__}.{m.name}") for m in pkgutil.iter_modules(sdk.__path__)]


def test_the_public_api_is_what_all_says_and_every_error_is_a_tiergate_error() -> None:
    """Every name in `__all__` imports from the package; every public class of its modules is in `__all__`;
    the exceptions form one tree; no exported name clashes with the core's Decision or the policy's Gate."""
    assert all(getattr(sdk, name).__module__ == sdk.__name__ for name in sdk.__all__)
    public = {
        name
        for module in sdk_modules()
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == sdk.__name__
    }
    assert public == set(sdk.__all__)
    for error in (TransportError, InvalidEvent, ReceiptError, TierMapNotReady):
        assert issubclass(error, TiergateError)
    assert issubclass(TierMapNotReady, TimeoutError)
    assert not {"Decision", "Gate"} & set(sdk.__all__)


def test_the_docs_call_only_reporter_methods_that_exist() -> None:
    """Every `reporter.NAME(` in the README and docs/ names a method Reporter has (a renamed method cannot
    leave a doc calling the old name)."""
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    called = {name for page in pages for name in re.findall(r"\breporter\.(\w+)\(", page.read_text())}
    assert called and not {name for name in called if not hasattr(Reporter, name)}


def test_receipts_round_trip_with_the_action_ts_and_damaged_ones_are_refused() -> None:
    """A receipt carries action id, type, tier and the action's ts through a string; one issued before
    receipts carried the ts still reads; anything else is a ReceiptError."""
    receipt = Receipt("a-981", "refund_up_to_50", "walk", TEN)
    assert Receipt.parse(str(receipt)) == receipt and str(receipt).startswith("tg1.")
    assert Receipt.parse(str(Receipt("a-1", "t", "crawl"))).action_ts is None
    for bad in ("", "tg1.!!!", "tg1.e30", "ticket-12", str(receipt)[:-3] + "AAA"):
        with pytest.raises(ReceiptError):
            Receipt.parse(bad)


async def test_an_outcome_from_a_receipt_carries_the_action_ts() -> None:
    """The outcome reported through a receipt string has `action_ts`: the action's own ts, in RFC 3339."""
    sink = MemoryEventSink()
    async with Reporter(sink, agent="bot", clock=lambda: TEN + 7) as reporter:
        receipt = await reporter.record_action("refund_up_to_50", "walk", action_id="a-1")
        later = Reporter(MemoryEventSink(), clock=lambda: TEN + 3600)
        await reporter.report_outcome(str(receipt), "customer", "failure", reason="chargeback")
        await later.close()
        assert await reporter.flush(1)
    action, outcome = (orjson.loads(raw) for raw in sink.sent)
    assert action["ts"] == outcome["action_ts"] == "2026-11-02T10:00:07Z"
    assert outcome["event_id"] == "a-1/customer" and outcome["reason"] == "chargeback"


async def test_a_checkpoint_is_the_documented_event_with_a_deterministic_id() -> None:
    """report_checkpoint emits exactly the checkpoint event, its id derived from type, kind and `through`
    (given as a datetime, Unix seconds or text alike); a bad one raises InvalidEvent at the call."""
    sink = MemoryEventSink()
    async with Reporter(sink, clock=lambda: TEN) as reporter:
        await reporter.report_checkpoint("refund_up_to_50", through=datetime(2026, 11, 1, tzinfo=UTC))
        await reporter.report_checkpoint("refund_up_to_50", "customer", through="2026-11-01T01:00:00+01:00")
        with pytest.raises(InvalidEvent, match="kind"):
            await reporter.report_checkpoint("refund_up_to_50", "review", through=TEN)
        with pytest.raises(InvalidEvent, match="through"):
            await reporter.report_checkpoint("refund_up_to_50", through="yesterday")
        with pytest.raises(InvalidEvent, match="action_type"):
            await reporter.report_checkpoint("no spaces allowed", through=TEN)
    first, second = (orjson.loads(raw) for raw in sink.sent)
    assert first == {
        "type": "checkpoint",
        "event_id": "checkpoint/refund_up_to_50/customer/2026-11-01T00:00:00Z",
        "ts": "2026-11-02T10:00:00Z",
        "action_type": "refund_up_to_50",
        "kind": "customer",
        "through": "2026-11-01T00:00:00Z",
    }
    assert second["event_id"] == first["event_id"]  # the same moment: a re-send is a duplicate


async def test_bad_events_never_leave_and_the_size_limit_counts_utf8_bytes() -> None:
    """A bad result, non-JSON attributes or an event over 64 KiB of UTF-8 raise InvalidEvent at the call
    and nothing is queued; an event of fewer characters but more bytes than the limit is refused too."""
    sink = MemoryEventSink()
    reporter = Reporter(sink, clock=lambda: TEN)
    receipt = Receipt("a-2", "refund_up_to_50", "crawl", TEN)
    with pytest.raises(InvalidEvent, match="result: 'great' is not valid for kind 'review'"):
        await reporter.report_outcome(receipt, "review", "great")
    with pytest.raises(InvalidEvent, match="not JSON"):
        await reporter.record_action("refund_up_to_50", "crawl", attributes={"when": object()})
    wide = "é" * 40_000  # fewer characters than the limit, more bytes
    assert len(wide) < MAX_EVENT_BYTES < len(wide.encode())
    with pytest.raises(InvalidEvent, match=f"bytes of UTF-8, over the {MAX_EVENT_BYTES} byte limit"):
        await reporter.record_action("refund_up_to_50", "crawl", attributes={"note": wide})
    await reporter.record_action("refund_up_to_50", "crawl", attributes={"note": "é" * 32_000})  # under it
    await reporter.close()
    assert len(sink.sent) == 1 and reporter.stats().delivered == 1


async def test_the_client_fails_closed_until_loaded_when_unknown_and_when_stale() -> None:
    """Crawl before the first full load, for unknown types, and once the view is older than the bound;
    an older version of a record never replaces a newer one; `ready` says which case holds."""
    now = [0.0]
    transport = MemoryTierTransport()
    async with TierMapClient(transport, staleness=30, clock=lambda: now[0]) as client:
        transport.push({"action_type": "t", "tier": "run", "version": 2})
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "crawl" and not client.ready  # not loaded yet
        transport.finish_load()
        transport.push({"action_type": "t", "tier": "walk", "version": 1})  # an older re-send
        await asyncio.sleep(0.01)
        assert client.ready and client.tier_for("t") == "run" and client.tier_for("unknown") == "crawl"
        now[0] = 31.0
        assert client.tier_for("t") == "crawl" and not client.ready and client.status().loaded
        transport.push({"action_type": "t", "tier": "run", "version": 3})
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "run" and client.ready


async def test_a_retired_type_is_forgotten_and_answers_crawl_until_revived() -> None:
    """A `retired` record (with a version) or a tombstone (without) makes the client forget the type and
    answer Crawl; a re-sent older record does not bring it back, a revival with a newer version does."""
    transport = MemoryTierTransport()
    changes: list[TierMapEvent] = []
    async with TierMapClient(transport) as client:
        client.subscribe(changes.append)
        transport.push(
            {"action_type": "t", "tier": "walk", "version": 3}, {"action_type": "u", "tier": "run", "version": 1}
        )
        transport.finish_load()
        transport.retire("t", 4)
        transport.push({"action_type": "t", "tier": "walk", "version": 3})  # a redelivered older record
        await client.wait_for(lambda c: c.record("t") is None, 1)
        await asyncio.sleep(0.01)
        assert client.tier_for("t") == "crawl" and client.status().action_types == 1
        transport.push({"action_type": "t", "tier": "crawl", "version": 5})  # revived at crawl
        transport.retire("u")  # the compacted topic's tombstone carries no version
        await client.wait_for(lambda c: c.record("u") is None, 1)
        assert client.record("t") == {"action_type": "t", "tier": "crawl", "version": 5}
        assert client.tier_for("u") == "crawl"
    assert [(e.kind, e.action_types) for e in changes if e.kind == "changed"] == [
        ("changed", ("t",)),
        ("changed", ("t",)),
        ("changed", ("u",)),
    ]


async def test_ready_state_listeners_and_wait_until_ready_say_why_not() -> None:
    """wait_until_ready raises TierMapNotReady naming the transport's last error; listeners hear `error`
    before a view, `ready` once loaded and `stale` when the source falls silent past the bound."""
    transport = MemoryTierTransport()
    heard: list[str] = []
    async with TierMapClient(transport, staleness=0.2) as client:
        client.subscribe(lambda event: heard.append(event.kind))
        transport.fail("connection refused")
        with pytest.raises(TierMapNotReady, match=r"not ready after 0\.1s: connection refused"):
            await client.wait_until_ready(0.1)
        assert client.status().last_error == "connection refused"
        transport.push({"action_type": "t", "tier": "walk", "version": 1})
        transport.finish_load()
        await client.wait_until_ready(1)
        assert client.status().last_error is None and client.status().running
        await asyncio.sleep(0.4)  # nothing heard: past the staleness bound
        assert not client.ready and client.tier_for("t") == "crawl"
    assert heard == ["error", "ready", "stale"]


async def test_a_transport_that_cannot_run_says_so_in_status() -> None:
    """A Kafka transport that cannot start (here: SASL without credentials) stops with its reason in
    `status()`, and wait_until_ready fails at once instead of waiting out its timeout."""
    settings = KafkaSettings(bootstrap="127.0.0.1:1", security_protocol="SASL_PLAINTEXT")
    async with TierMapClient(KafkaTierTransport(settings)) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TierMapNotReady, match=r"transport stopped: .*SASL needs sasl_mechanism"):
            await client.wait_until_ready(30)
        assert loop.time() - started < 5
        status = client.status()
        assert not status.running and not status.ready and "SASL" in (status.last_error or "")
        assert client.tier_for("anything") == "crawl"


async def test_the_gate_fails_closed_and_decide_raises_only_for_an_event_it_cannot_record() -> None:
    """Before the map loads decide() answers SUGGEST (crawl) and records the action at crawl; an action
    type the wire format cannot carry raises InvalidEvent from decide(), and nothing is queued for it."""
    transport, sink = MemoryTierTransport(), MemoryEventSink()
    async with ActionGate(TierMapClient(transport), Reporter(sink, clock=lambda: TEN)) as gate:
        decision = await gate.decide("refund_up_to_50", action_id="a-1")
        assert decision.mode is Mode.SUGGEST and decision.receipt.tier == "crawl"
        with pytest.raises(InvalidEvent, match="action_type"):
            await gate.decide("refund up to 50")
    assert [orjson.loads(raw)["event_id"] for raw in sink.sent] == ["a-1/action"]  # flushed on exit


def test_the_sdk_works_without_faust_or_aiokafka_installed() -> None:
    """Agents import the SDK and use its HTTP and in-memory pieces with neither faust nor aiokafka present;
    a Kafka transport then stops with an error that says what to install."""
    script = (
        "import sys; sys.modules['faust'] = None; sys.modules['aiokafka'] = None\n"
        "import asyncio\n"
        "from tiergate.streams.kafka import KafkaSettings\n"
        "from tiergate.streams.sdk import KafkaTierTransport, MemoryTierTransport, Receipt, TierMapClient\n"
        "from tiergate.streams.openfeature import TiergateProvider\n"
        "async def main():\n"
        "    t = MemoryTierTransport()\n"
        "    async with TierMapClient(t) as c:\n"
        "        t.push({'action_type': 'x', 'tier': 'walk', 'version': 1}); t.finish_load()\n"
        "        await c.wait_until_ready(2)\n"
        "        print(c.tier_for('x'), Receipt.parse(str(Receipt('a', 'x', 'walk'))).tier)\n"
        "    async with TierMapClient(KafkaTierTransport(KafkaSettings())) as k:\n"
        "        await k.wait_for(lambda k: not k.status().running, 2)\n"
        "        print(k.status().last_error)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["walk", "walk"]
    assert lines[1] == "transport stopped: the Kafka transport needs aiokafka: pip install 'tiergate[kafka]'"


async def test_the_http_transport_reads_tier_and_retired_events_and_skips_empty_ones() -> None:
    """The stream's `tier` events update the client, a `retired` event (as the server will send it) makes it
    forget the type, and an event without data (a heartbeat, as httpx-sse yields it) changes nothing."""
    from httpx_sse import ServerSentEvent

    from tiergate.streams.sdk import HttpTierTransport

    transport = HttpTierTransport("http://127.0.0.1:1")
    async with TierMapClient(MemoryTierTransport()) as client:
        client.loaded()
        record = {"action_type": "t", "tier": "walk", "version": 3}
        transport._apply(ServerSentEvent("tier", orjson.dumps(record).decode(), "t/3"), client)
        transport._apply(ServerSentEvent("", "", "t/3"), client)
        assert client.tier_for("t") == "walk"
        transport._apply(ServerSentEvent("retired", '{"action_type":"t","version":4}', "t/4"), client)
        assert client.record("t") is None and client.tier_for("t") == "crawl"
