"""A real `tiergate serve` app for the console's tests: credentials of every role, a clock held still, a
loopback port; and the ways a test drives it (post as a role, feed a history, read the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tiergate.models.wire import parse_ts
from tiergate.streams.access import Credentials
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings

from .histories import feed, producers_events

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes()
NOON = parse_ts("2026-11-02T12:00:00Z")
SECRETS = {
    "alice@ops": ("operator", "operator-secret-0123456789"),
    "billing-feed": ("reporter", "reporter-secret-0123456789"),
    "support-bot": ("agent", "agent-secret-0123456789"),
    "grafana": ("reader", "reader-secret-0123456789"),
}
CREDENTIALS = "".join(f"{name} {role} {secret}\n" for name, (role, secret) in SECRETS.items())


def secret(name: str) -> str:
    return SECRETS[name][1]


@dataclass
class Console:
    """The server under test: its URL, runtime and app."""

    url: str
    runtime: EmbeddedRuntime
    server: TestServer

    async def post(self, body: bytes, who: str, query: str = "") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {secret(who)}", "Content-Type": "application/x-ndjson"}
        async with aiohttp.ClientSession() as http:
            response = await http.post(f"{self.url}/v1/events{query}", data=body, headers=headers)
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]

    async def climb(self) -> None:
        """The golden climb: reviews and outcomes from the reporter, ticks from the server's clock (the
        server's policy file is the climb's policy)."""

        async def send(body: bytes) -> None:
            await self.post(body, "billing-feed")

        await feed(self.server.app, producers_events(CLIMB), send)

    def decisions(self) -> list[str]:
        return list(self.runtime.store.all_decisions())


async def console_server(data_dir: Path, credentials: bool = True) -> AsyncIterator[Console]:
    runtime = EmbeddedRuntime(read_policy(POLICY), data_dir, ManualClock(NOON))
    settings = ServeSettings(policy=POLICY, data_dir=data_dir)
    known = Credentials.parse(CREDENTIALS, "test") if credentials else None
    server = TestServer(make_app(runtime, settings, ticking=False, credentials=known), host="127.0.0.1")
    async with server:
        yield Console(f"http://127.0.0.1:{server.port}", runtime, server)
    runtime.close()
