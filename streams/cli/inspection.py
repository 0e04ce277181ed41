"""Commands that read without changing anything: `check-policy`, `explain`, `plot`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..explain import ExplainError, decisions_for, explain, explanation
from ..policy_file import read_policy
from ..replay import file_lines
from ..settings import StoreSettings, load
from .history import policy_of
from .terminal import CommandError, err, examples, input_file, print_json


def _check_policy(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    if args.json:
        print_json({"policy": policy.normalised, "policy_version": policy.version, "policy_sha256": policy.sha256})
    else:
        sys.stdout.write(json.dumps(policy.normalised, indent=2, sort_keys=True) + "\n")
    err.print(
        f"{escape(args.policy)}: valid; policy_version {escape(policy.version)}, "
        f"{len(policy.catalog)} action types, sha256 {policy.sha256}"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    log = input_file(args.log, "a decision log (the output of tiergate replay, or export --decisions)")
    with open(log, "rb") as lines:
        decisions = decisions_for(lines, args.action_type)
    try:
        if args.json:
            print_json(explanation(decisions, args.action_type).record())
        else:
            explain(decisions, args.action_type, Console(highlight=False, soft_wrap=True))
    except ExplainError as error:
        raise CommandError(str(error), code=1) from None
    return 0


def _plot(args: argparse.Namespace) -> int:
    policy = policy_of(load(StoreSettings, policy=args.policy))
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
        raise CommandError(f"{events}: no window of an evaluated action type closed in this history: nothing to plot")
    render(lines, Path(args.output), f"{events.name} under policy {policy.version}")
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
        description="Read a decision log: the tier an action type holds, the decision that put it there, the "
        "operator's pin or cap that holds it there, the evidence, and its history. Exit 1 if the log never "
        "mentions the type.",
        **examples(
            "tiergate explain refund_up_to_50 --log decisions.jsonl",
            "tiergate explain refund_up_to_50 --log decisions.jsonl --json | jq .why",
        ),
    )
    why.add_argument("action_type", metavar="ACTION_TYPE")
    why.add_argument("--log", required=True, metavar="DECISIONS.jsonl", help="a decision log (replay's output)")
    why.add_argument("--json", action="store_true", help="print the explanation as JSON")
    why.set_defaults(run=_explain)

    plot = commands.add_parser(
        "plot",
        help="each type's bars, samples and tier over time as a PNG (plot extra)",
        description="Fold a history and draw, per evaluated action type, its rates against its bars (with "
        "the keep margin band), its sample sizes and its tier over time. Needs the plot extra (matplotlib).",
        **examples(
            "tiergate plot events.jsonl --policy policy.yaml -o tiers.png",
            "tiergate plot events.jsonl --policy policy.yaml --types reply_to_ticket,refund_up_to_50",
        ),
    )
    plot.add_argument("events", metavar="EVENTS.jsonl")
    plot.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY)")
    plot.add_argument("-o", "--output", default="tiers.png", metavar="FILE.png")
    plot.add_argument("--types", help="comma-separated action types (default: every evaluated type)")
    plot.set_defaults(run=_plot)
