"""`tiergate policy diff|apply|rollback|history`: changing the policy of a running deployment.

A policy change is an activation recorded in the log (one event per action type), so every later decision
is judged under it and replay reproduces it. `apply` shows what changes and what moves at once before it
writes; `--dry-run` stops there.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.markup import escape

from tiergate.models.policy import Policy

from ..activation import Diff, diff
from ..policy_file import read_policy
from ..settings import OperatorSettings, load
from .terminal import NO_CREDENTIAL, CommandError, err, examples, print_json

TIMEOUT = 30.0
SERVER_HELP = "the embedded server's URL (or TIERGATE_SERVER; default http://127.0.0.1:8360)"


def _diff(args: argparse.Namespace) -> int:
    old, new = read_policy(args.old), read_policy(args.new)
    changes = diff({name: rules.mapping for name, rules in old.types.items()}, new)
    if args.json:
        print_json(changes.record())
    else:
        for line in changes.lines():
            print(line)
    return 0


def client(server: str | None) -> httpx.Client:
    """A client of the server --server names (None: TIERGATE_SERVER, else the local default), its URL checked
    first so a mistake is reported as the option or variable it came from."""
    settings = load(OperatorSettings, server=server)
    url, secret = settings.server, settings.secret() or None  # an empty TIERGATE_CREDENTIAL is none
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    return httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT)


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One request; the server's {error, fix} as a CommandError; an unreachable server said plainly."""
    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise CommandError(
            f"{http.base_url}: cannot reach the server ({error}); is `tiergate serve` running?"
        ) from None
    body: dict[str, Any] = response.json() if response.content else {}
    if response.status_code >= 400:
        fix = NO_CREDENTIAL if response.status_code == 401 else body.get("fix", "")
        if response.status_code == 403:
            fix = (
                f"policy apply and rollback need a credential with role operator (history: reader too): {NO_CREDENTIAL}"
            )
        raise CommandError(f"{response.status_code}: {body.get('error', response.text)}" + (f"; {fix}" if fix else ""))
    return body


def _apply(args: argparse.Namespace) -> int:
    text = Path(args.file).read_text(encoding="utf-8") if Path(args.file).is_file() else None
    if text is None:
        raise CommandError(f"{args.file}: no such file; give a policy YAML")
    policy = read_policy(args.file)  # refuse an invalid file here, with its line numbers, before anything is sent
    if args.kafka:
        return _activate_on_kafka(args, policy)
    return _activate(args, {"policy": text, "actor": args.actor, "reason": args.reason}, args.dry_run)


def _activate_on_kafka(args: argparse.Namespace, policy: Policy) -> int:
    """Sign the activation with the operator's key and produce it; refuse what the fold would refuse."""
    from ..activation import new_activation_id, reused_id
    from ..kafka import EVENTS, POLICIES
    from ..kafka_policy import history, plan, produce, recorded_activations, refusals
    from .kafka import genesis_keys, kafka_settings, preflight
    from .keys import operator_key

    settings = kafka_settings(args)
    key = operator_key(args.key)
    genesis = genesis_keys(settings)
    preflight(settings, (EVENTS, POLICIES))
    activations = asyncio.run(history(settings))
    if activations and activations[-1].record["policy_sha256"] == policy.sha256:
        err.print(f"{escape(policy.version)} is already in force as activation {activations[-1].activation_id}")
        return 0
    problems = refusals(activations, policy, key.key_id, None if genesis is None else [k["key_id"] for k in genesis])
    if problems:
        raise CommandError("refused before anything was written: " + "; ".join(problems))
    if args.activation_id:  # given to resume an apply: refused if it is recorded already (as the server does)
        used = asyncio.run(recorded_activations(settings)).get(args.activation_id)
        refused = reused_id(args.activation_id, used)
        if refused is not None:
            raise CommandError(f"refused before anything was written: {refused}")
    now = int(time.time())
    activation_id = args.activation_id or new_activation_id(now)
    planned = plan(activations, policy, key, settings.deployment, activation_id, args.actor, args.reason, now)
    if not args.dry_run:
        asyncio.run(produce(settings, planned))
    if args.json:
        print_json({"activation_id": activation_id, "dry_run": args.dry_run, "diff": planned.diff.record()})
        return 0
    verb = "would activate" if args.dry_run else "produced"
    err.print(
        f"{verb} {escape(policy.version)} as activation {activation_id} (sha256 {policy.sha256[:12]}…), signed by "
        f"{key.key_id} for deployment {settings.deployment}; resume with --activation-id {activation_id}"
    )
    for line in planned.diff.lines():
        print(line)
    if args.dry_run:
        _dry_run_said("nothing was produced")
    return 0


