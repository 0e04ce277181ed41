"""`tiergate serve`: the embedded runtime's HTTP API (docs/embedded.md).

Writes (posted events and clock ticks) run one at a time on a single writer thread, so the fold stays
sequential and the event loop never waits on fsync; a batch is acknowledged only after its transaction
committed. Readers get the published tier map, which is replaced record by record after each commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from tiergate.models.decisions import TierRecord
from tiergate.models.policy import PolicyError
from tiergate.models.views import key_view
from tiergate.models.wire import parse_ts

from . import __version__
from .embedded import EmbeddedRuntime, PolicyRefused
from .metrics import TiergateCollector, registry_with
from .policy_file import PolicyFileError, parse_policy, policy_from_mapping
from .settings import ServeSettings
from .store import StoreError

log = logging.getLogger("tiergate.serve")
T = TypeVar("T")

SSE_HEARTBEAT = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, error: str, fix: str) -> web.Response:
    """A JSON error that says what is wrong and what to do about it."""
    return json({"error": error, "fix": fix}, status)


def json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


class Writer:
    """The single writer: runs ingest batches in order on one thread and tells subscribers of tier changes."""

    def __init__(self, evaluator: EmbeddedRuntime) -> None:
        self.evaluator = evaluator
        evaluator.take_tier_changes()  # made before anyone could listen: a subscriber gets the whole map first
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiergate-writer")
        self.subscribers: set[asyncio.Queue[TierRecord | None]] = set()  # None: the server is shutting down

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` on the writer thread, then tell the subscribers of every tier change it committed."""
        done = await asyncio.get_running_loop().run_in_executor(self.thread, work)
        for record in self.evaluator.take_tier_changes():
            for queue in self.subscribers:
                queue.put_nowait(record)
        return done

    def close(self) -> None:
        self.thread.shutdown(wait=True)


EVALUATOR = web.AppKey("evaluator", EmbeddedRuntime)
SETTINGS = web.AppKey("settings", ServeSettings)
WRITER = web.AppKey("writer", Writer)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def _authorised(request: web.Request) -> web.Response | None:
    """An operator's request (the bearer token, when one is configured), or the refusal to send."""
    token = request.app[SETTINGS].token
    if token is not None and not bearer_matches(request, token):
        return problem(401, "missing or wrong bearer token", "send Authorization: Bearer <token>")
    return None


def bearer_matches(request: web.Request, token: SecretStr) -> bool:
    """The Authorization header is `Bearer <token>`, compared in constant time as bytes: a header holding
    bytes that are not UTF-8 (aiohttp keeps them as surrogates) is simply not the token."""
    supplied = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(supplied, f"Bearer {token.get_secret_value()}".encode())


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a request's body within `body_timeout` seconds, before its handler runs: a client that trickles
    its body (or never finishes it) gets 408 instead of holding a connection and a buffer open forever."""
    settings = request.app[SETTINGS]
    if request.can_read_body and (request.content_length or 0) <= settings.max_body_bytes:
        try:
            async with asyncio.timeout(settings.body_timeout):
                await request.read()  # kept by aiohttp: the handler's read() returns it
        except TimeoutError:
            return problem(
                408,
                f"the request body did not arrive within {settings.body_timeout:g}s",
                "send the whole body at once; split a large history into smaller NDJSON batches",
            )
    return await handler(request)


def _split(body: bytes, content_type: str) -> list[bytes]:
    """One JSON object, or NDJSON: one event a line (blank lines ignored)."""
    if content_type == "application/json":
        return [body]
    return [line for line in body.split(b"\n") if line.strip()]


async def post_events(request: web.Request) -> web.Response:
    settings, writer = request.app[SETTINGS], request.app[WRITER]
    if settings.token is not None and not bearer_matches(request, settings.token):
        return problem(401, "missing or wrong bearer token", "send Authorization: Bearer <token>")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return problem(
            413,
            f"body of {request.content_length} bytes is over the {settings.max_body_bytes} byte limit",
            "send smaller NDJSON batches",
        )
    body = await request.read()
    if not body.strip():
        return problem(400, "empty body", "send one JSON event, or NDJSON: one event a line")
    raws = _split(body, request.content_type)
    if len(raws) > settings.max_batch:
        return problem(
            413, f"{len(raws)} events in one request, over the limit of {settings.max_batch}", "split the batch"
        )
    try:
        done = await writer.run(lambda: writer.evaluator.ingest(raws, f"http({request.remote})"))
    except StoreError as error:
        return problem(
            503, f"the batch was not stored: {error}", "nothing of it counts: retry it once the store is fixed"
        )
    counts: dict[str, int] = {}
    for result in done.results:
        counts[result.result] = counts.get(result.result, 0) + 1
    return json(
        {
            "results": [r.record() for r in done.results],
            "counts": counts,
            "decisions": [d.record() for d in done.decisions],
        }
    )


async def get_tiers(request: web.Request) -> web.Response:
    evaluator = request.app[EVALUATOR]
    version, sha = identity(evaluator)
    return json({"tiers": [r.record() for r in evaluator.tier_map()], "policy_version": version, "policy_sha256": sha})


def identity(runtime: EmbeddedRuntime) -> tuple[str, str]:
    """(version, sha256) of the policy in force: the latest activation's."""
    current = runtime.current_policy()
    return ("", "") if current is None else (current.policy_version, current.policy_sha256)


