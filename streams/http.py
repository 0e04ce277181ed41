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
import zlib
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

from . import __version__, console
from .access import ANONYMOUS, ROLES, Caller, Credentials, Role, first_forbidden
from .embedded import EmbeddedRuntime, Ingested, PolicyRefused
from .metrics import TiergateCollector, registry_with
from .pipeline import request_source
from .policy_file import PolicyFileError, parse_policy, policy_from_mapping
from .settings import ServeSettings
from .store import RejectedQuery, StoreError

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
        evaluator.take_facts()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiergate-writer")
        self.subscribers: set[asyncio.Queue[TierRecord | None]] = set()  # None: the server is shutting down
        self.watchers: set[asyncio.Queue[int | None]] = set()  # new facts per committed batch (the console)
        self.changes = 0  # facts (decisions, rejected input) the watchers have been told of, all told

    async def call(self, work: Callable[[], T]) -> T:
        """Run `work` on the writer thread, after the writes queued before it (it sees their state)."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, work)

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` on the writer thread, then tell subscribers of every tier change it committed and the
        console's watchers how many facts (decisions, rejected input) it added. (What was committed is taken
        on the writer thread, so a write queued behind this one cannot slip between.)"""

        def work_then_take() -> tuple[T, list[TierRecord], int]:
            done = work()
            return done, self.evaluator.take_tier_changes(), self.evaluator.take_facts()

        done, changes, facts = await self.call(work_then_take)
        for record in changes:
            for queue in self.subscribers:
                queue.put_nowait(record)
        if facts:
            self.changes += facts
            for watcher in self.watchers:
                watcher.put_nowait(facts)
        return done

    def close(self) -> None:
        self.thread.shutdown(wait=True)


EVALUATOR = web.AppKey("evaluator", EmbeddedRuntime)
SETTINGS = web.AppKey("settings", ServeSettings)
WRITER = web.AppKey("writer", Writer)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CALLER = web.RequestKey("caller", Caller)


class Gate:
    """Who a request comes from. With credentials, everything but /healthz (and the console, which signs
    its users in) needs one; with only a legacy token, the token is an operator and reads stay open; with
    neither (loopback only), everyone is an operator."""

    def __init__(self, credentials: Credentials | None, token: SecretStr | None) -> None:
        self.credentials, self.token = credentials, token
        self.reads_open = credentials is None

    @property
    def open(self) -> bool:
        return self.credentials is None and self.token is None

    def caller(self, authorization: str) -> Caller | None:
        """The caller an Authorization header names, or None (none given, or unknown)."""
        if self.credentials is not None:
            return self.credentials.identify(authorization)
        if self.token is None:
            return ANONYMOUS
        supplied = authorization.encode("utf-8", "surrogateescape")
        matches = hmac.compare_digest(supplied, f"Bearer {self.token.get_secret_value()}".encode())
        return LEGACY if matches else None


GATE = web.AppKey("gate", Gate)
LEGACY = Caller("token", "operator")
READ_ONLY = Caller(None, "reader")
EVERYONE: frozenset[Role] = frozenset(ROLES)
POSTERS: frozenset[Role] = frozenset({"agent", "reporter", "operator"})
READERS: frozenset[Role] = frozenset({"reader", "operator"})
OPERATORS: frozenset[Role] = frozenset({"operator"})
TIER_MAP = frozenset({"/v1/tiers", "/v1/tiers/stream", "/v1/tiers/{action_type}"})
SAFE = frozenset({"GET", "HEAD"})


def roles_for(method: str, route: str) -> frozenset[Role] | None:
    """The roles that may call a route (None: anyone). The tier map is every role's; other reads are readers'
    and operators'; posting events is for agents, reporters and operators (each event is checked on its
    own); everything else is the operators'."""
    if route == "/healthz" or route == "/console" or route.startswith("/console/"):
        return None  # the console checks its own sign-in
    if method in SAFE:
        return EVERYONE if route in TIER_MAP else READERS
    return POSTERS if (method, route) == ("POST", "/v1/events") else OPERATORS


