"""The console's routes, mounted on `tiergate serve` by `mount(app, writer, gate)`.

Reading needs a reader or operator (signed in, unless the server's reads are open); acting needs an operator.
Every form carries the session's CSRF token; every response carries a strict Content-Security-Policy; every
value from the log is escaped by the templates (autoescape), never trusted as markup.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tiergate.models.wire import TIERS, format_ts

from ..access import ANONYMOUS, Caller
from . import views
from .sessions import COOKIE, Session, Sessions

if TYPE_CHECKING:
    from ..embedded import EmbeddedRuntime, Ingested
    from ..http import Gate, Writer

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
OPS = ("pin", "unpin", "cap", "uncap", "promote", "demote")
STATIC = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
"""The only files the console serves from its package."""
PARTS = ("tiers", "log", "overrides", "rejected")
HEARTBEAT = 15.0
READ_ONLY = Caller(None, "reader")


class Console:
    """The console's state: the writer it reads and writes through, who may do what, and the sessions."""

    def __init__(self, writer: Writer, gate: Gate) -> None:
        self.writer, self.gate, self.sessions = writer, gate, Sessions()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    @property
    def runtime(self) -> EmbeddedRuntime:
        return self.writer.evaluator

    def viewer(self, session: Session) -> Caller | None:
        """Who the session reads as: its signed-in caller; on a server whose reads are open, a reader."""
        if session.caller is not None:
            return session.caller
        return READ_ONLY if self.gate.reads_open else None

    def render(self, template: str, session: Session, status: int = 200, **values: Any) -> web.Response:
        viewer = self.viewer(session)
        html = self.templates.get_template(template).render(
            csrf=session.csrf,
            viewer=viewer,
            signed_in=session.caller is not None,
            open_server=self.gate.open,
            may_act=viewer is not None and viewer.role == "operator",
            tier_names=TIERS,
            ops=OPS,
            **values,
        )
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response


CONSOLE = web.AppKey("console", Console)


def mount(app: web.Application, writer: Writer, gate: Gate) -> None:
    """Serve the console at /console on `app`."""
    app[CONSOLE] = Console(writer, gate)
    app.add_routes(
        [
            web.get("/console", page),
            web.get("/console/parts/{part}", part),
            web.get("/console/stream", stream),
            web.get("/console/sign-in", sign_in_form),
            web.post("/console/sign-in", sign_in),
            web.post("/console/sign-out", sign_out),
            web.post("/console/override", override),
        ]
    )
    app.router.add_get("/console/static/{name}", static)
    app.on_response_prepare.append(_secure)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Every response of the server gets the strict policy: nothing but this origin's own files runs."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def static(request: web.Request) -> web.StreamResponse:
    """The console's script and style sheet, from the package."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = (HERE / "static" / name).read_bytes()
    response = web.Response(body=body, content_type=STATIC[name], charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


# -- sessions ------------------------------------------------------------------------------------------


def session_of(request: web.Request) -> tuple[Session, bool]:
    """The request's session, or a new one (True: set its cookie). On a server without credentials the
    new session is already the anonymous operator's."""
    console = request.app[CONSOLE]
    found = console.sessions.find(request.cookies.get(COOKIE))
    if found is not None:
        return found, False
    return console.sessions.new(ANONYMOUS if console.gate.open else None), True


def with_cookie(response: web.StreamResponse, session: Session, request: web.Request) -> web.StreamResponse:
    response.set_cookie(COOKIE, session.id, path="/console", httponly=True, samesite="Strict", secure=request.secure)
    return response


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def refused(console: Console, session: Session, status: int, text: str) -> web.Response:
    return console.render("refused.html", session, status=status, message=text)


async def form_of(request: web.Request, session: Session) -> dict[str, str] | None:
    """The posted form's fields, or None when its CSRF token is missing or not the session's."""
    fields = {name: value for name, value in (await request.post()).items() if isinstance(value, str)}
    return fields if session.csrf_matches(fields.get("csrf")) else None


# -- reading -------------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    session, new = session_of(request)
    if console.viewer(session) is None:
        return with_cookie(see_other("/console/sign-in"), session, request)
    filters = views.Filters.of(request.query, set(console.runtime.state.keys))
    data = await console.writer.call(lambda: views.everything(console.runtime, filters))
    response = console.render("page.html", session, notice=session.take_notice(), filters=filters, **data)
    return with_cookie(response, session, request) if new else response


