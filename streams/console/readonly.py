"""The console of a Kafka deployment as a server of its own (`tiergate console --kafka`): it reads the
workers' topics (streams/console/topics.py) and writes nothing; an action is a signed CLI command it shows.

Who may read follows the embedded server's rule: with credentials (TIERGATE_CREDENTIALS_FILE), readers and
operators sign in; without, it binds to loopback only and anyone there reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..access import Credentials
from ..http import Gate, json
from . import commands
from .routes import mount_source, see_other
from .topics import KafkaSource

SOURCE = web.AppKey("source", KafkaSource)


def make_app(source: KafkaSource, credentials: Credentials | None) -> web.Application:
    """The read-only console over `source`, started and stopped with the app."""
    app = web.Application(client_max_size=64 * 1024)
    app[SOURCE] = source
    mount_source(app, source, Gate(credentials, None))
    commands.mount(app)
    app.add_routes([web.get("/", to_console), web.get("/healthz", health)])
    app.cleanup_ctx.append(_tailing)
    return app


async def _tailing(app: web.Application) -> AsyncIterator[None]:
    source = app[SOURCE]
    await source.start()
    yield
    await source.stop()


async def to_console(request: web.Request) -> web.Response:
    return see_other("/console")


async def health(request: web.Request) -> web.Response:
    """ok once the records present at start are read; `reading` before; the last problem if any."""
    source = request.app[SOURCE]
    status = "ok" if source.caught_up.is_set() else "reading"
    return json({"status": status, "problem": source.problem, "unreadable": source.view.unreadable})