def _route(request: web.Request) -> str | None:
    """The matched route's pattern (`/v1/tiers/{action_type}`), or None when no route matches (a 404)."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown route or method of the API answers JSON with the fix, like every other error."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if not request.path.startswith("/v1/"):
            raise
        return problem(404, f"no such endpoint: {request.path}", "see the API table in docs/embedded.md")
    except web.HTTPMethodNotAllowed as refused:
        allowed = ", ".join(sorted(refused.allowed_methods))
        return problem(405, f"{request.method} is not allowed on {request.path}", f"use {allowed}")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for a missing or unknown credential, 403 for a role that may not call the route; else the handler
    runs with the caller in request[CALLER]."""
    route = _route(request)
    roles = None if route is None else roles_for(request.method, route)
    if roles is None:
        return await handler(request)
    gate = request.app[GATE]
    caller = gate.caller(request.headers.get("Authorization", ""))
    if caller is None and request.method in SAFE and gate.reads_open:
        caller = READ_ONLY
    if caller is None:
        return _unauthorised(gate)
    if caller.role not in roles:
        return problem(
            403,
            f"role {caller.role} ({caller.name}) may not {request.method} {request.path}",
            f"use a credential with role {' or '.join(sorted(roles))}",
        )
    request[CALLER] = caller
    return await handler(request)


