"""The SDK over HTTP against a real `tiergate serve` app: the live tier map, buffered reporting through
outages, the synchronous client and the OpenFeature provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from openfeature import api
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ProviderNotReadyError
from openfeature.provider import ProviderStatus

from tiergate.streams import http as serve_http
from tiergate.streams.openfeature import TiergateProvider
from tiergate.streams.sdk import (
    ActionGate,
    HttpEventSink,
    HttpTierTransport,
    MemoryTierTransport,
    Mode,
    Receipt,
    Reporter,
    SyncTierMapClient,
    TierMapClient,
    TierMapNotReady,
)

from .live_server import CLIMB, TEN, LiveServer, post, promote_override, server
from .test_restart import free_port

__all__ = ["server"]  # the fixture


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


async def test_a_promotion_reaches_the_client_and_a_reconnect_sends_last_event_id(server: LiveServer) -> None:
    """The client loads the map, sees the climb to Run within a second, shows the outage in status(), and
    reconnects after a restart with Last-Event-ID set to the last id it read."""
    transport = HttpTierTransport(server.url, backoff=(0.05, 0.2))
    async with TierMapClient(transport) as client:
        await client.wait_until_ready(5)
        assert client.tier_for("reply_to_ticket") == "crawl"
        await post(server, CLIMB)
        assert await client.wait_for(lambda c: c.tier_for("reply_to_ticket") == "run", 1.0)
        last_read = transport.last_event_id
        assert last_read == "reply_to_ticket/2"
        await server.stop()
        assert await client.wait_for(lambda c: c.status().last_error is not None, 5)
        await server.start()  # same data directory, same port
        await post(server, promote_override("o1", "refund_over_50"))
        assert await client.wait_for(lambda c: c.tier_for("refund_over_50") == "walk", 5)
        assert client.tier_for("reply_to_ticket") == "run" and client.status().last_error is None
        for _ in range(100):  # the full view may have shown the override before the stream reconnected
            if len(server.stream_headers) >= 2:
                break
            await asyncio.sleep(0.05)
    assert "Last-Event-ID" not in server.stream_headers[0]
    assert server.stream_headers[-1]["Last-Event-ID"] == last_read


async def test_heartbeats_keep_a_quiet_map_fresh_and_silence_makes_it_stale(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's SSE heartbeats (comments, which the event parser skips) still count as hearing from it:
    a map with no changes stays ready past the staleness bound; once the server is gone it goes stale."""
    monkeypatch.setattr(serve_http, "SSE_HEARTBEAT", 0.1)
    async with TierMapClient(HttpTierTransport(server.url, backoff=(0.05, 0.2)), staleness=0.5) as client:
        await client.wait_until_ready(5)
        await asyncio.sleep(1.5)  # no tier changes: only heartbeats arrive
        assert client.ready and client.status().age is not None and client.status().age < 0.5
        assert len(server.stream_headers) == 1  # one stream all along: heartbeats are not errors
        await server.stop()
        assert await client.wait_for(lambda c: not c.ready, 3)
        await asyncio.sleep(0.6)
        assert not client.ready and client.tier_for("lookup_order") == "crawl"
        await server.start()


async def test_wait_until_ready_names_the_error_of_a_dead_server() -> None:
    """Against a port where nothing listens, wait_until_ready raises TierMapNotReady with the connection
    error, after its timeout and not much later."""
    url = dead_url()
    async with TierMapClient(HttpTierTransport(url, backoff=(0.05, 0.2))) as client:
        started = time.monotonic()
        with pytest.raises(TierMapNotReady, match=f"not ready after 0.5s: {url}: ConnectError"):
            await client.wait_until_ready(0.5)
        assert time.monotonic() - started < 2


