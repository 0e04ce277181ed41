"""Policies in the console of `tiergate serve`: an operator previews a pasted or uploaded policy (the diff
and what moves at once, nothing written), confirms exactly that document against the sha shown (If-Match),
and reads every activation; retired types are shown as such; every form needs its CSRF token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .console_app import POLICY, Console, console_server, secret
from .test_console import MARKUP, browser, csrf_of, signed_in

GOLDEN_POLICY = POLICY.read_text()


def edited(text: str = GOLDEN_POLICY, **changes: str) -> str:
    """The golden policy with some of its lines replaced (old line -> new line) and a new version."""
    text = text.replace('policy_version: "golden-1"', 'policy_version: "golden-2"')
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


RAISED = edited(
    **{
        "promote: {hold: 2h, bars: [{metric: acceptance_rate, target: 0.8, min_samples: 20}]}": (
            "promote: {hold: 2h, bars: [{metric: acceptance_rate, target: 0.9, min_samples: 20}]}"
        ),
        "  lookup_order: {read_only: true}": "  lookup_order: {read_only: true}\n  cancel_order: {}",
    }
)
"""A higher crawl bar for every type, and a new type."""

LOWERED = edited(
    **{
        "  reply_to_ticket: {}": "  reply_to_ticket: {max_tier: walk}",
        "  refund_over_50: {max_tier: walk}\n": "",
    }
)
"""reply_to_ticket's ceiling lowered to walk (it is at run after the climb), refund_over_50 retired."""


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for running in console_server(tmp_path / "data"):
        yield running


def preview_form(csrf: str, policy: str, actor: str = "alice", reason: str = "raise the bar") -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in (("csrf", csrf), ("policy", policy), ("actor", actor), ("reason", reason)):
        form.add_field(name, value)
    return form


def pending_of(html: str) -> str:
    found = re.search(r'name="pending" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def stored(console: Console) -> tuple[int, int]:
    """How much the store holds: the log's length and the number of activations."""
    return console.runtime.store.last_seq(), len(console.runtime.store.activations())


async def test_an_operator_previews_then_applies_a_policy_as_shown(console: Console) -> None:
    """The preview lists what changes (a raised bar, a new type) against the sha in force and writes nothing;
    confirming applies that document, recorded with source console, actor, reason and the principal."""
    in_force = console.runtime.current_policy()
    assert in_force is not None
    async with browser() as http:
        await signed_in(http, console.url, "alice@ops")
        page = await (await http.get(f"{console.url}/console/policy")).text()
        assert in_force.policy_sha256 in page and "policy_version: golden-1" in page  # the draft to edit
        before = stored(console)
        preview = await http.post(f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), RAISED))
        shown = await preview.text()
        assert preview.status == 200, shown
        assert "+ cancel_order (new action type: starts at crawl)" in shown
        assert "~ reply_to_ticket: tiers.crawl.promote.bars" in shown and "0.9" in shown
        assert f'id="if-match">{in_force.policy_sha256}<' in shown and "nothing moves at once" in shown
        assert stored(console) == before
        done = await http.post(
            f"{console.url}/console/policy/apply", data={"csrf": csrf_of(shown), "pending": pending_of(shown)}
        )
        history = await done.text()
    assert done.status == 200 and done.url.path == "/console/policy", history
    current = console.runtime.current_policy()
    assert current is not None and current.policy_version == "golden-2"
    assert (current.source, current.actor, current.principal, current.reason) == (
        "console",
        "alice",
        "alice@ops",
        "raise the bar",
    )
    assert f"activation {current.activation_id} applied: policy golden-2; 0 type(s) moved at once" in history
    assert f'data-activation-id="{current.activation_id}"' in history
    assert "cancel_order" in console.runtime.state.keys


async def test_what_moves_at_once_is_previewed_and_a_retired_type_is_shown_retired(console: Console) -> None:
    """Lowering a ceiling under the current tier shows the drop before it happens; after the apply the type
    is at its new ceiling and the retired type is listed as retired, not as a tier."""
    await console.climb()
    assert console.runtime.tiers["reply_to_ticket"].tier == 2  # run
    async with browser() as http:
        page = await signed_in(http, console.url, "alice@ops")
        preview = await http.post(
            f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), LOWERED, reason="incident")
        )
        shown = await preview.text()
        assert "- refund_over_50 (retired: leaves the tier map)" in shown
        moves = shown[shown.index('id="moves"') :]
        assert re.search(r'data-action-type="reply_to_ticket"><td>reply_to_ticket</td><td>run → walk</td>', moves)
        await http.post(
            f"{console.url}/console/policy/apply", data={"csrf": csrf_of(shown), "pending": pending_of(shown)}
        )
        tiers = await (await http.get(f"{console.url}/console/parts/tiers")).text()
    assert console.runtime.tiers["reply_to_ticket"].tier == 1 and "refund_over_50" not in console.runtime.tiers
    row = re.search(r'<tr data-action-type="refund_over_50" class="retired">.*?</tr>', tiers, re.S)
    assert row is not None and '<span class="tier retired">retired</span>' in row.group(0)
    log = await _log_of(console, "retire")
    assert "refund_over_50" in log and "→ retired" in log


async def _log_of(console: Console, kind: str) -> str:
    async with browser() as http:
        await signed_in(http, console.url, "grafana")
        return await (await http.get(f"{console.url}/console/parts/log?kind={kind}")).text()


