"""`tiergate replay`: fold a JSONL event history into the decision log and the final tier map.

Decisions and set-aside events stream to their sinks as the fold produces them, so replaying a history
of any length takes memory bounded by the catalog and the lookback, not by the history.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from tiergate.models.decisions import Decision
from tiergate.models.fold import initial_decisions, initial_state, tier_records
from tiergate.models.policy import Policy
from tiergate.models.results import APPLIED, RESULTS, SET_ASIDE
from tiergate.models.state import State

from .codec import iter_lines
from .pipeline import Admit, Handled, Input, Pipeline, Principal, Rejected, carried

PROGRESS_MIN_BYTES = 8 * 1024 * 1024
PROGRESS_EVERY = 4096  # lines between progress bar updates

DecisionSink = Callable[[Decision], object]
RejectedSink = Callable[[Rejected], object]


@dataclass(slots=True)
class Replay:
    """A fold of a history in progress or done: the state, and counts of what became of the inputs.
    It is the pipeline's sink for replay: decisions and rejected input go on as they come."""

    policy: Policy | None
    state: State
    on_decision: DecisionSink
    on_rejected: RejectedSink
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))  # all but `applied`
    applied: int = 0  # the common result, counted apart: a native int costs a fraction of a dict's entry
    decisions: int = 0
    rejected: int = 0
    first_types: dict[str, str] | None = None  # each key's first event type, when a fallback policy is given

    @property
    def results(self) -> Counter[str]:
        """How many inputs had each result (those that none had left out)."""
        return Counter({result: n for result, n in (self.counts | {APPLIED: self.applied}).items() if n})

    def handled(self, item: Handled) -> None:
        result, event, first = item.result, item.event, self.first_types
        if result == APPLIED:
            self.applied += 1
        else:
            self.counts[result] += 1
        if first is not None and event is not None and event.action_type not in first:
            first[event.action_type] = event.type
        if item.decisions:
            for decision in item.decisions:
                self.decisions += 1
                self.on_decision(decision)
        if result in SET_ASIDE:
            self.rejected += 1
            self.on_rejected(item.rejected_input())

    def commit(self) -> None:
        """Nothing to make durable: the writers flush when they close."""

    @property
    def carries_its_policy(self) -> bool:
        """Did every key of the log begin with an activation (so a --policy was not needed)?"""
        return bool(self.first_types) and all(kind == "policy" for kind in (self.first_types or {}).values())

    def tier_lines(self) -> Iterator[str]:
        for record in tier_records(self.state):
            yield record.to_json()


def replay_inputs(
    inputs: Iterable[Input],
    policy: Policy | None,
    on_decision: DecisionSink,
    on_rejected: RejectedSink,
    state: State | None = None,
    admit: Admit | None = None,
    principal: Principal = carried,
) -> Replay:
    """The fold of a log from its start (initial decisions first) or from a saved `state`: what `replay`
    does, and what the runtimes' checks compare with."""
    replay = Replay(policy, initial_state(policy) if state is None else state, on_decision, on_rejected)
    if policy is not None:
        replay.first_types = {}
    if state is None:
        for decision in initial_decisions(policy):
            replay.decisions += 1
            on_decision(decision)
    Pipeline(admit, principal).run(inputs, replay.state, replay)
    return replay


def fold_lines(
    lines: Iterable[tuple[int, bytes]],
    policy: Policy | None,
    on_decision: DecisionSink,
    on_rejected: RejectedSink,
    source: str = "",
    state: State | None = None,
) -> Replay:
    """`replay_inputs` over numbered raw lines (origin `source:number`)."""
    return replay_inputs(numbered_inputs(source, lines), policy, on_decision, on_rejected, state)


def numbered_inputs(source: str, lines: Iterable[tuple[int, bytes]]) -> Iterator[Input]:
    """Each line as an input from `source`."""
    for number, line in lines:
        yield Input(source, number, line)


def file_lines(stream: BinaryIO, advance: Callable[[int], object] | None = None) -> Iterator[tuple[int, bytes]]:
    """(number, line) for each event line of a file; `advance` hears the bytes read now and then."""
    return iter_lines(stream) if advance is None else _reporting(iter_lines(stream), advance)


def _reporting(lines: Iterator[tuple[int, bytes]], advance: Callable[[int], object]) -> Iterator[tuple[int, bytes]]:
    done = 0
    for number, line in lines:
        done += len(line) + 1
        if number % PROGRESS_EVERY == 0:
            advance(done)
            done = 0
        yield number, line


@contextmanager
def progress_bar(
    name: str, size: int, show: bool, console: Console | None = None
) -> Iterator[Callable[[int], object] | None]:
    """A transient progress bar on stderr (never stdout, which may carry the decision log). Print other
    messages through the same `console` while it runs, so they appear above it."""
    if not show:
        yield None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True, console=console or Console(stderr=True)) as bar:
        task = bar.add_task(f"replaying {name}", total=size)
        yield lambda n: bar.advance(task, n)


def replay_file(
    path: Path,
    policy: Policy | None,
    on_decision: DecisionSink,
    on_rejected: RejectedSink,
    progress: bool | None = None,
    console: Console | None = None,
) -> Replay:
    """Fold a JSONL file; a progress bar on stderr when the file is large and stderr is a terminal."""
    size = path.stat().st_size
    show = sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES if progress is None else progress
    with open(path, "rb") as stream, progress_bar(path.name, size, show, console) as advance:
        return fold_lines(file_lines(stream, advance), policy, on_decision, on_rejected, source=path.name)


@contextmanager
def line_writer(target: Path | IO[str] | None, lazy: bool = False) -> Iterator[Callable[[str], object]]:
    """A sink for one record a line: to a file path (written to a temporary file, renamed at the end, so
    a reader never sees half a log), to a device path, to an open text stream, or nowhere (None).
    `lazy`: a file path is only created if a line is written (and a stale one from before is removed)."""
    if target is None:
        yield lambda line: None
        return
    if not isinstance(target, Path):
        yield lambda line: target.write(line + "\n")
        return
    if target.exists() and not target.is_file():  # a device or a pipe (/dev/null, /dev/stdout): write through
        with open(target, "w", encoding="utf-8") as device:
            yield lambda line: device.write(line + "\n")
        return
    temporary = target.with_name(f".{target.name}.tmp")
    out: IO[str] | None = None

    def write(line: str) -> None:
        nonlocal out
        if out is None:
            out = open(temporary, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        out.write(line + "\n")

    if not lazy:
        out = open(temporary, "w", encoding="utf-8")  # noqa: SIM115
    try:
        yield write
    except BaseException:
        if out is not None:  # a failed run leaves the previous file as it was, not half a log
            out.close()
            temporary.unlink(missing_ok=True)
        raise
    if out is not None:
        out.close()
        os.replace(temporary, target)
    else:
        target.unlink(missing_ok=True)