async def get_tier(request: web.Request) -> web.Response:
    name = request.match_info["action_type"]
    record = request.app[EVALUATOR].tiers.get(name)
    if record is None:
        return problem(
            404, f"unknown action type {name!r}", "add it to the policy's catalog; until then agents treat it as crawl"
        )
    return json(record.record())


async def get_status(request: web.Request) -> web.Response:
    """Each action type's tier with the evidence behind it and its hold progress (as of its last close)."""
    evaluator = request.app[EVALUATOR]
    keys = sorted(evaluator.state.keys.values(), key=lambda k: k.action_type)
    return json({"action_types": [key_view(k).record() for k in keys]})


async def stream_tiers(request: web.Request) -> web.StreamResponse:
    """Server-sent events (aiohttp-sse): every current record first, then each new one as soon as it is
    committed; a comment line (ping) every SSE_HEARTBEAT seconds, so readers can tell a quiet stream from a
    dead one. A reconnecting reader gets the whole map again (each record is a key's whole state), so its
    Last-Event-ID needs no replay."""
    writer = request.app[WRITER]
    stream = EventSourceResponse(sep="\n", ping_interval=SSE_HEARTBEAT)
    queue: asyncio.Queue[TierRecord | None] = asyncio.Queue()
    writer.subscribers.add(queue)
    try:
        await stream.prepare(request)
        async with stream:
            for record in writer.evaluator.tier_map():
                await _send(stream, record)
            while stream.is_connected():
                try:
                    update = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT)
                except TimeoutError:
                    continue  # the ping task finds out whether the reader is still there
                if update is None:
                    break
                await _send(stream, update)
    except (ConnectionResetError, TimeoutError):  # the reader left, or stalled and was cut off
        pass
    finally:
        writer.subscribers.discard(queue)
    return stream


async def _send(stream: EventSourceResponse, record: TierRecord) -> None:
    """A tier record, or for a retired type a `retired` event: the type left the map (readers answer crawl)."""
    sse_id = f"{record.action_type}/{record.version}"
    if record.retired:
        retired = orjson.dumps({"action_type": record.action_type, "version": record.version}).decode()
        await stream.send(retired, id=sse_id, event="retired")
    else:
        await stream.send(record.to_json(), id=sse_id, event="tier")


MAX_PAGE = 10_000
MAX_SEQ = 2**63 - 1  # SQLite's largest integer


