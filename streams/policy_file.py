"""Reading the policy YAML: the core validates a mapping, this adds the file name and line numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tiergate.models.policy import Policy, PolicyError, load_policy

from .canonical import policy_sha256


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message lists `file:line: field: problem — fix`."""


FieldPath = tuple[str | int, ...]


def _lines(node: yaml.Node, path: FieldPath, out: dict[FieldPath, int], duplicates: list[str]) -> None:
    """The line of every field, and a message for each key a mapping repeats (YAML would keep the last)."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            child = (*path, key.value)
            line = key.start_mark.line + 1
            if key.value in seen:
                where = ".".join(map(str, child))
                duplicates.append(f"{line}: {where}: given twice (lines {seen[key.value]} and {line}); keep one")
            seen.setdefault(key.value, line)
            _lines(value, child, out, duplicates)
            out[child] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out, duplicates)


def _line_of(path: FieldPath, lines: dict[FieldPath, int]) -> int:
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
    return parse_policy(text, str(path))


def policy_from_mapping(raw: Any, recorded: bool = False) -> Policy:
    """A policy from an already-parsed mapping (its identity: sha256 of the RFC 8785 normalised form);
    `recorded`: one the log already holds (see `load_policy`)."""
    return load_policy(raw, digest=policy_sha256, recorded=recorded)


def parse_policy(text: str, name: str) -> Policy:
    """A policy from YAML text (a file's, or a request body's); errors name `name:line: field`."""
    path = name
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise PolicyFileError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    lines: dict[FieldPath, int] = {}
    duplicates: list[str] = []
    if node is not None:
        _lines(node, (), lines, duplicates)
    if duplicates:
        raise PolicyFileError("\n".join(f"{path}:{problem}" for problem in duplicates))
    try:
        return policy_from_mapping(raw)
    except PolicyError as error:
        report = [
            f"{path}:{_line_of(field, lines)}: {'.'.join(map(str, field)) or 'policy'}: {message}"
            for field, message in error.problems
        ]
        raise PolicyFileError("\n".join(report)) from None
