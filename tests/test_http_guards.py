"""The embedded HTTP API against clients that misbehave: bad query values, undecodable Authorization
headers, bodies that never finish, readers of the tier stream; and what /metrics shows besides tiergate's own
series. A real aiohttp server on loopback, real clients (raw sockets where a polite client cannot misbehave)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tiergate.models.wire import parse_ts
from tiergate.streams import http
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes()


@dataclass
class Running:
    client: TestClient
    port: int


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    """An embedded server with a token and a half-second body deadline, its clock held still."""
    evaluator = EmbeddedRuntime(read_policy(POLICY), tmp_path / "data", ManualClock(parse_ts("2026-11-02T12:00:00Z")))
    settings = ServeSettings(policy=POLICY, data_dir=tmp_path / "data", token="s3cret", body_timeout=0.5)
    served = TestServer(make_app(evaluator, settings, ticking=False), host="127.0.0.1")
    async with served, TestClient(served) as client:
        assert served.port is not None
        yield Running(client, served.port)
    evaluator.close()


async def exchange(port: int, request: bytes, pause_after: int | None = None, wait: float = 5.0) -> bytes:
    """Send raw bytes (optionally stopping after `pause_after` of them) and read the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request if pause_after is None else request[:pause_after])
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=-1", "limit=-1 is outside 1..10000"),
        ("limit=0", "limit=0 is outside 1..10000"),
        ("limit=10001", "limit=10001 is outside 1..10000"),
        ("limit=many", "limit='many' is not an integer"),
        ("after=99999999999999999999", "after=99999999999999999999 is outside 0..9223372036854775807"),
        ("after=-5", "after=-5 is outside 0.."),
        ("until=tomorrow", "bad query"),
    ],
)
async def test_decision_queries_out_of_range_get_a_400_naming_the_parameter(
    server: Running, query: str, named: str
) -> None:
    """The page size cap cannot be bypassed, and a number SQLite cannot hold is a 400, not a 500."""
    response = await server.client.get(f"/v1/decisions?{query}")
    assert response.status == 400
    body = await response.json()
    assert named in body["error"] and "limit 1..10000" in body["fix"]


async def test_a_page_within_the_cap_still_answers(server: Running) -> None:
    """limit and after inside their ranges page through the log as before."""
    response = await server.client.get("/v1/decisions?limit=2&after=0")
    assert response.status == 200
    body = await response.json()
    assert len(body["decisions"]) == 2 and body["next_after"] == 2


async def test_an_authorization_header_that_is_not_utf8_is_refused_not_a_crash(server: Running) -> None:
    """A raw 0xFF byte in Authorization gets 401 (wrong token), never a 500."""
    body = next(line for line in CLIMB.splitlines() if b'"type":"policy"' not in line)
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Content-Type: application/x-ndjson\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    answer = await exchange(server.port, head + body)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    good = await server.client.post("/v1/events", data=body, headers={"Authorization": "Bearer s3cret"})
    assert good.status == 200


