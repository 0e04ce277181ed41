"""The console's routes: reading (the page, its live parts and stream, the policy page) and signing in.

`mount(app, writer, gate)` serves the console of `tiergate serve` (with acting: streams/console/acting.py);
`mount_source(app, source, gate)` serves any source, read-only where the source cannot write (a Kafka
deployment: streams/console/topics.py). Reading needs a reader or operator (signed in, unless reads are
open); acting needs an operator. Every form carries the session's CSRF token; every response carries a strict
Content-Security-Policy; every value from the log is escaped by the templates (autoescape), never trusted
as markup.
"""

from __future__ import annotations

import asyncio
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tiergate.models.durations import format_duration
from tiergate.models.wire import TIERS

from ..access import ANONYMOUS, Caller
from ..codec import excerpt
from ..pipeline import readable_origin
from . import views
from .sessions import COOKIE, Session, Sessions
from .sources import EmbeddedSource, Source

if TYPE_CHECKING:
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
PARTS = ("tiers", "log", "overrides", "rejected", "activations")
HEARTBEAT = 15.0
READ_ONLY = Caller(None, "reader")


class Console:
    """The console's state: the source it reads (and, embedded, writes) through, who may do what, and the
    sessions."""

    def __init__(self, source: Source, gate: Gate) -> None:
        self.source, self.gate, self.sessions = source, gate, Sessions()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["excerpt"] = excerpt
        self.templates.filters["duration"] = lambda seconds: format_duration(int(seconds))
        self.templates.filters["origin"] = readable_origin

    @property
    def embedded(self) -> EmbeddedSource | None:
        """The embedded source, which can write; None on a read-only (Kafka) console."""
        return self.source if isinstance(self.source, EmbeddedSource) else None

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
            may_act=self.source.writable and viewer is not None and viewer.role == "operator",
            kafka=not self.source.writable,
            tier_names=TIERS,
            ops=OPS,
            **values,
        )
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response


CONSOLE = web.AppKey("console", Console)


def mount(app: web.Application, writer: Writer, gate: Gate) -> None:
    """Serve the embedded server's console at /console on `app`: reading, and acting for operators."""
    from . import acting

    mount_source(app, EmbeddedSource(writer), gate)
    acting.mount(app)


def mount_source(app: web.Application, source: Source, gate: Gate) -> None:
    """Serve the console of `source` at /console on `app` (read-only unless the source can write)."""
    app[CONSOLE] = Console(source, gate)
    app.add_routes(
        [
            web.get("/console", page),
            web.get("/console/policy", policy_page),
            web.get("/console/parts/{part}", part),
            web.get("/console/stream", stream),
            web.get("/console/sign-in", sign_in_form),
            web.post("/console/sign-in", sign_in),
            web.post("/console/sign-out", sign_out),
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
    """The posted form's text fields, or None when its CSRF token is missing or not the session's."""
    fields, _ = await posted(request)
    return fields if session.csrf_matches(fields.get("csrf")) else None


async def posted(request: web.Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A posted form's text fields and its uploaded files (name -> (file name, bytes)). The server reads
    every body before its handler runs (the body deadline), so a multipart form is parsed from those bytes
    with the standard library's MIME parser, not from the spent stream."""
    if request.content_type != "multipart/form-data":
        return {name: value for name, value in (await request.post()).items() if isinstance(value, str)}, {}
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + await request.read())
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts() if message.is_multipart() else ():
        name, body = part.get_param("name", header="content-disposition"), part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(body, bytes):
            continue
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, body)
        else:
            fields[name] = body.decode("utf-8", "replace")
    return fields, files


def viewer_or_sign_in(request: web.Request) -> tuple[Console, Session, bool, web.StreamResponse | None]:
    """The console, the session (True: new), and the redirect to send when nobody may read."""
    console = request.app[CONSOLE]
    session, new = session_of(request)
    if console.viewer(session) is None:
        return console, session, new, with_cookie(see_other("/console/sign-in"), session, request)
    return console, session, new, None


# -- reading -------------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    console, session, new, away = viewer_or_sign_in(request)
    if away is not None:
        return away
    filters = views.Filters.of(request.query, console.source.catalog())
    changes = console.source.changes  # read first: a change while the page is read is told again, not missed
    data = await console.source.everything(filters)
    notice = session.take_notice()
    response = console.render(
        "page.html", session, notice=notice, filters=filters, live_page=True, changes=changes, **data
    )
    return with_cookie(response, session, request) if new else response


async def policy_page(request: web.Request) -> web.StreamResponse:
    """The policy in force, every activation (who, when, why, from where, as whom) and, for operators,
    applying a new one (embedded) or the command that does it (Kafka)."""
    console, session, new, away = viewer_or_sign_in(request)
    if away is not None:
        return away
    changes = console.source.changes  # read first: a change while the page is read is told again, not missed
    data = await console.source.policy()
    notice = session.take_notice()
    response = console.render(
        "policy.html", session, notice=notice, draft=None, live_page=True, changes=changes, **data
    )
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
    filters = views.Filters.of(request.query, console.source.catalog())
    data = await (console.source.policy() if name == "activations" else console.source.everything(filters))
    return console.render(f"_{name}.html", session, filters=filters, **data)


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `changed` (with how many new facts) after every commit that made decisions or kept
    rejected input (or,
    on Kafka, after records arrived). Opened with `since` (the count of changes a page was rendered after),
    it says `changed` at once when there were more by the time it listens: nothing falls in between."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    if console.viewer(session) is None:
        return refused(console, session, 401, "sign in again")
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    console.source.watchers.add(queue)
    response = EventSourceResponse(sep="\n", ping_interval=HEARTBEAT)
    try:
        await response.prepare(request)
        async with response:
            await response.send("ready", event="ready")
            missed = _missed(request.query.get("since"), console.source.changes)
            if missed:
                await response.send(str(missed), event="changed")
            await _forward(response, queue, console, session)
    except (ConnectionResetError, TimeoutError):  # the reader left, or stalled and was cut off
        pass
    finally:
        console.source.watchers.discard(queue)
    return response


def _missed(since: str | None, changes: int) -> int:
    """Changes made after a page's render (`since`) and before its stream listened (0: none, or no `since`)."""
    if since is None or not since.isdigit():
        return 0
    return max(changes - int(since), 0)


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
