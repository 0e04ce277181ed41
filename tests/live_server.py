"""A real `tiergate serve` app in the test's process, on a fixed loopback port, for the SDK's tests: it can be
stopped and started again on the same data directory and port, and it records the headers each request
for the tier stream came with."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from tiergate.models.wire import parse_ts
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings

from .histories import feed
from .test_restart import free_port

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes()
NOON = parse_ts("2026-11-02T12:00:00Z")  # the server's (manual) clock
TEN = parse_ts("2026-11-02T10:00:00Z")  # the reporters' clock: before the server's, never `future`

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LiveServer:
    """`tiergate serve`'s app over a real SQLite store, on a real socket."""

    def __init__(self, data_dir: Path, port: int, token: str | None = None, credentials: str | None = None) -> None:
        self.data_dir, self.port, self.token, self.credentials = data_dir, port, token, credentials
        self.url = f"http://127.0.0.1:{port}"
        self.stream_headers: list[dict[str, str]] = []  # one per GET /v1/tiers/stream

    async def start(self) -> None:
        self.evaluator = EmbeddedRuntime(read_policy(POLICY), self.data_dir, ManualClock(NOON))
        token = SecretStr(self.token) if self.token else None
        credentials = SecretStr(self.credentials) if self.credentials else None
        settings = ServeSettings(policy=POLICY, data_dir=self.data_dir, token=token, credentials=credentials)
        app = make_app(self.evaluator, settings, ticking=False)
        app.middlewares.append(self._note_stream_headers)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    @web.middleware
    async def _note_stream_headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1/tiers/stream":
            self.stream_headers.append(dict(request.headers))
        return await handler(request)

    async def stop(self) -> None:
        await self.runner.cleanup()
        self.evaluator.close()

    def events(self) -> list[bytes]:
        """Every event posted to the store's log, in order (the policy's activation left out)."""
        return [raw for _, raw in self.evaluator.store.events() if not raw.startswith(b'{"type":"policy"')]

    def results(self) -> list[str]:
        """What became of each posted event, in order (the policy's activation left out)."""
        rows = self.evaluator.store.db.execute("SELECT result, raw FROM events ORDER BY rowid")
        return [result for result, raw in rows if not bytes(raw).startswith(b'{"type":"policy"')]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    live = LiveServer(tmp_path / "data", free_port())
    await live.start()
    yield live
    await live.stop()


async def post(server: LiveServer, body: bytes) -> None:
    """Post events as an operator's tool would (not through the SDK); ticks in `body` go in as the server's
    clock (tests/histories.py)."""
    async with aiohttp.ClientSession() as http:

        async def send(events: bytes) -> None:
            response = await http.post(
                f"{server.url}/v1/events", data=events, headers={"Content-Type": "application/x-ndjson"}
            )
            assert response.status == 200, await response.text()

        await feed(server.runner.app, body, send)


def promote_override(event_id: str, action_type: str = "refund_up_to_50") -> bytes:
    return (
        b'{"type":"override","event_id":"%s","ts":"2026-11-02T09:00:00Z","action_type":"%s",'
        b'"op":"promote","actor":"ops","reason":"test"}' % (event_id.encode(), action_type.encode())
    )