async def part(request: web.Request) -> web.StreamResponse:
    """One section of the page, for the live refresh."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    name = request.match_info["part"]
    if console.viewer(session) is None:
        return refused(console, session, 401, "sign in again")
    if name not in PARTS:
        raise web.HTTPNotFound()
    filters = views.Filters.of(request.query, set(console.runtime.state.keys))
    data = await console.writer.call(lambda: views.everything(console.runtime, filters))
    return console.render(f"_{name}.html", session, filters=filters, **data)


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `changed` (with the number of decisions) after every batch that made decisions."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    if console.viewer(session) is None:
        return refused(console, session, 401, "sign in again")
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    console.writer.watchers.add(queue)
    response = EventSourceResponse(sep="\n", ping_interval=HEARTBEAT)
    try:
        await response.prepare(request)
        async with response:
            await response.send("ready", event="ready")
            await _forward(response, queue, console, session)
    except (ConnectionResetError, TimeoutError):  # the reader left, or stalled and was cut off
        pass
    finally:
        console.writer.watchers.discard(queue)
    return response


async def _forward(
    response: EventSourceResponse, queue: asyncio.Queue[int | None], console: Console, session: Session
) -> None:
    while response.is_connected() and console.sessions.find(session.id) is not None:
        try:
            made = await asyncio.wait_for(queue.get(), HEARTBEAT)
        except TimeoutError:
            continue
        if made is None:
            return
        await response.send(str(made), event="changed")


# -- signing in ----------------------------------------------------------------------------------------


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    session, new = session_of(request)
    response = console.render("sign_in.html", session, notice=session.take_notice())
    return with_cookie(response, session, request) if new else response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Exchange a reader's or operator's secret for a new session; agents and reporters are refused."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    fields = await form_of(request, session)
    if fields is None:
        return refused(console, session, 403, "the form's CSRF token is missing or stale: reload the page and retry")
    caller = console.gate.caller(f"Bearer {fields.get('secret', '').strip()}")
    if caller is None:
        session.notice = ("error", "unknown credential: paste the secret of a reader or operator credential")
        return see_other("/console/sign-in")
    if caller.role not in ("reader", "operator"):
        session.notice = (
            "error",
            f"{caller.name} is an {caller.role} credential: the console is for readers and operators",
        )
        return see_other("/console/sign-in")
    signed_in = console.sessions.sign_in(session, caller)
    return with_cookie(see_other("/console"), signed_in, request)


async def sign_out(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    if await form_of(request, session) is None:
        return refused(console, session, 403, "the form's CSRF token is missing or stale: reload the page and retry")
    console.sessions.end(session)
    return with_cookie(see_other("/console/sign-in"), console.sessions.new(), request)


# -- acting --------------------------------------------------------------------------------------------


async def override(request: web.Request) -> web.StreamResponse:
    """An operator's override from the page: checked by a dry run with the fold's own rules, then posted
    under the operator's credential (its name is the decision's principal)."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    fields = await form_of(request, session)
    if fields is None:
        return refused(console, session, 403, "the form's CSRF token is missing or stale: reload the page and retry")
    caller = session.caller
    if caller is None or caller.role != "operator":
        return refused(console, session, 403, "overrides need an operator: sign in with an operator credential")
    raw = override_event(fields, console.runtime.clock.now())
    session.notice = await _apply(console, raw, caller)
    return see_other(f"/console?type={_query_value(fields.get('action_type', ''))}#log")


def override_event(fields: dict[str, str], now: int) -> bytes:
    """The override the form asks for, as wire JSON (the decoder judges it like any posted event)."""
    event: dict[str, Any] = {
        "type": "override",
        "event_id": f"console/{uuid.uuid4()}",
        "ts": format_ts(now),
        "action_type": fields.get("action_type", ""),
        "op": fields.get("op", ""),
        "actor": fields.get("actor", "").strip(),
        "reason": fields.get("reason", "").strip(),
    }
    if fields.get("tier"):
        event["tier"] = fields["tier"]
    return orjson.dumps(event)


async def _apply(console: Console, raw: bytes, caller: Caller) -> tuple[str, str]:
    """Dry-run the override, then post it if the fold would apply it: the notice to show."""
    runtime, source = console.runtime, f"console({caller.name})"
    tried = await console.writer.call(lambda: runtime.dry_run([raw], source, caller.name))
    if tried.results[0].result != "applied":
        return "error", f"not sent: {tried.results[0].reason}"
    done = await console.writer.run(lambda: runtime.ingest([raw], source, principal=caller.name))
    assert done is not None
    return _outcome(done)


def _outcome(done: Ingested) -> tuple[str, str]:
    result = done.results[0]
    if result.result != "applied":
        return "error", f"{result.result}: {result.reason}"
    made = [d.record() for d in done.decisions if d.kind == "override"]
    said = "; ".join(f"{r['decision_id']}: {r['from_tier']} → {r['to_tier']}" for r in made)
    return "ok", f"applied ({said})" if said else "applied"


def _query_value(value: str) -> str:
    return quote(value, safe="")