def _unauthorised(gate: Gate) -> web.Response:
    if gate.credentials is None:
        response = problem(401, "missing or wrong bearer token", "send Authorization: Bearer <token>")
    else:
        response = problem(
            401,
            "missing or unknown credential",
            "send Authorization: Bearer <secret> of a credential this server knows (its TIERGATE_CREDENTIALS_FILE)",
        )
    response.headers["WWW-Authenticate"] = 'Bearer realm="tiergate"'
    return response


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a request's body within `body_timeout` seconds, before its handler runs: a client that trickles
    its body (or never finishes it) gets 408 instead of holding a connection and a buffer open forever. The
    body is then decoded (its Content-Encoding undone), so the handler's read() returns what was compressed."""
    settings = request.app[SETTINGS]
    if request.can_read_body and (request.content_length or 0) <= settings.max_body_bytes:
        try:
            async with asyncio.timeout(settings.body_timeout):
                body = await request.read()
            coding = ", ".join(request.headers.getall("Content-Encoding", []))  # several header lines are one list
            request._read_bytes = decoded(body, coding, settings.max_body_bytes)
        except TimeoutError:
            return problem(
                408,
                f"the request body did not arrive within {settings.body_timeout:g}s",
                "send the whole body at once; split a large history into smaller NDJSON batches",
            )
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked): found while reading
            return too_large(f"the body is over the {settings.max_body_bytes} byte limit")
        except Unreadable as refused:
            return refused.answer
    return await handler(request)


ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The Content-Encodings the server undoes itself (zlib's window bits for each; identity needs nothing).
aiohttp's own decoding is off (make_app): it answers an encoding it cannot decode in plain text, before
the app runs."""
ACCEPT_ENCODING = "gzip, deflate"  # the header a 415 carries (RFC 7694)


class Unreadable(Exception):
    """A body the server cannot take as it was sent; `answer` says why and what to send instead."""

    def __init__(self, answer: web.Response) -> None:
        super().__init__(answer.text)
        self.answer = answer


def too_large(error: str) -> web.Response:
    return problem(413, error, "send smaller NDJSON batches")


def decoded(body: bytes, content_encoding: str, limit: int) -> bytes:
    """`body` with its Content-Encoding undone (codings are listed in the order they were applied), or
    Unreadable: 415 for an encoding the server does not decode, 400 for data that is not what the header
    says, 413 once the decoded body passes `limit` bytes."""
    codings = [c for c in (part.strip().lower() for part in content_encoding.split(",")) if c not in ("", "identity")]
    unknown = next((coding for coding in codings if coding not in ENCODINGS), None)
    if unknown is not None or len(codings) > 1:
        error = (
            f"Content-Encoding {unknown!r} is not supported"
            if unknown is not None
            else f"Content-Encoding {content_encoding!r} applies {len(codings)} codings; the server undoes one"
        )
        answer = problem(
            415,
            error,
            "send the body uncompressed (no Content-Encoding, or identity), or compressed once with gzip or deflate",
        )
        answer.headers["Accept-Encoding"] = ACCEPT_ENCODING
        raise Unreadable(answer)
    return _inflated(body, codings[0], limit) if codings else body


MAX_GZIP_MEMBERS = 16
"""gzip members one after another read as one body (as `cat a.gz b.gz` makes); a few are plenty, and each
costs a copy of what follows it, so a body of thousands of empty members cannot stall the server."""


def _inflated(body: bytes, coding: str, limit: int) -> bytes:
    """One coding undone, stopping as soon as the output passes `limit` (a few kilobytes can inflate to
    gigabytes). Several gzip members one after another are one body, as gzip itself reads them."""
    out, rest, streams = bytearray(), body, 0
    try:
        while rest:
            streams += 1
            if streams > (1 if coding == "deflate" else MAX_GZIP_MEMBERS):
                raise zlib.error(f"more than {streams - 1} compressed stream(s) one after another")
            raw_deflate = coding == "deflate" and rest[0] & 0x0F != 8  # no zlib header, as some clients send
            inflater = zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else ENCODINGS[coding])
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise Unreadable(too_large(f"the body, decompressed ({coding}), is over the {limit} byte limit"))
            if not inflater.eof:
                raise zlib.error("the data ends before the compressed stream does")
            rest = inflater.unused_data
    except zlib.error as error:
        raise Unreadable(
            problem(
                400,
                f"the body is not valid {coding} data ({error}), as its Content-Encoding says it is",
                f"compress the body with {coding}, or send it uncompressed without Content-Encoding",
            )
        ) from None
    return bytes(out)


def _split(body: bytes, content_type: str) -> list[bytes]:
    """One JSON object, or NDJSON: one event a line (blank lines ignored)."""
    if content_type == "application/json":
        return [body]
    return [line for line in body.split(b"\n") if line.strip()]


async def post_events(request: web.Request) -> web.Response:
    """Fold a batch of events (or, with ?dry_run=1, answer what folding it would do, storing nothing). A batch
    holding an event its caller may not post is refused whole: nothing of it is stored, not even as rejected
    input."""
    settings, writer, caller = request.app[SETTINGS], request.app[WRITER], request[CALLER]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return too_large(f"body of {request.content_length} bytes is over the {settings.max_body_bytes} byte limit")
    body = await request.read()
    if not body.strip():
        return problem(400, "empty body", "send one JSON event, or NDJSON: one event a line")
    raws = _split(body, request.content_type)
    if len(raws) > settings.max_batch:
        return problem(
            413, f"{len(raws)} events in one request, over the limit of {settings.max_batch}", "split the batch"
        )
    refused = first_forbidden(raws, caller)
    if refused is not None:
        return problem(403, refused.error(caller), refused.fix())
    source = request_source(request.remote, caller.name)
    evaluator = writer.evaluator
    if _dry_run(request):
        if caller.role != "operator":
            return problem(403, f"a dry run is for operators, not role {caller.role}", "post without dry_run")
        tried = await writer.call(lambda: evaluator.dry_run(raws, source, caller.name))
        return json(answer(tried) | {"dry_run": True})
    try:
        done = await writer.run(lambda: evaluator.ingest(raws, source, principal=caller.name))
    except StoreError as error:
        return problem(
            503, f"the batch was not stored: {error}", "nothing of it counts: retry it once the store is fixed"
        )
    return json(answer(done))


def _dry_run(request: web.Request) -> bool:
    return request.query.get("dry_run", "0").lower() in ("1", "true", "yes")


def answer(done: Ingested) -> dict[str, Any]:
    """A batch's answer: each event's result, the counts and the decisions made."""
    counts: dict[str, int] = {}
    for result in done.results:
        counts[result.result] = counts.get(result.result, 0) + 1
    return {
        "results": [r.record() for r in done.results],
        "counts": counts,
        "decisions": [d.record() for d in done.decisions],
    }


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


REJECTED_RESULTS = ("rejected", "late")


def rejected_query(query: Mapping[str, str]) -> RejectedQuery:
    """GET /v1/rejected's parameters, or ValueError naming the bad one."""
    result = query.get("result")
    if result is not None and result not in REJECTED_RESULTS:
        raise ValueError(f"result={result!r} is not one of {', '.join(REJECTED_RESULTS)}")
    return RejectedQuery(
        after=_bounded(query, "after", 0, 0, MAX_SEQ),
        limit=_bounded(query, "limit", 100, 1, MAX_PAGE),
        reason=query.get("reason") or None,
        result=result,
        action_type=query.get("action_type") or None,
    )


async def get_rejected(request: web.Request) -> web.Response:
    """Input that did not count (bad, refused or late) with its reason, oldest first, paged by id."""
    try:
        query = rejected_query(request.query)
    except ValueError as error:
        return problem(
            400,
            f"bad query: {error}",
            f"after is an id (next_after of the previous page), limit 1..{MAX_PAGE}, result rejected or late; "
            "reason is a substring, action_type a name",
        )
    store = request.app[EVALUATOR].store
    rows = await request.app[WRITER].call(lambda: store.rejected_input(query))  # committed rows only
    return json({"rejected": rows, "next_after": rows[-1]["id"] if rows else query.after})


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
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        return problem(
            422,
            f"the body is not JSON ({error}): POST /v1/policy takes a JSON object whose `policy` is the YAML text "
            "(or its mapping), with `actor` and `reason`, not the YAML file itself",
            POLICY_BODY,
        )
    try:
        policy = _policy_of(body)
        actor, reason = _required(body, "actor"), _required(body, "reason")
    except (TypeError, ValueError) as error:
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
                principal=request[CALLER].name,
                activation_id=body.get("activation_id"),
                dry_run=dry_run,
                if_match=if_match,
            )
        )
    except PolicyRefused as refused:
        status = 412 if if_match is not None and "If-Match" in str(refused) else 409
        return problem(status, str(refused), "diff against GET /v1/policy, fix the change, and apply again")
    return json(applied.record())