def _bounded(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or ValueError naming it and its range."""
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise ValueError(f"{name}={query[name]!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {low}..{high}")
    return value


async def get_decisions(request: web.Request) -> web.Response:
    store = request.app[EVALUATOR].store
    query = request.query
    try:
        since = parse_ts(query["since"]) if "since" in query else None
        until = parse_ts(query["until"]) if "until" in query else None
        after = _bounded(query, "after", 0, 0, MAX_SEQ)
        limit = _bounded(query, "limit", 1000, 1, MAX_PAGE)
    except (ValueError, OverflowError) as error:
        return problem(
            400,
            f"bad query: {error}",
            f"since/until are RFC 3339 (2026-11-02T10:00:00Z); after is a decision seq (next_after of the "
            f"previous page), limit 1..{MAX_PAGE}",
        )
    rows = await asyncio.to_thread(store.decisions, query.get("action_type"), since, until, after, limit)
    body = (
        b'{"decisions":['
        + b",".join(record.encode() for _, record in rows)
        + b'],"next_after":'
        + str(rows[-1][0] if rows else after).encode()
        + b"}"
    )
    return web.Response(body=body, content_type="application/json")


async def get_policy(request: web.Request) -> web.Response:
    """The policy document in force (the latest activation's), normalised, with its identity."""
    current = request.app[EVALUATOR].current_policy()
    if current is None:
        return problem(
            404, "no policy has been activated yet", "start tiergate serve with --policy, or POST /v1/policy"
        )
    return json({"policy": current.document, **current.record()}, headers={"ETag": f'"{current.policy_sha256}"'})


async def get_policy_history(request: web.Request) -> web.Response:
    """Every activation, oldest first: who changed the policy, when, why, from which source."""
    rows = await asyncio.to_thread(request.app[EVALUATOR].store.activations)
    return json({"activations": [row.record() for row in rows]})


async def get_activation(request: web.Request) -> web.Response:
    """One activation's policy document (what `tiergate policy rollback` activates again)."""
    wanted = request.match_info["activation_id"]
    rows = await asyncio.to_thread(request.app[EVALUATOR].store.activations)
    row = next((row for row in rows if row.activation_id == wanted), None)
    if row is None:
        return problem(404, f"no activation {wanted!r}", "GET /v1/policy/history lists them")
    return json({"policy": row.document, **row.record()})


async def post_policy(request: web.Request) -> web.Response:
    """Apply a policy (operator): validate, diff and append its activation in one transaction.
    Body: {"policy": "<YAML text>" or {…mapping…}, "actor": …, "reason": …, "activation_id": optional};
    `?dry_run=1` answers the diff and what would move at once without writing; `If-Match: "<sha>"`
    refuses the apply unless that is the policy in force (two operators cannot overwrite each other)."""
    if (refusal := _authorised(request)) is not None:
        return refusal
    try:
        body = orjson.loads(await request.read())
        policy = _policy_of(body)
        actor, reason = _required(body, "actor"), _required(body, "reason")
    except (orjson.JSONDecodeError, TypeError, ValueError) as error:
        return problem(
            422, f"the policy cannot be applied: {error}", "send {policy, actor, reason}; fix each field named"
        )
    dry_run = request.query.get("dry_run", "0") not in ("0", "false", "")
    if_match = request.headers.get("If-Match", "").strip('"') or None
    writer = request.app[WRITER]
    try:
        applied = await writer.run(
            lambda: writer.evaluator.apply(
                policy,
                "api",
                actor,
                reason,
                activation_id=body.get("activation_id"),
                dry_run=dry_run,
                if_match=if_match,
            )
        )
    except PolicyRefused as refused:
        status = 412 if if_match is not None and "If-Match" in str(refused) else 409
        return problem(status, str(refused), "diff against GET /v1/policy, fix the change, and apply again")
    return json(applied.record())


def _policy_of(body: Any) -> Any:
    if not isinstance(body, dict) or "policy" not in body:
        raise ValueError("the body needs a `policy`: its YAML text or its mapping")
    given = body["policy"]
    try:
        return parse_policy(given, "policy") if isinstance(given, str) else policy_from_mapping(given)
    except (PolicyFileError, PolicyError) as error:
        raise ValueError(str(error)) from None


def _required(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{field}` is required: who is applying it and why are part of the promotion log")
    return value


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_health(request: web.Request) -> web.Response:
    evaluator = request.app[EVALUATOR]
    failing = evaluator.write_error is not None
    return json(
        {
            "status": "failing" if failing else "degraded" if evaluator.problems else "ok",
            "problems": ([f"writes fail: {evaluator.write_error}"] if failing else []) + evaluator.problems,
            "version": __version__,
            "policy_version": identity(evaluator)[0],
            "events": evaluator.store.last_seq(),
            "clock": evaluator.clock.now(),
        },
        503 if failing else 200,
    )


async def _ticker(app: web.Application) -> AsyncIterator[None]:
    """Close idle windows on the clock: a tick for each key whose oldest open window the clock has passed."""
    writer, interval = app[WRITER], app[SETTINGS].tick_interval

    async def loop() -> None:
        while True:
            try:
                await writer.run(writer.evaluator.tick)
            except Exception:  # keep ticking: one failed batch was rolled back and is retried next time
                log.exception("tick failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(evaluator: EmbeddedRuntime, settings: ServeSettings, ticking: bool = True) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[body_deadline])
    writer = Writer(evaluator)
    registry = registry_with(
        TiergateCollector(
            lambda: identity(evaluator),
            lambda: evaluator.state,
            lambda: evaluator.tallies,
            evaluator.clock.now,
            settings.stale_after,
        )
    )
    app[EVALUATOR], app[SETTINGS], app[WRITER], app[REGISTRY] = evaluator, settings, writer, registry
    app.add_routes(
        [
            web.post("/v1/events", post_events),
            web.get("/v1/tiers", get_tiers),
            web.get("/v1/tiers/stream", stream_tiers),
            web.get("/v1/tiers/{action_type}", get_tier),
            web.get("/v1/status", get_status),
            web.get("/v1/decisions", get_decisions),
            web.get("/v1/policy", get_policy),
            web.post("/v1/policy", post_policy),
            web.get("/v1/policy/history", get_policy_history),
            web.get("/v1/policy/activations/{activation_id}", get_activation),
            web.get("/metrics", get_metrics),
            web.get("/healthz", get_health),
        ]
    )
    if ticking:
        app.cleanup_ctx.append(_ticker)

    async def end_streams(_: web.Application) -> None:
        for queue in writer.subscribers:
            queue.put_nowait(None)  # let open event streams finish instead of waiting out the shutdown timeout

    app.on_shutdown.append(end_streams)

    async def close(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, writer.close)

    app.on_cleanup.append(close)
    return app
