"""The console over HTTP (its browser tests are in test_console_browser.py): who may see and act, the
session cookie, CSRF on every form, the Content-Security-Policy, and everything from the log escaped."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .console_app import Console, console_server, secret

MARKUP = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"><b id="injected">bold</b>'


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for running in console_server(tmp_path / "data"):
        yield running


@pytest.fixture
async def open_console(tmp_path: Path) -> AsyncIterator[Console]:
    async for running in console_server(tmp_path / "data", credentials=False):
        yield running


def hostile_override() -> bytes:
    """An operator's promote whose actor and reason are markup."""
    event = {
        "type": "override",
        "event_id": "o1",
        "ts": "2026-11-02T11:00:00Z",
        "action_type": "refund_up_to_50",
        "op": "promote",
        "actor": "<i>ops</i>",
        "reason": MARKUP,
    }
    return json.dumps(event).encode()


def hostile_action() -> bytes:
    """An action above its tier (a violation, naming its agent) from an agent whose name is markup."""
    event = {
        "type": "action",
        "event_id": "a1",
        "ts": "2026-11-02T11:00:00Z",
        "action_type": "reply_to_ticket",
        "action_id": "x",
        "tier": "run",
        "agent": MARKUP,
    }
    return json.dumps(event).encode()


def browser() -> aiohttp.ClientSession:
    """A client that keeps cookies as a browser does (for 127.0.0.1 too)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


async def signed_in(http: aiohttp.ClientSession, url: str, who: str) -> str:
    """Sign in through the form; the console page's HTML."""
    form = await (await http.get(f"{url}/console/sign-in")).text()
    response = await http.post(f"{url}/console/sign-in", data={"csrf": csrf_of(form), "secret": secret(who)})
    assert response.status == 200 and response.url.path == "/console", await response.text()
    return await response.text()


def override_form(csrf: str, **fields: str) -> dict[str, str]:
    defaults = {"action_type": "refund_up_to_50", "op": "cap", "tier": "crawl", "actor": "ops", "reason": "audit"}
    return {"csrf": csrf, **defaults, **fields}


