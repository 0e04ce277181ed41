"""The read-only console's actions: the CLI commands an operator runs (and signs) on a Kafka deployment.

The page writes nothing. It turns what the operator asks for into the command line, every argument quoted
for a POSIX shell (shlex), so a reason holding quotes, `$(…)` or a newline is one argument when pasted, never
shell code.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from aiohttp import web

from tiergate.models.wire import TIERS

from .routes import OPS, viewer_or_sign_in

NEEDS_TIER = ("pin", "cap")
TAKES_TIER = ("pin", "cap", "demote")


def mount(app: web.Application) -> None:
    app.add_routes([web.get("/console/command", command)])


def override_command(fields: Mapping[str, str]) -> list[str]:
    """`tiergate override OP TYPE [--tier T] --actor A --reason R --kafka`, or ValueError naming the field."""
    op, action_type, tier = fields.get("op", ""), fields.get("action_type", "").strip(), fields.get("tier", "")
    if op not in OPS:
        raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")
    if not action_type:
        raise ValueError("choose the action type")
    if tier and tier not in TIERS:
        raise ValueError(f"tier {tier!r} is not one of {', '.join(TIERS)}")
    if op in NEEDS_TIER and not tier:
        raise ValueError(f"{op} needs a tier: choose crawl, walk or run")
    argv = ["tiergate", "override", op, action_type]
    if tier and op in TAKES_TIER:
        argv += ["--tier", tier]
    return [*argv, *_who(fields), "--kafka"]


def policy_commands(fields: Mapping[str, str]) -> list[list[str]]:
    """The dry run, then the apply: `tiergate policy apply FILE --actor A --reason R --kafka [--dry-run]`."""
    file = fields.get("file", "").strip() or "policy.yaml"
    apply = ["tiergate", "policy", "apply", file, *_who(fields), "--kafka"]
    return [[*apply, "--dry-run"], apply]


def _who(fields: Mapping[str, str]) -> list[str]:
    actor, reason = fields.get("actor", "").strip(), fields.get("reason", "").strip()
    if not actor or not reason:
        raise ValueError("give an actor and a reason: who acts and why go into the promotion log")
    return ["--actor", actor, "--reason", reason]


async def command(request: web.Request) -> web.StreamResponse:
    """The command an action needs, shown for the operator to run (nothing is written)."""
    console, session, _, away = viewer_or_sign_in(request)
    if away is not None:
        return away
    fields, policy = request.query, request.query.get("what") == "policy"
    try:
        lines = policy_commands(fields) if policy else [override_command(fields)]
        commands, problem = [shlex.join(argv) for argv in lines], None
    except ValueError as error:
        commands, problem = [], str(error)
    back = "/console/policy" if policy else "/console#act"
    hint = (
        "Run the dry run first: it shows the diff and what moves at once; then apply. The CLI signs the "
        "activation with your operator key."
        if policy
        else "The CLI signs the override with your operator key; against a server it checks it first, with a "
        "dry run of the live state (on Kafka there is none: it waits for the workers' decision, or the reason "
        "they refused it)."
    )
    title = "Apply a policy from the CLI" if policy else "Override from the CLI"
    values = {"commands": commands, "problem": problem, "hint": hint, "back": back, "title": title}
    status = 200 if problem is None else 422
    return console.render("command.html", session, status=status, **values)