POLICY_BODY = (
    "run `tiergate policy apply FILE --actor … --reason …` (it sends the file for you), or send JSON: "
    """jq -Rs '{policy: ., actor: "you", reason: "why"}' FILE | curl -XPOST --data-binary @- …/v1/policy"""
)


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


def make_app(
    evaluator: EmbeddedRuntime,
    settings: ServeSettings,
    ticking: bool = True,
    credentials: Credentials | None = None,
) -> web.Application:
    """The server's app. `credentials` (else those the settings name) decide who may call what."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[json_errors, guard, body_deadline],
        handler_args={"auto_decompress": False},  # the body deadline decodes bodies: its errors are JSON
    )
    app[GATE] = Gate(credentials if credentials is not None else settings.load_credentials(), settings.token)
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
            web.get("/v1/rejected", get_rejected),
            web.get("/v1/policy", get_policy),
            web.post("/v1/policy", post_policy),
            web.get("/v1/policy/history", get_policy_history),
            web.get("/v1/policy/activations/{activation_id}", get_activation),
            web.get("/metrics", get_metrics),
            web.get("/healthz", get_health),
        ]
    )
    console.mount(app, writer, app[GATE])
    if ticking:
        app.cleanup_ctx.append(_ticker)

    async def end_streams(_: web.Application) -> None:
        for queue in writer.subscribers:
            queue.put_nowait(None)  # let open event streams finish instead of waiting out the shutdown timeout
        for watcher in writer.watchers:
            watcher.put_nowait(None)

    app.on_shutdown.append(end_streams)

    async def close(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, writer.close)

    app.on_cleanup.append(close)
    return app
