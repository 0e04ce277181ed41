"""Commands that read without changing anything: `check-policy`, `explain`, `plot`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from ..explain import ExplainError, decisions_for, explain, explanation
from ..policy_file import read_policy
from ..replay import file_lines
from ..settings import OperatorSettings, StoreSettings, load
from .terminal import NO_CREDENTIAL, CommandError, counted, err, examples, input_file, print_json, table_width


def _check_policy(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    if args.json:
        print_json({"policy": policy.normalised, "policy_version": policy.version, "policy_sha256": policy.sha256})
    else:
        sys.stdout.write(json.dumps(policy.normalised, indent=2, sort_keys=True) + "\n")
    err.print(
        f"{escape(args.policy)}: valid; policy_version {escape(policy.version)}, "
        f"{counted(len(policy.catalog), 'action type')}, sha256 {policy.sha256}"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    now = None
    if args.server or (args.log is None and os.environ.get("TIERGATE_SERVER")):
        decisions, now = _from_server(args.server, args.action_type)  # None: TIERGATE_SERVER's
    elif args.log is None:
        raise CommandError("give --log DECISIONS.jsonl or --server URL (or set TIERGATE_SERVER)")
    else:
        log = input_file(args.log, "a decision log (the output of tiergate replay, or export --decisions)")
        with open(log, "rb") as lines:
            decisions = decisions_for(lines, args.action_type)
    try:
        if args.json:
            print_json(explanation(decisions, args.action_type, now).record())
        else:
            explain(decisions, args.action_type, Console(highlight=False, soft_wrap=True, width=table_width()), now)
    except ExplainError as error:
        raise CommandError(str(error), code=1) from None
    return 0


def _from_server(server: str | None, action_type: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A running server's decisions about the type (every page) and its live view (GET /v1/status)."""
    settings = load(OperatorSettings, server=server)
    secret = settings.secret()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    decisions: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=settings.server.rstrip("/"), headers=headers, timeout=30) as http:
            after = 0
            while True:
                page = _ok(http.get("/v1/decisions", params={"action_type": action_type, "after": after}))
                decisions += page["decisions"]
                if not page["decisions"]:
                    break
                after = page["next_after"]
            views = _ok(http.get("/v1/status"))["action_types"]
    except httpx.HTTPError as error:
        raise CommandError(
            f"cannot reach {settings.server} ({type(error).__name__}): start `tiergate serve`, or give --server"
        ) from None
    return decisions, next((v for v in views if v["action_type"] == action_type), None)


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 401:
        raise CommandError(f"the server wants a credential: {NO_CREDENTIAL}")
    if response.status_code == 403:
        said = (
            response.json().get("error", "")
            if response.headers.get("content-type", "").startswith("application/json")
            else ""
        )
        raise CommandError(
            f"the server answered 403: {said or response.text[:200]}; explain reads with a credential of role reader "
            f"or operator: {NO_CREDENTIAL}"
        )
    if response.status_code != 200:
        raise CommandError(f"the server answered {response.status_code}: {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def _plot(args: argparse.Namespace) -> int:
    given = load(StoreSettings, policy=args.policy).policy
    policy = None if given is None else read_policy(given)  # None: the log's own activations
    events = input_file(args.events, "a JSONL event history (one JSON object a line)")
    try:
        from ..plot import render, timelines
    except ImportError:
        raise CommandError("plot needs matplotlib: install the plot extra (pip install './[plot]')") from None
    with open(events, "rb") as stream:
        lines = timelines((line for _, line in file_lines(stream)), policy)
    if args.types:
        lines = {name: line for name, line in lines.items() if name in args.types.split(",")}
    if not lines:
        hint = "" if policy is not None else " (it carries no policy activation? give --policy POLICY.yaml)"
        raise CommandError(
            f"{events}: no window of an evaluated action type closed in this history: nothing to plot{hint}"
        )
    under = f"policy {policy.version}" if policy is not None else "the policy in its log"
    render(lines, Path(args.output), f"{events.name} under {under}")
    err.print(f"wrote {escape(args.output)}: {', '.join(sorted(lines))}")
    return 0


def add_commands(commands: Any) -> None:
    check = commands.add_parser(
        "check-policy",
        help="validate a policy; print its normalised form and sha256",
        description="Validate a policy file. The normalised policy goes to stdout; the verdict, the "
        "policy_version and the sha256 every decision will carry go to stderr. Errors name file:line and field.",
        **examples(
            "tiergate check-policy policy.yaml",
            "tiergate check-policy policy.yaml --json | jq -r .policy_sha256",
        ),
    )
    check.add_argument("policy", metavar="POLICY.yaml")
    check.add_argument("--json", action="store_true", help="one JSON object: policy, policy_version, policy_sha256")
    check.set_defaults(run=_check_policy)

    why = commands.add_parser(
        "explain",
        help="an action type's tier, since when, why, and the evidence behind it",
        description="Read a decision log, or a running server: the tier an action type holds, the decision that put "
        "it there, the operator's pin or cap that holds it there, the evidence, and its history; from a server also "
        "its bars and hold now and the customer units still maturing. Exit 1 if the log never mentions the type.",
        **examples(
            "tiergate explain refund_up_to_50 --log decisions.jsonl",
            "tiergate explain refund_up_to_50 --log decisions.jsonl --json | jq .why",
            "tiergate explain refund_over_50 --server http://127.0.0.1:8360",
        ),
    )
    why.add_argument("action_type", metavar="ACTION_TYPE")
    source = why.add_mutually_exclusive_group()
    source.add_argument("--log", metavar="DECISIONS.jsonl", help="a decision log (replay's output)")
    source.add_argument(
        "--server",
        metavar="URL",
        help="a running `tiergate serve` (default: TIERGATE_SERVER, when --log is not given; credential: "
        "TIERGATE_CREDENTIAL[_FILE])",
    )
    why.add_argument("--json", action="store_true", help="print the explanation as JSON")
    why.set_defaults(run=_explain)

    plot = commands.add_parser(
        "plot",
        help="each type's bars, samples and tier over time as a PNG (plot extra)",
        description="Fold a history and draw, per evaluated action type, its rates against its bars (with "
        "the keep margin band), its sample sizes and its tier over time. A log that carries its policy (as "
        "replay's and export's do) needs no --policy. Needs the plot extra (matplotlib).",
        **examples(
            "tiergate plot examples/events.jsonl -o tiers.png",
            "tiergate plot events.jsonl --policy policy.yaml -o tiers.png",
            "tiergate plot events.jsonl --policy policy.yaml --types reply_to_ticket,refund_up_to_50",
        ),
    )
    plot.add_argument("events", metavar="EVENTS.jsonl")
    plot.add_argument(
        "--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY) for a log from before policies lived in it"
    )
    plot.add_argument("-o", "--output", default="tiers.png", metavar="FILE.png")
    plot.add_argument("--types", help="comma-separated action types (default: every evaluated type)")
    plot.set_defaults(run=_plot)
