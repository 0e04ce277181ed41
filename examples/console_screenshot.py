"""Draw docs/console.png: the example history (examples/events.jsonl) in an embedded server, its console
opened in headless chromium by an operator. Needs Debian's chromium and Playwright (make setup; make
system-deps).

    python examples/console_screenshot.py [docs/console.png]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright

from tiergate.models.wire import parse_ts
from tiergate.streams.access import Credentials
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings

HERE = Path(__file__).parent
SECRET = "an-operator-secret-for-the-picture"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


async def draw(output: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        runtime = EmbeddedRuntime(
            read_policy(HERE / "policy.yaml"), data, ManualClock(parse_ts("2026-11-05T00:00:00Z"))
        )
        runtime.ingest((HERE / "events.jsonl").read_bytes().splitlines(), "import(events.jsonl)", live=False)
        credentials = Credentials.parse(f"ops@example.com operator {SECRET}\n", "screenshot")
        settings = ServeSettings(policy=HERE / "policy.yaml", data_dir=data)
        server = TestServer(make_app(runtime, settings, ticking=False, credentials=credentials), host="127.0.0.1")
        async with server, async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                str(Path(scratch) / "profile"), executable_path="/usr/bin/chromium", args=FLAGS, headless=True,
                viewport={"width": 1500, "height": 1000},
            )  # fmt: skip
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/console/sign-in")
            await page.fill("input[name=secret]", SECRET)
            await page.click("#sign-in button")
            await page.wait_for_selector("#live.live")
            await page.screenshot(path=str(output), full_page=False)
            await browser.close()
        runtime.close()


if __name__ == "__main__":
    asyncio.run(draw(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.png")))