async def test_the_gate_records_each_action_at_its_tier_and_outcomes_count_once(server: LiveServer) -> None:
    """decide() maps the tier to a mode and records the action; an outcome reported through the receipt
    string counts once however often it is sent, and carries the action's ts as action_ts."""
    tiers = TierMapClient(HttpTierTransport(server.url))
    reporter = Reporter(HttpEventSink(server.url), agent="test-bot", clock=lambda: TEN)
    async with ActionGate(tiers, reporter) as gate:
        await tiers.wait_until_ready(5)
        decision = await gate.decide("refund_up_to_50", action_id="a-1")
        assert decision.mode is Mode.SUGGEST and decision.receipt == Receipt("a-1", "refund_up_to_50", "crawl", TEN)
        for _ in range(3):  # a reporter retrying after a timeout
            await reporter.report_outcome(str(decision.receipt), "review", "accepted")
        assert await reporter.flush(5)
    log = [orjson.loads(raw) for raw in server.events()]
    assert [(e["type"], e["event_id"]) for e in log] == [("action", "a-1/action")] + [("outcome", "a-1/review")] * 3
    assert {e["action_ts"] for e in log[1:]} == {"2026-11-02T10:00:00Z"}
    assert server.results() == ["applied", "applied", "duplicate", "duplicate"]
    assert reporter.stats().delivered == 4


async def test_reporting_rides_out_an_outage_without_blocking_and_counts_what_it_drops(server: LiveServer) -> None:
    """With the server down, decide() still answers at once (failing closed once the map is stale) and never
    raises; reports wait in the bounded queue (what does not fit is dropped and counted), are retried with
    backoff, and are delivered when the server is back."""
    tiers = TierMapClient(HttpTierTransport(server.url, backoff=(0.05, 0.2)), staleness=0.3)
    reporter = Reporter(HttpEventSink(server.url), clock=lambda: TEN, queue_size=4, backoff=(0.02, 0.1))
    async with ActionGate(tiers, reporter) as gate:
        await tiers.wait_until_ready(5)
        await server.stop()
        await tiers.wait_for(lambda c: not c.ready, 3)
        started = time.monotonic()
        decisions = [await gate.decide("refund_up_to_50", action_id=f"d-{i}") for i in range(6)]
        assert time.monotonic() - started < 0.1
        assert {d.mode for d in decisions} == {Mode.SUGGEST}
        stats = reporter.stats()
        assert stats.queued == 4 and stats.dropped == {"queue_full": 2}
        for _ in range(100):
            if reporter.stats().retries >= 2:
                break
            await asyncio.sleep(0.05)
        assert reporter.stats().retries >= 2 and "ConnectError" in (reporter.stats().last_error or "")
        await server.start()
        assert await reporter.flush(5)
    assert [orjson.loads(raw)["event_id"] for raw in server.events()] == [f"d-{i}/action" for i in range(4)]
    final = reporter.stats()
    assert (final.delivered, final.queued, final.dropped_total) == (4, 0, 2)


async def test_rejections_are_counted_with_their_reason_and_a_wrong_token_is_refused(tmp_path: Path) -> None:
    """An event the server rejects is counted `rejected` with its reason (the server keeps it); a batch the
    server refuses for a missing token is dropped as `refused` at once, not retried."""
    guarded = LiveServer(tmp_path / "data", free_port(), token="s3cret")
    await guarded.start()
    try:
        async with Reporter(HttpEventSink(guarded.url, token="s3cret"), clock=lambda: TEN) as reporter:
            await reporter.record_action("nope", "crawl")
            await reporter.record_action("refund_up_to_50", "crawl")
            assert await reporter.flush(5)
        stats = reporter.stats()
        assert (stats.delivered, stats.rejected) == (1, 1)
        assert stats.last_rejection is not None and "unknown action_type 'nope'" in stats.last_rejection.reason
        async with Reporter(HttpEventSink(guarded.url), clock=lambda: TEN, backoff=(5, 5)) as anonymous:
            await anonymous.record_action("refund_up_to_50", "crawl")
            assert await anonymous.flush(2)  # refused at once: no 5 s backoff
        assert anonymous.stats().dropped == {"refused": 1} and anonymous.stats().retries == 0
        assert "401" in (anonymous.stats().last_error or "")
    finally:
        await guarded.stop()


AGENT, REPORTER = "agent-secret-0123456789", "reporter-secret-0123456789"
ROLES = f"support-bot agent {AGENT}\nbilling-feed reporter {REPORTER}\n"


async def test_a_tier_map_without_a_credential_says_what_the_server_said_and_what_to_do(tmp_path: Path) -> None:
    """Against a server with roles, a tier map client without a credential never loads (every flag Crawl) and
    its status names the server's refusal and the fix, not the HTTP library's exception."""
    guarded = LiveServer(tmp_path / "data", free_port(), credentials=ROLES)
    await guarded.start()
    try:
        async with TierMapClient(HttpTierTransport(guarded.url, backoff=(0.05, 0.2))) as tiers:
            with pytest.raises(TierMapNotReady):
                await tiers.wait_until_ready(1)
            error = tiers.status().last_error or ""
            assert "401: " in error and "give the client a credential the server knows" in error, error
            assert "HTTPStatusError" not in error and tiers.tier_for("refund_up_to_50") == "crawl"
    finally:
        await guarded.stop()