async def test_a_confirmation_after_another_apply_is_refused_by_if_match(console: Console) -> None:
    """Another operator applies a policy between the preview and the confirmation: nothing is written, and
    the page says why and to preview again."""
    async with browser() as http:
        page = await signed_in(http, console.url, "alice@ops")
        shown = await (
            await http.post(f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), RAISED))
        ).text()
        meanwhile = await http.post(
            f"{console.url}/v1/policy",
            json={"policy": LOWERED, "actor": "bob", "reason": "other change"},
            headers={"Authorization": f"Bearer {secret('alice@ops')}"},
        )
        assert meanwhile.status == 200, await meanwhile.text()
        before = stored(console)
        done = await http.post(
            f"{console.url}/console/policy/apply", data={"csrf": csrf_of(shown), "pending": pending_of(shown)}
        )
        answer = await done.text()
    assert "not applied: If-Match" in answer and "preview again" in answer
    assert stored(console) == before
    current = console.runtime.current_policy()
    assert current is not None and current.reason == "other change"


async def test_policy_forms_need_an_operator_their_csrf_token_and_a_preview(console: Console) -> None:
    """A reader, a missing or foreign CSRF token, and a confirmation of nothing previewed are refused, and
    the store is unchanged."""
    before = stored(console)
    async with browser() as reader, browser() as operator:
        page = await signed_in(reader, console.url, "grafana")
        assert 'id="policy-form"' not in await (await reader.get(f"{console.url}/console/policy")).text()
        refused = await reader.post(f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), RAISED))
        assert refused.status == 403 and "acting needs an operator" in await refused.text()
        mine = csrf_of(await signed_in(operator, console.url, "alice@ops"))
        for csrf in ("", csrf_of(page)):  # none, and the reader's session's
            response = await operator.post(f"{console.url}/console/policy/preview", data=preview_form(csrf, RAISED))
            assert response.status == 403 and "CSRF" in await response.text()
            response = await operator.post(f"{console.url}/console/policy/apply", data={"csrf": csrf, "pending": "x"})
            assert response.status == 403
        nothing = await operator.post(f"{console.url}/console/policy/apply", data={"csrf": mine, "pending": "x"})
        assert nothing.status == 409 and "preview again" in await nothing.text()
    assert stored(console) == before


async def test_an_unusable_policy_is_explained_and_the_draft_kept_as_text(console: Console) -> None:
    """Invalid YAML names its line; a changed window is refused by the evaluator's rules; the draft comes
    back in the form escaped (markup in it stays text); nothing is written."""
    before = stored(console)
    async with browser() as http:
        page = await signed_in(http, console.url, "alice@ops")
        broken = "# " + MARKUP + "\n" + edited(**{"window: 1h": "window: [1h"})
        answer = await http.post(f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), broken))
        shown = await answer.text()
        assert answer.status == 422 and "not applied: the pasted policy:" in shown and "not valid YAML" in shown
        assert "<script>window.pwned" not in shown and "# &lt;script&gt;window.pwned=1&lt;/script&gt;" in shown
        moved = edited(**{"window: 1h": "window: 2h"})
        answer = await http.post(f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), moved))
        shown = await answer.text()
        assert answer.status == 422 and "window" in shown and "not applied:" in shown
        no_reason = await http.post(
            f"{console.url}/console/policy/preview", data=preview_form(csrf_of(page), RAISED, reason=" ")
        )
        assert no_reason.status == 422 and "actor and reason are required" in await no_reason.text()
    assert stored(console) == before


async def test_an_uploaded_policy_file_wins_over_the_text(console: Console) -> None:
    """A chosen file is the document previewed (its name in errors); an empty file field uses the text."""
    async with browser() as http:
        page = await signed_in(http, console.url, "alice@ops")
        form = preview_form(csrf_of(page), "not: [a policy")
        form.add_field("file", RAISED.encode(), filename="raised.yaml", content_type="application/yaml")
        shown = await (await http.post(f"{console.url}/console/policy/preview", data=form)).text()
        assert "+ cancel_order" in shown
        form = preview_form(csrf_of(page), RAISED)
        form.add_field("file", b"window: [", filename="bad.yaml", content_type="application/yaml")
        shown = await (await http.post(f"{console.url}/console/policy/preview", data=form)).text()
        assert "bad.yaml:" in shown and "not valid YAML" in shown
        form = preview_form(csrf_of(page), RAISED)
        form.add_field("file", b"\xff\xfe", filename="binary.yaml", content_type="application/octet-stream")
        shown = await (await http.post(f"{console.url}/console/policy/preview", data=form)).text()
        assert "binary.yaml is not UTF-8 text" in shown


async def test_activations_are_shown_with_markup_as_text(console: Console) -> None:
    """An activation whose actor and reason are markup (applied through the API) is listed escaped."""
    async with aiohttp.ClientSession() as api:
        response = await api.post(
            f"{console.url}/v1/policy",
            json={"policy": RAISED, "actor": "<i>mallory</i>", "reason": MARKUP},
            headers={"Authorization": f"Bearer {secret('alice@ops')}"},
        )
        assert response.status == 200, await response.text()
    async with browser() as http:
        await signed_in(http, console.url, "grafana")
        page = await (await http.get(f"{console.url}/console/policy")).text()
    assert "<script>window.pwned" not in page and "<i>mallory</i>" not in page
    assert "&lt;i&gt;mallory&lt;/i&gt;" in page and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    assert re.search(r'<td class="principal">alice@ops</td>', page)
