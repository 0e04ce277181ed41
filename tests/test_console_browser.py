"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser download):
the page loads, a promotion shows up live as it happens, an override made in the page reaches the log,
injected markup stays text, a form without its CSRF token is refused, and a policy is previewed, applied
and seen live."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, Route, async_playwright, expect

from .console_app import Console, console_server, secret
from .test_console import MARKUP, hostile_action, hostile_override, large_action
from .test_console_policy import LOWERED

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT = 10_000  # ms: how long an expectation may take to come true


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for running in console_server(tmp_path / "data"):
        yield running


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """A fresh Chromium profile, headless."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=FLAGS, headless=True
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile") as context:
        yield context


async def sign_in(browser: BrowserContext, console: Console, who: str) -> Page:
    """Open the console, get sent to the sign-in form, sign in; the console page, live."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    await page.goto(f"{console.url}/console")
    await expect(page).to_have_url(f"{console.url}/console/sign-in")
    await page.fill("input[name=secret]", secret(who))
    await page.click("#sign-in button")
    await expect(page).to_have_url(f"{console.url}/console")
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
    page.errors = errors  # type: ignore[attr-defined]
    return page


def tier_cell(page: Page, action_type: str) -> object:
    return page.locator(f'#tiers tr[data-action-type="{action_type}"] .tier')


async def test_the_page_loads_and_a_promotion_shows_up_live(browser: BrowserContext, console: Console) -> None:
    """Signed in as a reader, the page shows every type at crawl; when reviews and ticks promote
    reply_to_ticket, its tier and the promote decisions appear without a reload."""
    page = await sign_in(browser, console, "grafana")
    await expect(page.locator("#tiers tbody tr")).to_have_count(4)
    await expect(tier_cell(page, "reply_to_ticket")).to_have_text("crawl")  # type: ignore[arg-type]
    assert await page.locator("#override").count() == 0  # a reader cannot act
    await page.evaluate("window.sameDocument = true")
    await console.climb()
    await expect(tier_cell(page, "reply_to_ticket")).to_have_text("run", timeout=WAIT)  # type: ignore[arg-type]
    promotions = page.locator('#log tr.decision.promote[data-decision-id^="reply_to_ticket/"]')
    await expect(promotions).to_have_count(2, timeout=WAIT)
    await expect(page.locator('#tiers tr[data-action-type="reply_to_ticket"] .bar.pass')).to_have_count(1)
    assert await page.evaluate("window.sameDocument") is True  # updated in place, not reloaded
    assert page.errors == []  # type: ignore[attr-defined]  # no CSP violation, no script error


async def test_a_decision_made_before_the_page_listens_shows_once_it_does(
    browser: BrowserContext, console: Console
) -> None:
    """A decision made after the page was rendered but before its event stream is open (held here) shows
    as soon as the stream opens, not only at the next change."""
    page = await sign_in(browser, console, "grafana")
    released = asyncio.Event()

    async def hold(route: Route) -> None:
        await released.wait()
        await route.continue_()

    await page.route("**/console/stream*", hold)
    await page.reload()
    await expect(page.locator("#live")).to_have_text("connecting…")
    await console.post(hostile_override(), "alice@ops")
    released.set()
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
    await expect(page.locator('#log tr[data-decision-id="refund_up_to_50/1"]')).to_have_count(1, timeout=WAIT)


async def test_an_override_made_in_the_page_appears_in_the_promotion_log(
    browser: BrowserContext, console: Console
) -> None:
    """An operator caps a type from the form: the page says it applied, the promotion log and the overrides
    show it with actor, principal and reason, and the store has the decision; a refused pin is explained
    and writes nothing."""
    page = await sign_in(browser, console, "alice@ops")
    form = page.locator("#override")
    await form.locator("select[name=action_type]").select_option("refund_over_50")
    await form.locator("select[name=op]").select_option("cap")
    await form.locator("select[name=tier]").select_option("crawl")
    await form.locator("input[name=actor]").fill("ops@example.com")
    await form.locator("input[name=reason]").fill("finance review pending")
    await form.locator("button").click()
    await expect(page.locator("#notice")).to_contain_text("applied (refund_over_50/1")
    row = page.locator('#log tr[data-decision-id="refund_over_50/1"]')
    await expect(row).to_contain_text("override")
    await expect(row.locator(".principal")).to_have_text("alice@ops")
    await expect(row.locator(".actor")).to_have_text("ops@example.com")
    await expect(page.locator("#overrides")).to_contain_text("finance review pending")
    stored = json.loads(console.decisions()[-1])
    assert (stored["op"], stored["principal"], stored["reason"]) == ("cap", "alice@ops", "finance review pending")
    before = console.runtime.store.last_seq()
    await form.locator("select[name=action_type]").select_option("refund_over_50")
    await form.locator("select[name=op]").select_option("promote")
    await form.locator("select[name=tier]").select_option("")
    await form.locator("input[name=reason]").fill("try")
    await form.locator("button").click()
    await expect(page.locator("#notice")).to_contain_text("not sent: override promote rejected: already at the ceiling")
    assert console.runtime.store.last_seq() == before


