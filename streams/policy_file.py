"""Reading the policy YAML: the core validates a mapping, this adds the file name and line numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tiergate.models.policy import Policy, PolicyError, load_policy


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message lists `file:line: field: problem — fix`."""


def _lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            out[child] = key.start_mark.line + 1
            _lines(value, child, out)
            out[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


def _line_of(path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int:
    """The line of the deepest part of `path` that is in the file (a missing field points at its parent)."""
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return 1


def read_policy(path: str | Path) -> Policy:
    """Load and validate a policy file, or raise PolicyFileError naming each bad field by line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyFileError(f"{path}: cannot read the policy file: {error.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise PolicyFileError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        return load_policy(raw)
    except PolicyError as error:
        report = [
            f"{path}:{_line_of(field, lines)}: {'.'.join(map(str, field)) or 'policy'}: {message}"
            for field, message in error.problems
        ]
        raise PolicyFileError("\n".join(report)) from None
