"""`tiergate replay`: fold a JSONL event history into the decision log and the final tier map."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from tiergate.models.decisions import Decision
from tiergate.models.evaluator import Event, Result, State, initial_decisions, initial_state, step, tier_records
from tiergate.models.policy import Policy

from .codec import EventError, Kept, decode, iter_lines

PROGRESS_MIN_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Replay:
    """The outcome of folding a history: state, decisions in fold order, counts, and what was kept aside."""

    policy: Policy
    state: State
    decisions: list[Decision] = field(default_factory=list)
    results: Counter[str] = field(default_factory=Counter)
    kept: list[Kept] = field(default_factory=list)

    def decision_lines(self) -> Iterator[str]:
        for decision in self.decisions:
            yield decision.to_json()

    def tier_lines(self) -> Iterator[str]:
        for record in tier_records(self.state, self.policy):
            yield record.to_json()


def parse_lines(lines: Iterable[tuple[str, bytes]], replay: Replay) -> Iterator[tuple[str, bytes, Event]]:
    """Decode each (origin, raw) pair; undecodable ones are kept as rejected and skipped."""
    for origin, raw in lines:
        try:
            yield origin, raw, decode(raw)
        except EventError as error:
            replay.results[Result.REJECTED.value] += 1
            replay.kept.append(Kept(origin, Result.REJECTED.value, error.reason, raw))


def fold_lines(lines: Iterable[tuple[str, bytes]], policy: Policy, state: State | None = None) -> Replay:
    """The fold over raw lines: what `replay` does, and what the runtimes' consistency checks compare with."""
    replay = Replay(policy, initial_state(policy) if state is None else state)
    if state is None:
        replay.decisions.extend(initial_decisions(policy))
    current, decisions, results = replay.state, replay.decisions, replay.results
    for origin, raw, event in parse_lines(lines, replay):
        _, decided, result, reason = step(current, event, policy)
        if decided:
            decisions.extend(decided)
        results[result.value] += 1
        if reason is not None:
            replay.kept.append(Kept(origin, result.value, reason, raw))
    return replay


def file_lines(stream: BinaryIO, name: str, advance: Callable[[int], object] | None = None) -> Iterator[tuple[str, bytes]]:
    for number, line in iter_lines(stream):
        if advance is not None:
            advance(len(line) + 1)
        yield f"{name}:{number}", line


def replay_file(path: Path, policy: Policy, progress: bool | None = None) -> Replay:
    """Fold a JSONL file; a progress bar on stderr when the file is large and stderr is a terminal."""
    size = path.stat().st_size
    show = sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES if progress is None else progress
    with open(path, "rb") as stream:
        if not show:
            return fold_lines(file_lines(stream, path.name), policy)
        columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(f"replaying {path.name}", total=size)
            return fold_lines(file_lines(stream, path.name, lambda n: bar.advance(task, n)), policy)


def write_lines(lines: Iterable[str | bytes], target: IO[str] | Path) -> None:
    """Write one record a line, to a path (atomically: temp file, then rename) or an open text stream."""
    if not isinstance(target, Path):
        for line in lines:
            target.write((line.decode() if isinstance(line, bytes) else line) + "\n")
        return
    temporary = target.with_name(f".{target.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        write_lines(lines, out)
    os.replace(temporary, target)
