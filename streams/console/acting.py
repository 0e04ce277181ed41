"""What an operator does from the embedded server's console: overrides, and applying a policy.

Every action is checked before anything is written, with the evaluator's own rules: an override by a dry
run of the fold, a policy by a dry-run activation whose diff and immediate moves the operator reads and
confirms. The confirmation applies exactly the previewed document, and only while the policy in force is
the one the preview was made against (If-Match on its sha). Each write names the operator's credential as
its principal.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from tiergate.models.policy import Policy
from tiergate.models.wire import format_ts

from ..access import Caller
from ..embedded import Applied, Ingested, PolicyRefused
from ..policy_file import PolicyFileError, parse_policy
from ..store import StoreError
from .routes import CONSOLE, Console, form_of, posted, refused, see_other, session_of
from .sessions import PendingPolicy, Session
from .sources import EmbeddedSource

MAX_POLICY_BYTES = 1024 * 1024
SOURCE = "console"  # an activation's source, as the activations view shows it
STALE_FORM = "the form's CSRF token is missing or stale: reload the page and retry"


def mount(app: web.Application) -> None:
    app.add_routes(
        [
            web.post("/console/override", override),
            web.post("/console/policy/preview", preview_policy),
            web.post("/console/policy/apply", apply_policy),
        ]
    )


async def operator_form(request: web.Request) -> tuple[Console, Session, dict[str, str], Caller] | web.Response:
    """The console, session, posted fields and operator of an acting request, or the refusal to send."""
    console = request.app[CONSOLE]
    session, _ = session_of(request)
    fields = await form_of(request, session)
    if fields is None:
        return refused(console, session, 403, STALE_FORM)
    caller = session.caller
    if caller is None or caller.role != "operator":
        return refused(console, session, 403, "acting needs an operator: sign in with an operator credential")
    return console, session, fields, caller


def embedded(console: Console) -> EmbeddedSource:
    source = console.embedded
    assert source is not None  # acting is mounted on the embedded server only
    return source


# -- overrides -----------------------------------------------------------------------------------------


async def override(request: web.Request) -> web.StreamResponse:
    """An operator's override from the page: checked by a dry run with the fold's own rules, then posted
    under the operator's credential (its name is the decision's principal)."""
    checked = await operator_form(request)
    if isinstance(checked, web.Response):
        return checked
    console, session, fields, caller = checked
    source = embedded(console)
    raw = override_event(fields, source.runtime.clock.now())
    session.notice = await _override(source, raw, caller)
    return see_other(f"/console?type={quote(fields.get('action_type', ''), safe='')}#log")


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


async def _override(source: EmbeddedSource, raw: bytes, caller: Caller) -> tuple[str, str]:
    """Dry-run the override, then post it if the fold would apply it: the notice to show."""
    runtime, writer, origin = source.runtime, source.writer, f"console({caller.name})"
    tried = await writer.call(lambda: runtime.dry_run([raw], origin, caller.name))
    if tried.results[0].result != "applied":
        return "error", f"not sent: {tried.results[0].reason}"
    try:
        done = await writer.run(lambda: runtime.ingest([raw], origin, principal=caller.name))
    except StoreError as error:
        return "error", f"not stored: {error}; nothing was written: retry once the store is fixed"
    return _outcome(done)


def _outcome(done: Ingested) -> tuple[str, str]:
    result = done.results[0]
    if result.result != "applied":
        return "error", f"{result.result}: {result.reason}"
    made = [d.record() for d in done.decisions if d.kind == "override"]
    said = "; ".join(f"{r['decision_id']}: {r['from_tier']} → {r['to_tier']}" for r in made)
    return "ok", f"applied ({said})" if said else "applied"


# -- policies ------------------------------------------------------------------------------------------


async def preview_policy(request: web.Request) -> web.StreamResponse:
    """Parse a pasted or uploaded policy and dry-run its activation against the live state: the diff and
    what would move at once, with a form to confirm exactly this document."""
    checked = await operator_form(request)
    if isinstance(checked, web.Response):
        return checked
    console, session, fields, caller = checked
    source = embedded(console)
    text, actor, reason = fields.get("policy", ""), fields.get("actor", "").strip(), fields.get("reason", "").strip()
    try:
        text, name = await _policy_text(request, text)
        if not actor or not reason:
            raise ValueError("actor and reason are required: who applies it and why go into the promotion log")
        policy = parse_policy(text, name)
        runtime = source.runtime
        current, dry = await source.writer.call(  # one moment: the sha shown is the one the diff was made against
            lambda: (runtime.current_policy(), runtime.apply(policy, SOURCE, actor, reason, caller.name, dry_run=True))
        )
    except (ValueError, PolicyFileError, PolicyRefused) as error:
        return await _policy_again(console, session, text, fields, str(error))
    session.pending = PendingPolicy(
        secrets.token_urlsafe(16), policy, actor, reason, None if current is None else current.policy_sha256
    )
    return console.render(
        "policy_preview.html",
        session,
        pending=session.pending,
        current=None if current is None else current.record(),
        diff=dry.diff.lines(),
        unchanged=dry.diff.empty,
        moves=[d.record() for d in dry.moves],
    )


async def _policy_text(request: web.Request, pasted: str) -> tuple[str, str]:
    """The policy's text and the name its errors give: the uploaded file's when one was chosen, else the
    pasted text's; ValueError for a file that cannot be a policy."""
    _, files = await posted(request)
    filename, body = files.get("file", ("", b""))
    if not body:
        return pasted, "the pasted policy"
    if len(body) > MAX_POLICY_BYTES:
        raise ValueError(f"{filename} is larger than {MAX_POLICY_BYTES // 1024} KiB: upload the policy YAML")
    try:
        return body.decode("utf-8"), filename
    except UnicodeDecodeError:
        raise ValueError(f"{filename} is not UTF-8 text: upload the policy YAML") from None


