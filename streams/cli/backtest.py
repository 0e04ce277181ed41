"""`tiergate backtest`: what would a candidate policy have done on our history? Run it before `policy apply`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tiergate.models.durations import format_duration
from tiergate.models.wire import parse_ts

from ..backtest import BacktestError, Question, backtest
from ..policy_file import read_policy
from ..replay import file_lines, line_writer
from .terminal import CommandError, err, examples, input_file, print_json, table_width

LOG = "a JSONL event history (tiergate export, or the input topic as JSONL)"


def _backtest(args: argparse.Namespace) -> int:
    question = _question(args)
    log = input_file(args.log, LOG)
    report = _run(log, question, Path(args.decisions) if args.decisions else None)
    missing = sorted((question.types or frozenset()) - set(report["types"]))
    if missing:
        raise CommandError(f"no action type {', '.join(missing)} in {log} or in the candidate: check --type")
    if args.png:
        _png(report, Path(args.png))
    if args.json:
        print_json(report)
    else:
        show(report, Console(highlight=False, width=table_width()))
    return 0


def _question(args: argparse.Namespace) -> Question:
    start = None
    if args.start is not None:
        try:
            start = parse_ts(args.start)
        except ValueError as error:
            raise CommandError(f"--from: {error}") from None
    types = None if not args.types else frozenset(t for given in args.types for t in given.split(",") if t)
    fallback = None if args.fallback_policy is None else read_policy(args.fallback_policy)
    return Question(read_policy(args.policy), fallback, start, types)


def _run(log: Path, question: Question, decisions: Path | None) -> dict[str, Any]:
    with open(log, "rb") as stream, line_writer(decisions) as write:
        try:
            return backtest((line for _, line in file_lines(stream)), question, str(log), lambda d: write(d.to_json()))
        except BacktestError as error:
            raise CommandError(f"{log}: {error}") from None


def _png(report: dict[str, Any], output: Path) -> None:
    try:
        from ..backtest_plot import render
    except ImportError:
        raise CommandError("--png needs matplotlib: install the plot extra (pip install './[plot]')") from None
    if not report["types"]:
        raise CommandError("no action type to draw: the log and the candidate name none")
    render(report, output)
    err.print(f"wrote {escape(str(output))}: {', '.join(sorted(report['types']))}")


# -- the text report -------------------------------------------------------------------------------------


def show(report: dict[str, Any], console: Console) -> None:
    """The report as tables: per type the tiers and moves, then exposure, then overrides the candidate rejects."""
    candidate, span = report["candidate"], report["span"]
    since = "the start of the log" if report["from"] is None else report["from"]
    console.print(
        f"backtest of {escape(report['log'])}: {report['events']} events, {span['from']} → {span['to']}\n"
        f"candidate {escape(candidate['policy_version'])} (sha256 {candidate['policy_sha256'][:12]}…) in force from "
        f"{since}; before it, the log as recorded"
    )
    console.print(_tiers(report["types"]))
    exposure = _exposure(report["types"])
    if exposure.row_count:
        console.print(exposure)
    else:
        console.print("exposure: every recorded action ran at the tier the candidate held")
    overrides = _overrides(report["types"])
    if overrides.row_count:
        console.print(overrides)


def _tiers(types: dict[str, Any]) -> Table:
    table = Table(title="tiers: recorded against the candidate", title_justify="left")
    for column in ("action type", "now", "first divergence", "moves ↑/↓", "time at tier", "without evidence"):
        table.add_column(column, no_wrap=column != "time at tier")
    for name, data in types.items():
        now = data["tier"]
        moves = data["moves"]
        table.add_row(
            escape(name),
            f"{now['recorded'] or 'out'} → {now['candidate'] or 'out'}",  # recorded → candidate
            _divergence(data["first_divergence"]),
            "\n".join(f"{side}: {m['promotions']}/{m['demotions']}" for side, m in moves.items()),
            "\n".join(f"{side}: {_spent(spent)}" for side, spent in data["time_at_tier"].items()),
            _duration(data["without_evidence"]),
        )
    return table


def _divergence(divergence: dict[str, Any] | None) -> str:
    if divergence is None:
        return "none"
    moved = divergence["moved"]
    cause = divergence["recorded_decision" if moved == "recorded" else "candidate_decision"]
    why = "" if cause is None else f" ({'recorded' if moved == 'recorded' else 'candidate'} {cause['kind']})"
    return f"{divergence['at']}\n{divergence['recorded'] or 'out'} vs {divergence['candidate'] or 'out'}{why}"


def _spent(spent: dict[str, int]) -> str:
    return " · ".join(f"{tier} {_duration(seconds)}" for tier, seconds in spent.items() if seconds) or "-"


def _duration(seconds: int) -> str:
    """A duration to read: whole minutes once it is an hour or more (the JSON keeps the seconds)."""
    return format_duration(seconds if seconds < 3600 else (seconds + 30) // 60 * 60)


def _exposure(types: dict[str, Any]) -> Table:
    table = Table(
        title="exposure: recorded actions that ran at another tier than the candidate held", title_justify="left"
    )
    for column in ("action type", "ran at", "candidate held", "recorded held", "actions", "their recorded outcomes"):
        table.add_column(column)
    for name, data in types.items():
        for row in data["exposure"]:
            outcomes = ", ".join(f"{result} {n}" for result, n in row["outcomes"].items()) or "-"
            if row["outcomes_without_action"]:
                outcomes += f" ({row['outcomes_without_action']} without their action in the log)"
            held = (row["ran_at"], row["candidate"], row["recorded"])
            table.add_row(escape(name), *held, str(row["actions"]), escape(outcomes))
    return table


def _overrides(types: dict[str, Any]) -> Table:
    table = Table(title="recorded overrides the candidate rejects", title_justify="left")
    for column in ("action type", "at", "override", "why", "recorded"):
        table.add_column(column)
    for name, data in types.items():
        for row in data["rejected_overrides"]:
            op = row["op"] + ("" if row["tier"] is None else f" {row['tier']}")
            table.add_row(escape(name), row["at"], op, escape(row["reason"]), row["recorded"])
    return table


# -- the command -----------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    command = commands.add_parser(
        "backtest",
        help="what a candidate policy would have done on a recorded history",
        description="Fold a history twice: as recorded, and with the candidate policy activated on every action "
        "type at --from (default: the start) in place of every later activation. Per type: both tier timelines, "
        "the first divergence, promotions and demotions, time at each tier, the time the candidate held a tier no "
        "recorded action ran at (so without evidence), and exposure: recorded actions that ran at another tier "
        "than the candidate held, with their recorded outcomes. Recorded overrides the candidate cannot take are "
        "listed with the reason. Run it before `tiergate policy apply`.",
        **examples(
            "tiergate backtest events.jsonl --policy candidate.yaml",
            "tiergate backtest events.jsonl --policy candidate.yaml --from 2026-11-20T00:00:00Z --png backtest.png",
            "tiergate backtest events.jsonl --policy candidate.yaml --type refund_up_to_50 --json | jq .types",
            "tiergate backtest old-events.jsonl --policy candidate.yaml --fallback-policy policy.yaml",
        ),
    )
    command.add_argument("log", metavar="LOG.jsonl", help="the recorded history")
    command.add_argument("--policy", required=True, metavar="CANDIDATE.yaml", help="the candidate policy")
    command.add_argument(
        "--from",
        dest="start",
        metavar="TS",
        help="RFC 3339: the log as recorded before it, the candidate from it (default: the candidate from the start)",
    )
    command.add_argument(
        "--fallback-policy",
        metavar="POLICY.yaml",
        help="for a log from before policies lived in the log: the policy its events fold under until their first "
        "activation (the candidate is then activated over its catalog)",
    )
    command.add_argument(
        "--type", dest="types", action="append", metavar="T", help="report these action types only (repeat, or a,b)"
    )
    command.add_argument("--json", action="store_true", help="print the report as JSON")
    command.add_argument("--png", metavar="FILE.png", help="draw both timelines of each type (plot extra)")
    command.add_argument("--decisions", metavar="FILE", help="write the candidate's decision log (canonical JSONL)")
    command.set_defaults(run=_backtest)
