"""The `tiergate` command line."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .explain import ExplainError, decisions_for, explain
from .policy_file import PolicyFileError, read_policy
from .codec import Kept
from .replay import line_writer, replay_file

err = Console(stderr=True, highlight=False)


def _replay(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    events = Path(args.events)
    if not events.is_file():
        err.print(f"[red]error:[/] {events}: no such file; give a JSONL event history (one JSON object a line)")
        return 2
    gc.freeze()  # what exists now lives all run long: keep the collector from rescanning it per batch
    rejects = Path(args.rejects) if args.rejects else events.with_name(events.name + ".rejects.jsonl")
    shown = 0

    def show(kept: Kept) -> None:
        nonlocal shown
        shown += 1
        if shown <= args.show_rejects:
            err.print(f"  {kept.origin}: {kept.result}: {kept.reason}", soft_wrap=True)

    with line_writer(Path(args.output) if args.output else sys.stdout) as write_decision, \
            line_writer(rejects, lazy=True) as write_kept:
        result = replay_file(events, policy, lambda d: write_decision(d.to_json()),
                             lambda k: (show(k), write_kept(k.to_json().decode())), progress=args.progress)
    if args.tiers:
        with line_writer(Path(args.tiers)) as write_tier:
            for line in result.tier_lines():
                write_tier(line)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(result.results.items())) or "no events"
    err.print(f"replayed {events}: {counts}; {result.decisions} decisions", soft_wrap=True)
    if result.kept:
        more = result.kept - args.show_rejects
        err.print(f"{result.kept} events set aside (rejected or late){f', {more} more not shown' if more > 0 else ''}"
                  f"; kept in {rejects}", soft_wrap=True)
    return 0


def _check_policy(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    print(json.dumps(policy.normalised, indent=2, sort_keys=True))
    print(f"policy_version {policy.version}\nsha256 {policy.sha256}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    with open(args.log, "rb") as log:
        decisions = decisions_for(log, args.action_type)
    try:
        explain(decisions, args.action_type, Console(highlight=False))
    except ExplainError as error:
        err.print(f"[red]error:[/] {error}")
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tiergate", description="Progressive autonomy for AI agents, earned per action type.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="fold a JSONL event history into the decision log")
    replay.add_argument("events", metavar="EVENTS.jsonl")
    replay.add_argument("--policy", required=True, metavar="POLICY.yaml")
    replay.add_argument("-o", "--output", metavar="FILE", help="decision log (canonical JSONL); default stdout")
    replay.add_argument("--tiers", metavar="FILE", help="also write the final tier map (JSONL)")
    replay.add_argument("--rejects", metavar="FILE", help="where rejected and late events are kept "
                        "(default EVENTS.jsonl.rejects.jsonl)")
    replay.add_argument("--show-rejects", type=int, default=10, metavar="N", help="print the first N set-aside events")
    replay.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: for large files on a terminal)")
    replay.set_defaults(run=_replay)

    check = commands.add_parser("check-policy", help="validate a policy; print its normalised form and sha256")
    check.add_argument("policy", metavar="POLICY.yaml")
    check.set_defaults(run=_check_policy)

    why = commands.add_parser("explain", help="an action type's tier, since when, and the evidence behind it")
    why.add_argument("action_type", metavar="ACTION_TYPE")
    why.add_argument("--log", required=True, metavar="DECISIONS.jsonl", help="a decision log (replay's output)")
    why.set_defaults(run=_explain)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PolicyFileError as error:
        err.print(f"[red]invalid policy[/]\n{error}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
