"""`tiergate oc`: a policy's operating characteristic, simulated through the fold (streams/oc.py).

Tables (or JSON) on stdout, progress on stderr, a PNG on request; exit 1 when a gate-quality target it
measured is missed, so a CI job can hold a policy to them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

from .. import oc
from ..policy_file import read_policy
from .terminal import CommandError, err, examples


def _volumes(text: str) -> list[float]:
    try:
        volumes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give outcomes an hour as numbers, e.g. 0.5,2") from None
    if not volumes or any(volume <= 0 for volume in volumes):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more positive outcomes an hour, e.g. 0.5,2")
    return volumes


MEASURED_REPS = 40  # simulated types per case the targets are judged on


def _reps(text: str) -> int:
    try:
        reps = int(text)
    except ValueError:
        reps = 0
    if reps < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of simulated types per case, at least 1")
    return reps


def add_commands(commands: Any) -> None:
    command = commands.add_parser(
        "oc",
        help="a policy's operating characteristic, simulated through the fold",
        **examples(
            "tiergate oc examples/policy.yaml --png oc.png",
            "tiergate oc examples/policy.yaml --targets --reps 200 --markdown   # only the targets' cases",
            "tiergate oc policy.yaml --type refund_up_to_50 --volumes 0.5,2,10 --json",
        ),
    )
    command.add_argument("policy", metavar="POLICY.yaml")
    command.add_argument(
        "--type", dest="types", action="append", metavar="T", help="only this action type (repeatable)"
    )
    command.add_argument(
        "--volumes", type=_volumes, default=[0.5, 2.0], help="keep cases: outcomes an hour (default 0.5,2)"
    )
    command.add_argument(
        "--gate-volumes", type=_volumes, default=[10.0], help="gate cases: outcomes an hour per bar (default 10)"
    )
    command.add_argument("--reps", type=_reps, default=40, metavar="N", help="simulated types per case (default 40)")
    command.add_argument("--seed", type=int, default=1, metavar="S")
    command.add_argument("--targets", action="store_true", help="only the cases that measure a gate-quality target")
    command.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs)")
    command.add_argument("--json", action="store_true", help="print every case and target as JSON instead of tables")
    command.add_argument("--png", type=Path, metavar="FILE", help="also draw share vs true rate (matplotlib)")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, then print the tables (or JSON) and draw the PNG; exit 1 when a gate-quality target is missed."""
    judge = oc.Judge(read_policy(args.policy))
    chosen = oc.cases(judge, _names(judge, args.types), args.volumes, args.gate_volumes, args.targets)
    result = _simulate(judge, chosen, args.reps, args.seed)
    if args.json:
        print(json.dumps(result.record(), indent=2, ensure_ascii=False))
    else:
        console = Console(highlight=False, markup=False)
        for grid in oc.grids(result):
            if args.markdown:
                print(grid.markdown())
            else:
                console.print(grid.rich())
    if args.png:
        oc.render_png(result, args.png)
        err.print(f"wrote {args.png}")
    sys.stdout.flush()
    if args.reps < MEASURED_REPS and result.targets:
        err.print(
            f"[yellow]note:[/] {args.reps} simulated types per case are too few to judge the targets (a share of "
            f"{args.reps} moves by {100 / args.reps:.0f}% a type): the verdicts are noise; measure with --reps "
            f"{MEASURED_REPS} or more"
        )
    return 0 if all(target.met for target in result.targets) else 1


def _simulate(judge: oc.Judge, chosen: list[oc.Case], reps: int, seed: int) -> oc.Characteristic:
    """Every chosen case, with a progress bar on stderr."""
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("simulating types", total=len(chosen) * reps)
        return oc.characteristic(judge, chosen, reps, seed, lambda: bar.advance(task))


def _names(judge: oc.Judge, wanted: list[str] | None) -> list[str]:
    catalog = judge.catalog()
    if not wanted:
        return catalog
    unknown = [name for name in wanted if name not in catalog]
    if unknown:
        raise CommandError(f"--type {', '.join(unknown)}: not in the policy's action_types ({', '.join(catalog)})")
    return wanted
