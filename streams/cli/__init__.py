"""The `tiergate` command line: one module per group of commands, one entry point.

Conventions every command keeps: data on stdout (JSON with `--json` where a command prints data), messages
on stderr; examples at the end of each `--help`; a user's mistake (a missing file, a bad setting, an
unreachable broker, a busy port) is one line saying what to do, exit 2 — a traceback means a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.markup import escape

from .. import __version__
from ..compiled import stale_extensions
from ..policy_file import PolicyFileError
from ..settings import SettingsError
from ..store import StoreError
from . import backtest, history, inspection, kafka, keys, oc, operator, policy, report, serve
from .terminal import EXIT_USAGE, CommandError, err, examples

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tiergate",
        description="Progressive autonomy for AI agents, earned per action type: Crawl, Walk, Run.",
        **examples(
            "tiergate demo",
            "tiergate check-policy policy.yaml",
            "tiergate serve --policy policy.yaml",
            "tiergate replay events.jsonl --policy policy.yaml -o decisions.jsonl",
            "tiergate explain refund_up_to_50 --log decisions.jsonl",
            "tiergate backtest events.jsonl --policy candidate.yaml   # before tiergate policy apply",
            "tiergate COMMAND --help   # each command's options and examples",
        ),
    )
    top.add_argument("--version", action="version", version=f"tiergate {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (serve, history, policy, backtest, oc, report, inspection, operator, kafka, keys):
        group.add_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for source in stale_extensions():
        err.print(
            f"[yellow]warning:[/] {escape(source)} changed after it was compiled: run `make setup` to run the edit"
        )
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a reader that left shows here, not in the flush at exit
        return code
    except BrokenPipeError:
        return reader_left()
    except PolicyFileError as error:
        err.print(f"[red]error: invalid policy[/]\n{escape(str(error))}")
    except (SettingsError, StoreError) as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
    except CommandError as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
        return error.code
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        fix = f"pip install 'tiergate[{extra}]'"
        err.print(f"[red]error:[/] this command needs the {extra} extra: {escape(fix)}")
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


EXIT_READER_LEFT = 141
"""128 + SIGPIPE: the status a shell reports for a command whose reader left (`tiergate export | head -1`)."""


def reader_left() -> int:
    """Stop quietly when stdout's reader is gone, as a command killed by SIGPIPE would. Python flushes stdout
    at exit, which would fail again: point it at /dev/null first (Python's docs, the note on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_READER_LEFT


EXTRAS = {"aiokafka": "kafka", "cryptography": "kafka", "matplotlib": "plot", "openfeature": "openfeature"}
"""The optional dependencies a command may import, and the extra that installs each."""


if __name__ == "__main__":
    sys.exit(main())