async def test_under_roles_a_refusal_costs_only_what_the_credential_may_not_send(tmp_path: Path) -> None:
    """Against a server with roles, an agent credential's batch of action and outcome is sent as one request
    per role: the action is delivered and only the outcome is refused (dropped, with the 403 in last_error);
    given a reporter credential for outcomes, actions and outcomes all arrive, in the order reported."""
    guarded = LiveServer(tmp_path / "data", free_port(), credentials=ROLES)
    await guarded.start()
    try:
        async with Reporter(HttpEventSink(guarded.url, token=AGENT), clock=lambda: TEN, backoff=(5, 5)) as agent:
            receipt = await agent.record_action("refund_up_to_50", "crawl", action_id="a-1")
            await agent.report_outcome(receipt, "review", "accepted")
            assert await agent.flush(2)  # refused at once: no 5 s backoff
        stats = agent.stats()
        assert (stats.delivered, stats.rejected, stats.dropped) == (1, 0, {"refused": 1})
        assert "403" in (stats.last_error or "") and "a-1/review" in (stats.last_error or "")
        assert [orjson.loads(raw)["event_id"] for raw in guarded.events()] == ["a-1/action"]
        sink = HttpEventSink(guarded.url, token=AGENT, reporter_token=REPORTER)
        async with Reporter(sink, clock=lambda: TEN) as both:
            for action_id in ("b-1", "b-2"):
                receipt = await both.record_action("refund_up_to_50", "crawl", action_id=action_id)
                await both.report_outcome(receipt, "review", "accepted")
            assert await both.flush(5)
        assert (both.stats().delivered, both.stats().dropped_total) == (4, 0)
        logged = [orjson.loads(raw)["event_id"] for raw in guarded.events()][1:]
        assert logged == ["b-1/action", "b-1/review", "b-2/action", "b-2/review"]
    finally:
        await guarded.stop()


async def test_close_with_the_server_down_drops_what_is_left_and_returns() -> None:
    """close() flushes for close_timeout, counts what is still unsent as dropped (`closed`), and returns;
    a report after close is counted the same way instead of raising."""
    reporter = Reporter(HttpEventSink(dead_url()), clock=lambda: TEN, backoff=(0.02, 0.1), close_timeout=0.3)
    for i in range(3):
        await reporter.record_action("refund_up_to_50", "crawl", action_id=f"c-{i}")
    started = time.monotonic()
    await reporter.close()
    assert time.monotonic() - started < 2
    await reporter.record_action("refund_up_to_50", "crawl")
    assert reporter.stats().dropped == {"closed": 4} and reporter.stats().queued == 0


async def test_the_sync_client_serves_synchronous_agent_code(server: LiveServer) -> None:
    """SyncTierMapClient runs its own loop thread: a blocking wait_until_ready, then plain calls with the
    same answers as the async client; `with` closes it."""

    def follow_the_climb() -> tuple[str, int, bool]:
        with SyncTierMapClient(HttpTierTransport(server.url)) as client:
            client.wait_until_ready(5)
            asyncio.run_coroutine_threadsafe(post(server, CLIMB), loop).result(5)
            deadline = time.monotonic() + 5
            while client.tier_for("reply_to_ticket") != "run" and time.monotonic() < deadline:
                time.sleep(0.02)
            record = client.record("reply_to_ticket")
            return client.tier_for("reply_to_ticket"), int(record["version"]) if record else -1, client.ready

    loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(follow_the_climb) == ("run", 2, True)


@pytest.fixture
def openfeature_events() -> Iterator[list[tuple[ProviderEvent, EventDetails]]]:
    heard: list[tuple[ProviderEvent, EventDetails]] = []
    handlers = {event: (lambda details, e=event: heard.append((e, details))) for event in ProviderEvent}
    for event, handler in handlers.items():
        api.add_handler(event, handler)
    yield heard
    for event, handler in handlers.items():
        api.remove_handler(event, handler)
    api.clear_providers()