def _activate(args: argparse.Namespace, body: dict[str, Any], dry_run: bool) -> int:
    if args.activation_id:
        body["activation_id"] = args.activation_id
    with client(args.server) as http:
        current = call(http, "GET", "/v1/policy") if not args.activation_id else None
        headers = {} if current is None else {"If-Match": f'"{current["policy_sha256"]}"'}
        params = {"dry_run": "1"} if dry_run else {}
        applied = call(http, "POST", "/v1/policy", json=body, headers=headers, params=params)
    if args.json:
        print_json(applied)
        return 0
    if applied["unchanged"]:
        err.print(
            f"{escape(applied['policy_version'])} (sha256 {applied['policy_sha256'][:12]}…) is already in force as "
            f"activation {applied['activation_id']}: nothing written"
        )
        return 0
    verb = "would activate" if dry_run else "activated"
    err.print(
        f"{verb} {escape(applied['policy_version'])} as activation {applied['activation_id']} "
        f"(sha256 {applied['policy_sha256'][:12]}…); resume an interrupted apply with "
        f"--activation-id {applied['activation_id']}"
    )
    for line in Diff(**applied["diff"]).lines():
        print(line)
    for move in applied["moves"]:
        print(f"moves at once: {move['action_type']} {move['from_tier']} → {move['to_tier']}")
    if dry_run:
        moves = len(applied["moves"])
        moving = f"{moves} type{'s' if moves != 1 else ''} would move at once" if moves else "nothing moves at once"
        _dry_run_said(f"nothing was written; {moving}")
    return 0


def _dry_run_said(what: str) -> None:
    """A dry run's last line, after the diff on stdout (flushed first, so it ends a terminal's output)."""
    sys.stdout.flush()
    err.print(f"dry run: {what}")


def _rollback(args: argparse.Namespace) -> int:
    with client(args.server) as http:
        history = call(http, "GET", "/v1/policy/history")["activations"]
        target = _rollback_target(history, args.to)
        document = call(http, "GET", f"/v1/policy/activations/{target['activation_id']}")["policy"]
    err.print(
        f"rolling back to {escape(target['policy_version'])} (activation {target['activation_id']}): a new "
        "activation of that document. Types a lowered ceiling dropped stay where they are, with their cooldown; "
        "they climb again on evidence."
    )
    body = {"policy": document, "actor": args.actor, "reason": args.reason}
    return _activate(args, body, args.dry_run)


def _rollback_target(history: list[dict[str, Any]], to: str | None) -> dict[str, Any]:
    if to is None:  # the newest activation of another document than the one in force
        earlier = [row for row in history[:-1] if row["policy_sha256"] != history[-1]["policy_sha256"]]
        if not earlier:
            raise CommandError("nothing to roll back to: no earlier activation had another policy")
        return earlier[-1]
    for row in history:
        if row["activation_id"] == to:
            return row
    raise CommandError(f"no activation {to!r}: see `tiergate policy history`")


def _history(args: argparse.Namespace) -> int:
    with client(args.server) as http:
        rows = call(http, "GET", "/v1/policy/history")["activations"]
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        who = row["actor"] + (f" ({row['principal']})" if row.get("principal") else "")
        print(
            f"{row['ts']}  {row['activation_id']}  {row['policy_version']}  {row['policy_sha256'][:12]}  "
            f"{row['source']}  {who}: {row['reason']}"
        )
    return 0


def add_commands(commands: Any) -> None:
    group = commands.add_parser(
        "policy",
        help="change the policy of a running deployment: diff, apply, rollback, history",
        **examples(
            "tiergate policy diff old.yaml new.yaml",
            "tiergate policy apply new.yaml --actor ops@example.com --reason 'walk bar to 0.95' --dry-run",
            "tiergate policy apply new.yaml --actor ops@example.com --reason 'walk bar to 0.95'",
            "tiergate policy rollback --actor ops@example.com --reason 'the new bar demoted healthy types'",
            "tiergate policy history",
        ),
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    compare = actions.add_parser("diff", help="what NEW changes against OLD, per action type")
    compare.add_argument("old", metavar="OLD.yaml")
    compare.add_argument("new", metavar="NEW.yaml")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(run=_diff)

    def changing(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--actor", required=True, help="who is changing the policy (in the promotion log)")
        parser.add_argument("--reason", required=True, help="why (in the promotion log)")
        parser.add_argument("--server", help=SERVER_HELP)
        parser.add_argument("--dry-run", action="store_true", help="show the diff and what moves; write nothing")
        parser.add_argument("--activation-id", help="resume an interrupted apply (its events become duplicates)")
        parser.add_argument("--json", action="store_true")

    apply = actions.add_parser("apply", help="activate a policy file (credential: TIERGATE_CREDENTIAL[_FILE])")
    apply.add_argument("file", metavar="POLICY.yaml")
    apply.add_argument("--kafka", action="store_true", help="sign and produce the activation to Kafka")
    apply.add_argument("--key", metavar="FILE", help="with --kafka: the operator key (or TIERGATE_OPERATOR_KEY_FILE)")
    apply.add_argument("--bootstrap", help="with --kafka: host:port (or TIERGATE_KAFKA_BOOTSTRAP)")
    apply.add_argument("--topic-prefix", help="with --kafka (or TIERGATE_KAFKA_TOPIC_PREFIX)")
    changing(apply)
    apply.set_defaults(run=_apply)

    back = actions.add_parser("rollback", help="activate an earlier activation's document again")
    back.add_argument("--to", metavar="ACTIVATION", help="default: the newest earlier activation of another policy")
    changing(back)
    back.set_defaults(run=_rollback)

    listing = actions.add_parser("history", help="every activation: when, who, why, from where")
    listing.add_argument("--server", help=SERVER_HELP)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_history)