async def test_the_console_needs_a_reader_or_operator_sign_in(console: Console) -> None:
    """Unsigned, /console redirects to the sign-in form; agents and reporters are refused; a reader sees the
    page without the override form; the session cookie is HttpOnly and SameSite=Strict."""
    async with browser() as http:
        response = await http.get(f"{console.url}/console", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/console/sign-in"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        form = await (await http.get(f"{console.url}/console/sign-in")).text()
        for who in ("support-bot", "billing-feed"):
            refused = await http.post(
                f"{console.url}/console/sign-in", data={"csrf": csrf_of(form), "secret": secret(who)}
            )
            assert "the console is for readers and operators" in await refused.text()
        unknown = await http.post(f"{console.url}/console/sign-in", data={"csrf": csrf_of(form), "secret": "nope"})
        assert "unknown credential" in await unknown.text()
        page = await signed_in(http, console.url, "grafana")
        assert 'id="tiers"' in page and 'id="override"' not in page and "grafana" in page
        acted = await http.post(f"{console.url}/console/override", data=override_form(csrf_of(page)))
        assert acted.status == 403 and "acting needs an operator" in await acted.text()


async def test_an_operator_overrides_from_the_page_with_the_csrf_token_only(console: Console) -> None:
    """Without the form's CSRF token (or with another session's) the override is refused and nothing is
    stored; with it, the decision names the operator's credential as principal."""
    async with browser() as http, browser() as other:
        page = await signed_in(http, console.url, "alice@ops")
        foreign = csrf_of(await signed_in(other, console.url, "alice@ops"))
        before = console.decisions()
        for form in (override_form(""), {k: v for k, v in override_form("x").items() if k != "csrf"}):
            response = await http.post(f"{console.url}/console/override", data=form)
            assert response.status == 403 and "CSRF" in await response.text()
        refused = await http.post(f"{console.url}/console/override", data=override_form(foreign))
        assert refused.status == 403
        assert console.decisions() == before
        done = await http.post(f"{console.url}/console/override", data=override_form(csrf_of(page)))
        assert done.status == 200 and "applied (refund_up_to_50/1: crawl → crawl)" in await done.text()
        assert '"principal":"alice@ops"' in console.decisions()[-1]


async def test_a_refused_override_is_explained_and_not_written(console: Console) -> None:
    """A pin below the current tier is checked first (dry run): the page says why, the log is unchanged."""
    await console.climb()
    async with browser() as http:
        page = await signed_in(http, console.url, "alice@ops")
        before = console.runtime.store.last_seq()
        form = override_form(csrf_of(page), action_type="reply_to_ticket", op="pin", tier="walk")
        answer = await (await http.post(f"{console.url}/console/override", data=form)).text()
        assert "not sent: override pin rejected: pin walk is below the current tier run" in answer
        assert console.runtime.store.last_seq() == before


async def test_everything_from_the_log_is_escaped(console: Console) -> None:
    """Markup in a reason, an agent name and rejected input is rendered as text, never as markup."""
    await console.post(hostile_override(), "alice@ops")
    await console.post(hostile_action(), "support-bot")
    await console.post(b'{"type":"action","agent":' + json.dumps(MARKUP).encode(), "support-bot")  # malformed
    async with browser() as http:
        page = await signed_in(http, console.url, "grafana")
    assert "<script>window.pwned" not in page and '<b id="injected">' not in page and "<i>ops</i>" not in page
    assert page.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 3  # log, overrides, rejected input
    assert "&lt;i&gt;ops&lt;/i&gt;" in page


def large_action(size: int = 70_000) -> bytes:
    """An agent's action over the 64 KiB limit (its attributes hold `size` characters): rejected and kept."""
    event = {
        "type": "action",
        "event_id": "big",
        "ts": "2026-11-02T11:00:00Z",
        "action_type": "refund_up_to_50",
        "action_id": "big",
        "tier": "crawl",
        "attributes": {"note": "x" * size},
    }
    return json.dumps(event).encode()


async def test_a_large_rejected_input_is_shortened_with_the_whole_of_it_on_demand(console: Console) -> None:
    """A 70 KB rejected event is shown as its first 200 characters and its size, with the whole of it in a
    collapsed expansion; a short one is shown as it is."""
    large = large_action()
    await console.post(large, "support-bot")
    await console.post(b'{"type":"action"}', "support-bot")
    async with browser() as http:
        await signed_in(http, console.url, "grafana")
        part = await (await http.get(f"{console.url}/console/parts/rejected")).text()
    shown = large.decode()[:200].replace('"', "&#34;")
    assert f"{shown}… ({len(large)} bytes)</code></summary>" in part
    assert part.count("<details") == 1 and large.decode().replace('"', "&#34;") in part
    assert '<code class="raw">{&#34;type&#34;:&#34;action&#34;}</code>' in part


async def test_holds_and_origins_read_as_people_write_them(console: Console) -> None:
    """A hold shows as the policy writes durations (`0% of 2h`, not hours with a decimal); a rejected input's
    origin names the credential, the address and the event's place in its request."""
    await console.post(b'{"type":"action"}', "support-bot")
    async with browser() as http:
        await signed_in(http, console.url, "grafana")
        tiers = await (await http.get(f"{console.url}/console/parts/tiers")).text()
        rejected = await (await http.get(f"{console.url}/console/parts/rejected")).text()
    assert "0% of 2h" in tiers and "2.0h" not in tiers
    assert "support-bot from 127.0.0.1, event 1 of its request" in rejected and "http(" not in rejected


async def test_a_promotions_hold_reads_as_the_policy_writes_it(console: Console) -> None:
    """The promotion log's hold line quotes the hold as the decision records it (`2h required`), with no
    unit tacked on after the duration."""
    await console.climb()
    async with browser() as http:
        await signed_in(http, console.url, "grafana")
        log = await (await http.get(f"{console.url}/console/parts/log")).text()
    holds = re.findall(r"<p>hold: passing since [0-9TZ:-]+, ([^<]*)</p>", log)
    assert set(holds) == {"2h required", "3h required"}, holds


async def test_every_response_carries_a_strict_content_security_policy(open_console: Console) -> None:
    """The page, its parts, its static files and the API answer with CSP (no inline script or style) and
    nosniff; the script is served as JavaScript from the package."""
    async with browser() as http:
        for path in ("/console", "/console/parts/log", "/console/static/console.js", "/v1/tiers"):
            response = await http.get(f"{open_console.url}{path}")
            assert response.status == 200, path
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        script = await http.get(f"{open_console.url}/console/static/console.js")
        assert script.content_type in ("application/javascript", "text/javascript")
        page = await (await http.get(f"{open_console.url}/console")).text()
        assert "<script>" not in page and "style=" not in page and " on" not in re.sub(r">[^<]*<", "><", page)


async def test_without_credentials_the_console_is_an_anonymous_operator_with_csrf_still(
    open_console: Console,
) -> None:
    """On a loopback server without credentials the page needs no sign-in and can act, but only with the
    session's CSRF token; decisions then carry no principal."""
    async with browser() as http:
        page = await (await http.get(f"{open_console.url}/console")).text()
        assert 'id="override"' in page
        assert (await http.post(f"{open_console.url}/console/override", data=override_form("bad"))).status == 403
        done = await http.post(f"{open_console.url}/console/override", data=override_form(csrf_of(page)))
        assert done.status == 200 and "principal" not in open_console.decisions()[-1]


async def test_a_part_or_the_stream_needs_a_session(console: Console) -> None:
    """The live refresh's endpoints answer 401 to a browser that is not signed in."""
    async with browser() as http:
        assert (await http.get(f"{console.url}/console/parts/tiers")).status == 401
        assert (await http.get(f"{console.url}/console/stream")).status == 401
        await signed_in(http, console.url, "grafana")
        assert (await http.get(f"{console.url}/console/parts/nothing")).status == 404


async def test_pending_customer_units_are_shown_per_tier_under_a_maturity(tmp_path: Path) -> None:
    """A type whose customer outcomes mature after 3h shows its units still waiting (10 at walk) and that no
    checkpoint has come yet; once the feed's checkpoint covers them, none are pending."""
    from aiohttp.test_utils import TestServer

    from tiergate.streams.clock import ManualClock
    from tiergate.streams.embedded import EmbeddedRuntime
    from tiergate.streams.http import make_app
    from tiergate.streams.settings import ServeSettings

    from .builders import T0
    from .console_app import POLICY
    from .test_maturity import acting, walking

    log = acting(walking(), 1.5, 10, failures=2).tick(6.1)
    runtime = EmbeddedRuntime(None, tmp_path / "data", ManualClock(T0 + 7 * 3600))
    runtime.ingest([json.dumps(event).encode() for event in log.events], "import", live=False)
    server = TestServer(make_app(runtime, ServeSettings(policy=POLICY, data_dir=tmp_path / "data"), ticking=False))
    try:
        async with server, browser() as http:
            url = f"http://127.0.0.1:{server.port}/console/parts/tiers"
            tiers = await (await http.get(url)).text()
            assert "customer outcomes count 3h after their action" in tiers
            assert '<span class="pending">walk 10</span>' in tiers and "feed checkpoint none yet" in tiers
            later = log.checkpoint(6.2, through=5.0).tick(7.1).events[-2:]
            runtime.ingest([json.dumps(event).encode() for event in later], "import", live=False)
            tiers = await (await http.get(url)).text()
            assert "pending: none; feed checkpoint 2026-" in tiers
    finally:
        runtime.close()


def changes_of(page: str) -> int:
    """The count of changes a console page was rendered after (what its event stream is opened with)."""
    found = re.search(r'data-changes="(\d+)"', page)
    assert found is not None, page
    return int(found.group(1))


async def next_event(stream: aiohttp.ClientResponse, wait: float = 5.0) -> tuple[str, str]:
    """The next server-sent event's name and data (comments such as pings are skipped)."""
    name, data = "message", None
    async with asyncio.timeout(wait):
        while True:
            line = (await stream.content.readline()).decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = line.removeprefix("data:").strip()
            elif not line and data is not None:
                return name, data
            elif not line:
                name = "message"


def cap(event_id: str) -> bytes:
    """An operator's cap of refund_up_to_50 at crawl: one override decision."""
    event = {
        "type": "override",
        "event_id": event_id,
        "ts": "2026-11-02T11:30:00Z",
        "action_type": "refund_up_to_50",
        "op": "cap",
        "tier": "crawl",
        "actor": "ops",
        "reason": "audit",
    }
    return json.dumps(event).encode()


async def test_a_change_before_a_page_listens_is_told_when_its_stream_opens(console: Console) -> None:
    """A page carries the count of changes it was rendered after; its event stream, opened with it, says
    `changed` at once when a decision was made in between, and nothing when none was (until the next)."""
    async with browser() as http:
        rendered = changes_of(await signed_in(http, console.url, "grafana"))
        await console.post(cap("o1"), "alice@ops")  # decided after the render, before the stream listens
        async with http.get(f"{console.url}/console/stream?since={rendered}") as stream:
            assert await next_event(stream) == ("ready", "ready")
            assert await next_event(stream) == ("changed", "1")
        current = changes_of(await (await http.get(f"{console.url}/console")).text())
        assert current == rendered + 1
        async with http.get(f"{console.url}/console/stream?since={current}") as stream:
            assert await next_event(stream) == ("ready", "ready")
            with pytest.raises(TimeoutError):
                await next_event(stream, wait=1.0)  # nothing was missed, so nothing is said
            await console.post(cap("o2"), "alice@ops")
            assert await next_event(stream) == ("changed", "1")


async def test_rejected_input_alone_refreshes_the_page(console: Console) -> None:
    """A batch of nothing but rejected input changes the page's rejected section: its stream says so."""
    async with browser() as http:
        rendered = changes_of(await signed_in(http, console.url, "grafana"))
        async with http.get(f"{console.url}/console/stream?since={rendered}") as stream:
            assert await next_event(stream) == ("ready", "ready")
            await console.post(b'{"type":"action","action_type":"reply_to_ticket"\n{"nope"', "support-bot")
            assert await next_event(stream) == ("changed", "2")