async def test_injected_markup_is_shown_as_text(browser: BrowserContext, console: Console) -> None:
    """Markup in an override's reason and actor, an agent's name and rejected input runs nowhere: no script
    ran, no injected element exists, and the page shows the markup as characters."""
    page = await sign_in(browser, console, "grafana")
    await console.post(hostile_override(), "alice@ops")
    await console.post(hostile_action(), "support-bot")
    await console.post(b'{"type":"action","agent":' + json.dumps(MARKUP).encode(), "support-bot")
    await expect(page.locator("#rejected tbody tr")).to_have_count(1, timeout=WAIT)  # arrived live
    await page.reload()
    await expect(page.locator("#overrides .reason").first).to_have_text(MARKUP)
    await expect(page.locator('#log tr.violation [class="agent"]')).to_have_text(MARKUP)
    await expect(page.locator("#rejected code.raw")).to_contain_text(json.dumps(MARKUP))
    assert await page.locator("#injected").count() == 0 and await page.locator("main img").count() == 0
    assert await page.evaluate("typeof window.pwned") == "undefined"


async def test_a_large_rejected_input_keeps_the_page_short_and_opens_on_demand(
    browser: BrowserContext, console: Console
) -> None:
    """A 70 KB rejected event leaves the rejected-input section a few lines tall; a click on it shows the
    whole event (in a box that scrolls rather than stretching the page)."""
    large = large_action()
    await console.post(large, "support-bot")
    page = await sign_in(browser, console, "grafana")
    section = page.locator("#rejected")
    await expect(section.locator("details.raw summary")).to_contain_text(f"({len(large)} bytes)")
    whole = section.locator("details.raw code.whole")
    await expect(whole).to_be_hidden()
    box = await section.bounding_box()
    assert box is not None and box["height"] < 600, box
    await section.locator("details.raw summary").click()
    await expect(whole).to_be_visible()
    assert await whole.text_content() == large.decode()
    opened = await section.bounding_box()
    assert opened is not None and opened["height"] < 1200, opened
    assert page.errors == []  # type: ignore[attr-defined]


async def test_a_form_without_its_csrf_token_is_refused(browser: BrowserContext, console: Console) -> None:
    """Removing the hidden CSRF field from the override form gets a 403 page, and nothing is written."""
    page = await sign_in(browser, console, "alice@ops")
    before = console.runtime.store.last_seq()
    await page.evaluate("document.querySelector('#override input[name=csrf]').remove()")
    await page.locator("#override input[name=reason]").fill("no token")
    async with page.expect_response(f"{console.url}/console/override") as answer:
        await page.locator("#override button").click()
    assert (await answer.value).status == 403
    await expect(page.locator("#refused")).to_contain_text("CSRF token is missing")
    assert console.runtime.store.last_seq() == before


async def test_a_policy_applied_from_the_page_is_previewed_then_moves_the_map_live(
    browser: BrowserContext, console: Console, tmp_path: Path
) -> None:
    """An operator pastes a policy that lowers a ceiling and retires a type: the preview shows the diff and
    the drop before anything is written; once confirmed, the activation heads the history and a reader's
    open tier map shows the drop and the retired type without a reload."""
    await console.climb()
    reader = await sign_in(browser, console, "grafana")
    await expect(tier_cell(reader, "reply_to_ticket")).to_have_text("run")  # type: ignore[arg-type]
    async with chromium(tmp_path / "operator") as other:
        operator = await sign_in(other, console, "alice@ops")
        await _apply_lowered(operator, console)
    await expect(tier_cell(reader, "reply_to_ticket")).to_have_text("walk", timeout=WAIT)  # type: ignore[arg-type]
    await expect(tier_cell(reader, "refund_over_50")).to_have_text("retired", timeout=WAIT)  # type: ignore[arg-type]
    assert reader.errors == []  # type: ignore[attr-defined]


async def _apply_lowered(operator: Page, console: Console) -> None:
    """Preview LOWERED from the policy page, check what it shows, confirm, and check the history."""
    await operator.click("header a[href='/console/policy']")
    form = operator.locator("#policy-form")
    await form.locator("textarea[name=policy]").fill(LOWERED)
    await form.locator("input[name=reason]").fill("incident 4411: hold reply_to_ticket at walk")
    before = console.runtime.store.last_seq()
    await form.locator("button").click()
    await expect(operator.locator("#diff")).to_contain_text("- refund_over_50 (retired: leaves the tier map)")
    await expect(operator.locator('#moves tr[data-action-type="reply_to_ticket"]')).to_contain_text("run → walk")
    assert console.runtime.store.last_seq() == before  # a preview writes nothing
    await operator.locator("#confirm button").click()
    await expect(operator.locator("#notice")).to_contain_text("applied: policy golden-2; 1 type(s) moved at once")
    current = console.runtime.current_policy()
    assert current is not None and current.principal == "alice@ops"
    newest = operator.locator("#activations tbody tr").first
    await expect(newest).to_have_attribute("data-activation-id", current.activation_id)
    await expect(newest.locator(".reason")).to_have_text("incident 4411: hold reply_to_ticket at walk")
    assert operator.errors == []  # type: ignore[attr-defined]