async def test_openfeature_reads_tiers_through_the_sync_client_and_follows_its_state(
    server: LiveServer, openfeature_events: list[tuple[ProviderEvent, EventDetails]]
) -> None:
    """With a SyncTierMapClient, set_provider_and_wait makes the provider READY; flags resolve to tiers
    (unknown types to crawl with reason DEFAULT, no error code); a promotion emits CONFIGURATION_CHANGED
    naming the type; a dead server emits STALE and answers crawl; its return emits READY."""
    loop = asyncio.get_running_loop()

    def scenario() -> None:
        with SyncTierMapClient(HttpTierTransport(server.url, backoff=(0.05, 0.2)), staleness=0.5) as tiers:
            api.set_provider_and_wait(TiergateProvider(tiers))
            flags = api.get_client()
            assert flags.get_provider_status() is ProviderStatus.READY
            unknown = flags.get_string_details("no_such_type", "run")
            assert (unknown.value, unknown.reason, unknown.error_code) == ("crawl", "DEFAULT", None)
            asyncio.run_coroutine_threadsafe(post(server, CLIMB), loop).result(5)
            wait_until(lambda: flags.get_string_value("reply_to_ticket", "crawl") == "run")
            details = flags.get_string_details("reply_to_ticket", "crawl")
            assert (details.reason, details.flag_metadata["version"]) == ("STATIC", 2)
            assert flags.get_integer_value("reply_to_ticket", 0) == 2
            assert flags.get_boolean_details("reply_to_ticket", True).error_code == "TYPE_MISMATCH"
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
            wait_until(lambda: flags.get_provider_status() is ProviderStatus.STALE)
            stale = flags.get_string_details("reply_to_ticket", "run")
            assert (stale.value, stale.reason, stale.error_code) == ("crawl", "STALE", None)
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
            wait_until(lambda: flags.get_provider_status() is ProviderStatus.READY)

    await asyncio.to_thread(scenario)

    def kinds() -> list[ProviderEvent]:
        return [e for e, _ in openfeature_events if e is not ProviderEvent.PROVIDER_CONFIGURATION_CHANGED]

    await until_heard(lambda: kinds()[-2:] == [ProviderEvent.PROVIDER_STALE, ProviderEvent.PROVIDER_READY])
    changed = [d.flags_changed for e, d in openfeature_events if e is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED]
    assert ["reply_to_ticket"] in changed


async def test_openfeature_fails_closed_when_the_map_never_loads_and_for_retired_types(
    openfeature_events: list[tuple[ProviderEvent, EventDetails]],
) -> None:
    """A provider whose map cannot load fails initialisation (status ERROR) yet answers crawl, never the
    caller's default; a retired type answers crawl with reason DEFAULT and is announced as changed."""

    def dead() -> None:
        with SyncTierMapClient(HttpTierTransport(dead_url(), backoff=(0.05, 0.2))) as tiers:
            with pytest.raises(ProviderNotReadyError, match="ConnectError"):
                api.set_provider_and_wait(TiergateProvider(tiers, ready_timeout=0.3))
            flags = api.get_client()
            assert flags.get_provider_status() is ProviderStatus.ERROR
            details = flags.get_string_details("refund_up_to_50", "run")
            assert (details.value, details.reason, details.error_code) == ("crawl", "STALE", None)

    await asyncio.to_thread(dead)
    transport = MemoryTierTransport()
    async with TierMapClient(transport) as tiers:
        transport.push({"action_type": "t", "tier": "walk", "version": 1})
        transport.finish_load()
        await tiers.wait_until_ready(1)
        api.set_provider_and_wait(TiergateProvider(tiers))
        flags = api.get_client()
        assert flags.get_string_value("t", "crawl") == "walk"
        transport.retire("t", 2)
        await tiers.wait_for(lambda c: c.record("t") is None, 1)
        details = flags.get_string_details("t", "run")
        assert (details.value, details.reason, details.error_code) == ("crawl", "DEFAULT", None)
    await until_heard(
        lambda: (
            (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ["t"])
            in [(e, d.flags_changed) for e, d in openfeature_events]
        )
    )


async def until_heard(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """openfeature runs event handlers on its own thread pool: what a provider emitted is heard a moment later."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert condition(), "the OpenFeature handlers did not hear it in time"


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition(), "condition not met in time"
