"""The command line's channels and errors: data goes to stdout, messages and errors to stderr, and a
user's mistake is one clear line (what is wrong, what to do) with a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USAGE = 2  # bad input, settings or environment; argparse's own usage errors exit 2 too

NO_CREDENTIAL = (
    "set TIERGATE_CREDENTIAL_FILE (a file holding the secret of a credential the server knows) or TIERGATE_CREDENTIAL"
)
"""The fix for a server's 401, in the client's words (the server's own answer names its credentials file)."""


PIPED_WIDTH = 160
"""Columns of a table printed to a pipe or a file: wide enough that rows stay on one line (rich would
squeeze them into 80 and cut every cell)."""


def table_width() -> int | None:
    """The width for stdout's tables: the terminal's, or PIPED_WIDTH when stdout is not a terminal."""
    return None if sys.stdout.isatty() else PIPED_WIDTH


class CommandError(Exception):
    """A mistake the user can fix: the message says what is wrong and what to do."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def counted(n: int, noun: str) -> str:
    """`1 action type`, `2 action types`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def print_json(data: Any) -> None:
    """Data on stdout as indented JSON with sorted keys."""
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def input_file(name: str, what: str) -> Path:
    """An input file that must exist and be a file, or a CommandError naming it and what it should be."""
    path = Path(name)
    if not path.exists():
        raise CommandError(f"{path}: no such file; give {what}")
    if not path.is_file():
        raise CommandError(f"{path}: not a file; give {what}")
    return path


def examples(*lines: str) -> dict[str, Any]:
    """argparse keywords that end a command's --help with worked examples."""
    text = "examples:\n" + "\n".join(f"  {line}" for line in lines)
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}
