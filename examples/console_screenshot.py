"""Draw docs/console.png and docs/console-policy.png: the example history (examples/events.jsonl) in an
embedded server, its console opened in headless chromium by an operator; then the preview of a policy
that lowers reply_to_ticket's ceiling (it is at run) and retires escalate_to_human. Needs Debian's
chromium and Playwright (make setup; make system-deps).

    python examples/console_screenshot.py [docs/console.png [docs/console-policy.png]]
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
from tiergate.streams.settings import ServeSettings

HERE = Path(__file__).parent
SECRET = "an-operator-secret-for-the-picture"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def lowered() -> str:
    """The example policy with reply_to_ticket's ceiling at walk and escalate_to_human retired."""
    text = (HERE / "policy.yaml").read_text().replace('"2026-11-26.1"', '"2026-11-27.1"')
    text = text.replace("  reply_to_ticket: {}", "  reply_to_ticket: {max_tier: walk}")
    return "\n".join(line for line in text.splitlines() if not line.startswith("  escalate_to_human:"))


async def draw(output: Path, policy_output: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        runtime = EmbeddedRuntime(None, data, ManualClock(parse_ts("2026-11-05T00:00:00Z")))  # the log has its policy
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
            await page.click("header a[href='/console/policy']")
            await page.fill("#policy-form textarea[name=policy]", lowered())
            await page.fill("#policy-form input[name=reason]", "incident 2211: replies need a human again")
            await page.click("#policy-form button")
            await page.wait_for_selector("#confirm")
            await page.set_viewport_size({"width": 1500, "height": 460})
            await page.screenshot(path=str(policy_output), full_page=False)
            await browser.close()
        runtime.close()


if __name__ == "__main__":
    given = sys.argv[1:]
    page_picture = Path(given[0]) if given else Path("docs/console.png")
    policy_picture = Path(given[1]) if len(given) > 1 else Path("docs/console-policy.png")
    asyncio.run(draw(page_picture, policy_picture))