async def test_a_body_that_never_finishes_gets_408_within_the_deadline(server: Running) -> None:
    """A client that announces 1,000 bytes and sends 10 is answered 408 after body_timeout, not held open."""
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n"
    )
    started = asyncio.get_running_loop().time()
    answer = await exchange(server.port, head + b"x" * 1000, pause_after=len(head) + 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert asyncio.get_running_loop().time() - started < 3


OPERATOR = {"Authorization": "Bearer s3cret", "Content-Type": "application/x-ndjson"}
EVENTS = b"\n".join(line for line in CLIMB.splitlines()[:40] if b'"type":"policy"' not in line)
LIMIT = 8 * 1024**2  # max_body_bytes' default
OVER_THE_LIMIT = b"\n".join([EVENTS.splitlines()[0]] * (LIMIT // 100))  # ~16 MB: events of over 100 bytes


async def chunks(body: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    """`body` as the client sends a stream: chunked, without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("sent", ["chunked", "gzip"])
async def test_a_body_found_over_the_limit_while_reading_gets_the_json_413(server: Running, sent: str) -> None:
    """A body without a Content-Length (chunked) or one that inflates past the limit (gzip) is refused
    with the documented JSON 413, as one with a Content-Length over the limit is; nothing of it is kept."""
    assert len(OVER_THE_LIMIT) > LIMIT
    if sent == "chunked":
        response = await server.client.post("/v1/events", data=chunks(OVER_THE_LIMIT), headers=OPERATOR)
    else:
        headers = OPERATOR | {"Content-Encoding": "gzip"}
        response = await server.client.post("/v1/events", data=gzip.compress(OVER_THE_LIMIT), headers=headers)
    assert response.status == 413 and response.content_type == "application/json"
    body = await response.json()
    assert f"over the {LIMIT} byte limit" in body["error"] and "smaller NDJSON batches" in body["fix"]
    rejected = await server.client.get("/v1/rejected", headers=OPERATOR)
    assert (await rejected.json())["rejected"] == []


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "identity", "gzip, identity"])
async def test_a_compressed_body_is_decoded_before_it_is_folded(server: Running, encoding: str) -> None:
    """The server undoes gzip and deflate itself (aiohttp's decoding is off, so that its refusals can be
    JSON): the events arrive as sent."""
    body = (
        zlib.compress(EVENTS) if encoding == "deflate" else EVENTS if encoding == "identity" else gzip.compress(EVENTS)
    )
    response = await server.client.post("/v1/events", data=body, headers=OPERATOR | {"Content-Encoding": encoding})
    assert response.status == 200, await response.text()
    assert (await response.json())["counts"] == {"applied": len(EVENTS.splitlines())}


@pytest.mark.parametrize(
    ("encoding", "body", "status", "error"),
    [
        ("gzip", b"not gzip\n", 400, "the body is not valid gzip data"),
        ("gzip", gzip.compress(EVENTS)[:100], 400, "ends before the compressed stream does"),
        ("deflate", b"not deflate\n", 400, "the body is not valid deflate data"),
        ("br", b"x\n", 415, "Content-Encoding 'br' is not supported"),
        ("zstd", b"x\n", 415, "Content-Encoding 'zstd' is not supported"),
        ("compress", b"x\n", 415, "Content-Encoding 'compress' is not supported"),
        ("gzip, gzip", gzip.compress(gzip.compress(EVENTS)), 415, "applies 2 codings; the server undoes one"),
        ("deflate", b"\x03\x00" * 200_000, 400, "more than 1 compressed stream(s)"),  # empty streams: no stall
        ("gzip", gzip.compress(b"") * 17, 400, "more than 16 compressed stream(s)"),
    ],
)
async def test_a_body_the_server_cannot_decode_gets_a_json_4xx_naming_the_encoding(
    server: Running, encoding: str, body: bytes, status: int, error: str
) -> None:
    """Undecodable data is a 400 (it was a 500 with a traceback in the log), an encoding the server does not
    decode a 415 with Accept-Encoding (it was a text 400 asking to install Brotli on the server); each
    says what to send instead. Nothing of such a body is kept."""
    response = await server.client.post("/v1/events", data=body, headers=OPERATOR | {"Content-Encoding": encoding})
    assert response.status == status and response.content_type == "application/json"
    answer = await response.json()
    assert error in answer["error"]
    assert "uncompressed" in answer["fix"] and (status == 400 or "gzip or deflate" in answer["fix"])
    if status == 415:
        assert response.headers["Accept-Encoding"] == "gzip, deflate"
    rejected = await server.client.get("/v1/rejected", headers=OPERATOR)
    assert (await rejected.json())["rejected"] == []


async def test_content_encoding_on_two_header_lines_is_one_list(server: Running) -> None:
    """Two Content-Encoding lines are one list (RFC 9110): a body compressed twice is refused as such, not
    decoded once and kept as undecodable input with a 200."""
    headers = [*OPERATOR.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
    response = await server.client.post("/v1/events", data=gzip.compress(gzip.compress(EVENTS)), headers=headers)
    assert response.status == 415 and "applies 2 codings" in (await response.json())["error"]


async def test_gzip_members_one_after_another_are_one_body(server: Running) -> None:
    """`cat a.gz b.gz` is one gzip body, as gzip itself reads it."""
    first, second = EVENTS.splitlines(keepends=True)[:1], EVENTS.splitlines(keepends=True)[1:]
    body = gzip.compress(b"".join(first)) + gzip.compress(b"".join(second))
    response = await server.client.post("/v1/events", data=body, headers=OPERATOR | {"Content-Encoding": "gzip"})
    assert (await response.json())["counts"] == {"applied": len(EVENTS.splitlines())}


async def until_ping(response: ClientResponse) -> list[bytes]:
    """The stream's lines up to and including its first ping."""
    lines: list[bytes] = []
    while not lines or lines[-1] != b": ping\n":
        lines.append(await response.content.readline())
    return lines


async def test_the_tier_stream_frames_records_and_pings_between_them(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSE from aiohttp-sse: each record has an event name and an id (type/version), a ping comment keeps a
    quiet stream visibly alive, and a reader coming back with Last-Event-ID gets the whole map again."""
    monkeypatch.setattr(http, "SSE_HEARTBEAT", 0.2)
    for last in (None, "reply_to_ticket/0"):
        headers = {} if last is None else {"Last-Event-ID": last}
        response = await server.client.get("/v1/tiers/stream", headers=headers)
        assert response.headers["Content-Type"] == "text/event-stream"
        lines = await asyncio.wait_for(until_ping(response), 5)
        records = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
        assert len(records) == 4
        ids = [line[4:].strip().decode() for line in lines if line.startswith(b"id: ")]
        assert sorted(ids) == sorted(f"{r['action_type']}/{r['version']}" for r in records)
        assert lines.count(b"event: tier\n") == 4
        response.close()


async def test_metrics_carry_process_and_python_series_and_no_empty_action_type(server: Running) -> None:
    """/metrics adds prometheus_client's process and platform collectors; input that names no catalog
    type is counted without an action_type label instead of as action_type=""."""
    bad = (
        b'{"type":"action"\n{"type":"outcome","event_id":"t","ts":"2026-11-02T11:00:00Z","action_type":"nope",'
        b'"action_id":"a","tier":"crawl","kind":"review","result":"accepted"}'
    )
    response = await server.client.post("/v1/events", data=bad, headers={"Authorization": "Bearer s3cret"})
    assert response.status == 200
    text = await (await server.client.get("/metrics")).text()
    assert 'action_type=""' not in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("tiergate_unattributed_events_total", (("result", "rejected"),))] == 2
    names = {name for name, _ in samples}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names


async def test_an_unknown_endpoint_or_method_answers_json_with_the_fix(server: Running) -> None:
    """404 and 405 of the API say what is wrong and what to do, in JSON like every other error."""
    missing = await server.client.get("/v1/nothing")
    assert missing.status == 404
    assert await missing.json() == {
        "error": "no such endpoint: /v1/nothing",
        "fix": "see the API table in docs/embedded.md",
    }
    wrong = await server.client.delete("/v1/tiers", headers={"Authorization": "Bearer s3cret"})
    assert wrong.status == 405
    body = await wrong.json()
    assert body["error"] == "DELETE is not allowed on /v1/tiers" and "GET" in body["fix"]