async def _policy_again(
    console: Console, session: Session, text: str, fields: dict[str, str], problem: str
) -> web.Response:
    """The policy page again, with the problem and the operator's draft kept for fixing."""
    data = await console.source.policy()
    notice = ("error", f"not applied: {problem}")
    values = {"draft": text, "draft_actor": fields.get("actor", ""), "draft_reason": fields.get("reason", "")}
    return console.render("policy.html", session, status=422, notice=notice, live_page=True, **data, **values)


async def apply_policy(request: web.Request) -> web.StreamResponse:
    """Apply the previewed policy, If-Match the sha it was previewed against; then back to the history."""
    checked = await operator_form(request)
    if isinstance(checked, web.Response):
        return checked
    console, session, fields, caller = checked
    pending, session.pending = session.pending, None
    if pending is None or not secrets.compare_digest(pending.id, fields.get("pending", "")):
        return refused(
            console, session, 409, "nothing previewed to apply (or a newer preview replaced it): preview again"
        )
    session.notice = await _apply(embedded(console), pending, caller)
    return see_other("/console/policy#activations")


async def _apply(source: EmbeddedSource, pending: PendingPolicy, caller: Caller) -> tuple[str, str]:
    runtime = source.runtime

    def activate() -> Applied:
        return runtime.apply(
            pending.policy, SOURCE, pending.actor, pending.reason, caller.name, if_match=pending.if_match
        )

    try:
        applied = await source.writer.run(activate)
    except PolicyRefused as refusal:
        return "error", f"not applied: {refusal}; nothing was written: preview again"
    except StoreError as error:
        return "error", f"not stored: {error}; nothing was written: retry once the store is fixed"
    return "ok", _applied_notice(applied.activation_id, pending.policy, len(applied.moves))


def _applied_notice(activation_id: str, policy: Policy, moved: int) -> str:
    return f"activation {activation_id} applied: policy {policy.version}; {moved} type(s) moved at once"
