"""Commands over event histories: `replay` (fold a history), `import` and `export` (an embedded data dir)."""

from __future__ import annotations

import argparse
import gc
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.markup import escape

from tiergate.models.policy import Policy
from tiergate.models.wire import format_ts

from ..clock import Clock, SystemClock
from ..embedded import DB_NAME, EmbeddedRuntime
from ..pipeline import Rejected, named
from ..policy_file import read_policy
from ..replay import Replay, file_lines, fold_lines, line_writer, progress_bar, replay_file
from ..settings import StoreSettings, load
from ..store import Store, StoreError
from .terminal import CommandError, err, examples, input_file, print_json

HISTORY = "a JSONL event history (one JSON object a line)"


def policy_of(settings: StoreSettings) -> Policy:
    """The policy a command folds under: --policy, else TIERGATE_POLICY."""
    if settings.policy is None:
        raise CommandError("no policy: give --policy POLICY.yaml or set TIERGATE_POLICY")
    return read_policy(settings.policy)


def open_runtime(
    policy: Policy | None, data_dir: Path, clock: Clock, max_skew: int = 300, max_past: int = 86400
) -> EmbeddedRuntime:
    """The embedded runtime over `data_dir`, or a CommandError when the directory cannot be written."""
    try:
        return EmbeddedRuntime(policy, data_dir, clock, max_skew, max_past)
    except (OSError, sqlite3.OperationalError) as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise CommandError(
            f"{data_dir}: cannot use this data directory ({detail}); give a writable --data-dir (or TIERGATE_DATA_DIR)"
        ) from None


# -- replay ----------------------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    given = load(StoreSettings, policy=args.policy).policy
    policy = None if given is None else read_policy(given)
    if args.from_kafka:
        from .kafka import replay_from_kafka

        return replay_from_kafka(args, policy)
    if args.verify or args.events is None:
        raise CommandError("give EVENTS.jsonl (or - for stdin), or --from-kafka (which --verify needs)")
    gc.freeze()  # what exists now lives all run long: keep the collector from rescanning it per batch
    shown = 0

    def keep(rejected: Rejected) -> None:
        nonlocal shown
        shown += 1
        if shown <= args.show_rejects:
            err.print(shown_rejected(rejected))
        write_rejected(rejected.to_json().decode())

    rejects = Path(args.rejects) if args.rejects else None
    with (
        line_writer(Path(args.output) if args.output else sys.stdout) as write_decision,
        line_writer(rejects, lazy=True) as write_rejected,
    ):
        result, name = _fold_input(args, policy, lambda d: write_decision(d.to_json()), keep)
        if policy is None and not result.state.keys and any(result.results.values()):
            raise CommandError(
                f"{name} has no policy activation, so every event names an unknown action type: it is a log "
                "from before policies lived in the log; replay it with --policy POLICY.yaml (or TIERGATE_POLICY)"
            )
        if result.carries_its_policy:
            raise CommandError(
                f"{name} carries its own policy (every action type in it begins with an activation): "
                "replay it without --policy (or TIERGATE_POLICY)"
            )
    if args.tiers:
        with line_writer(Path(args.tiers)) as write_tier:
            for line in result.tier_lines():
                write_tier(line)
    replay_summary(result, name, rejects, args.show_rejects)
    return 0


def _fold_input(args: argparse.Namespace, policy: Policy | None, decide: Any, keep: Any) -> tuple[Replay, str]:
    if args.events == "-":
        return fold_lines(file_lines(sys.stdin.buffer), policy, decide, keep, source="stdin"), "stdin"
    events = input_file(args.events, HISTORY + ", or - for stdin")
    return replay_file(events, policy, decide, keep, progress=args.progress, console=err), str(events)


def shown_rejected(rejected: Rejected) -> str:
    """One set-aside event as replay prints it (the first --show-rejects of them)."""
    return f"  {escape(rejected.origin)}: {rejected.result}: {escape(rejected.reason)}"


def replay_summary(result: Replay, name: str, rejects: Path | None, show: int) -> None:
    """The counts of a replay, and where its set-aside events went (file and Kafka replay alike)."""
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(result.results.items())) or "no events"
    err.print(f"replayed {escape(name)}: {counts}; {result.decisions} decisions")
    if not result.rejected:
        return
    more = result.rejected - show
    where = f"kept in {rejects}" if rejects else "give --rejects FILE to keep them all"
    err.print(
        f"{result.rejected} events did not count (rejected or late)"
        f"{f', {more} more not shown' if more > 0 else ''}; {where}"
    )


# -- import ----------------------------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    """Append a history. A history that carries its policy (activations) goes only into an empty data
    dir: an activation in the middle of someone else's log would be applied by nobody who decided to. An
    old history is imported under --policy, which is activated first when it is not the policy in force."""
    settings = load(StoreSettings, policy=args.policy, data_dir=args.data_dir)
    source = input_file(args.events, HISTORY)  # before the store exists: a typo must not leave an empty one
    carries_policy = _has_activations(source)
    if settings.policy is None and not carries_policy:
        raise CommandError(f"{source} has no policy activation: give --policy POLICY.yaml (or TIERGATE_POLICY)")
    if settings.policy is not None and carries_policy:
        raise CommandError(
            f"{source} carries its own policy (activations), which decide its types: import it without --policy "
            "(or unset TIERGATE_POLICY); change the policy afterwards with `tiergate policy apply`"
        )
    policy = None if settings.policy is None else read_policy(settings.policy)
    runtime = open_runtime(None, settings.data_dir, SystemClock())
    try:
        if carries_policy and runtime.store.last_seq() > 0:
            raise CommandError(
                f"{source} carries policy activations and {settings.data_dir} already holds a log: import a history "
                "with its own policy only into an empty --data-dir; apply policies with `tiergate policy apply`"
            )
        if policy is not None:
            runtime.use_policy_file(policy, f"policy file {settings.policy}")
        closed_before = _last_close(runtime)
        counts = _import_lines(runtime, source, args.batch)
    finally:
        runtime.close()
    return _import_report(source, settings.data_dir, counts, closed_before, args.json)


def _has_activations(source: Path) -> bool:
    """Does the history hold any policy event?"""
    with open(source, "rb") as stream:
        return any(is_policy_event(line) for _, line in file_lines(stream))


def is_policy_event(line: bytes) -> bool:
    """Is this raw event a policy event? (A text scan first; a candidate line is parsed to be sure.)"""
    return b'"policy"' in line and named(line, "type") == "policy"


def _last_close(runtime: EmbeddedRuntime) -> int | None:
    """The end of the latest closed window of any action type in the data dir, or None."""
    ends = [key.next_close * key.rules.window for key in runtime.state.keys.values() if key.next_close]
    return max(ends, default=None)


def _batches(source: Path, size: int) -> Iterator[list[tuple[int, bytes]]]:
    """The file's event lines, `size` at a time, each with its 1-based line number (its origin)."""
    with open(source, "rb") as stream, progress_bar(source.name, source.stat().st_size, err.is_terminal, err) as step:
        batch: list[tuple[int, bytes]] = []
        for numbered in file_lines(stream, step):
            batch.append(numbered)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


def _import_lines(runtime: EmbeddedRuntime, source: Path, size: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for batch in _batches(source, size):
        numbers, lines = zip(*batch, strict=True)
        ingested = runtime.ingest(lines, f"import({source.name})", live=False, positions=numbers)
        counts.update(r.result for r in ingested.results)
    return counts


def _import_report(source: Path, data_dir: Path, counts: Counter[str], closed: int | None, as_json: bool) -> int:
    """Say what became of the history; warn, and fail, when most of it arrived after its windows closed."""
    total, late = sum(counts.values()), counts.get("late", 0)
    mostly_late = total > 0 and late * 2 > total
    if as_json:
        print_json({"source": str(source), "data_dir": str(data_dir), "events": total, **dict(sorted(counts.items()))})
    summary = ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items())) or "no events"
    err.print(f"imported {escape(str(source))} into {escape(str(data_dir))}: {summary}")
    if late and closed is not None:
        err.print(
            f"[yellow]warning:[/] {late:,} of {total:,} events ({late / total:.0%}) were late: this data dir had "
            f"already closed their windows (up to {format_ts(closed)}) with the events and the server's clock "
            "ticks it held before. A late event is kept but never counts as evidence. Import history before "
            "serving the data dir, or import it into a fresh --data-dir."
        )
    return 1 if mostly_late else 0


# -- export ----------------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    data_dir = load(StoreSettings, data_dir=args.data_dir).data_dir
    path = data_dir / DB_NAME
    if not path.is_file():
        raise CommandError(f"{path}: no store here; give the --data-dir (or TIERGATE_DATA_DIR) of a tiergate serve")
    try:
        store = Store(path, create=False)
    except (sqlite3.OperationalError, StoreError) as error:
        raise CommandError(
            f"{path}: cannot open the store ({error}); SQLite needs to write beside it (its WAL files) even to "
            "read: export from a writable copy of the data dir"
        ) from None
    try:
        with line_writer(Path(args.output) if args.output else sys.stdout) as write:
            for _, raw in store.events():
                write(raw.decode())
        if args.decisions:
            with line_writer(Path(args.decisions)) as write:
                for record in store.all_decisions():
                    write(record)
    finally:
        store.close()
    return 0


# -- the commands ----------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    _add_replay(commands)
    _add_import(commands)
    _add_export(commands)


def _add_replay(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="fold a JSONL event history into the decision log",
        description="Fold an event history under a policy: the decision log goes to stdout (or -o), the "
        "counts and the events set aside (rejected or late) to stderr.",
        **examples(
            "tiergate replay events.jsonl --policy policy.yaml -o decisions.jsonl --tiers tiers.jsonl",
            "tiergate export --data-dir tiergate-data | tiergate replay - --policy policy.yaml",
            "tiergate replay events.jsonl --policy policy.yaml --rejects rejects.jsonl > /dev/null",
            "tiergate replay --from-kafka --policy policy.yaml --verify",
        ),
    )
    replay.add_argument("events", metavar="EVENTS.jsonl", nargs="?", help="the history; - reads stdin")
    replay.add_argument("--from-kafka", action="store_true", help="fold tiergate.events.v1 from offset 0 instead")
    replay.add_argument(
        "--verify",
        action="store_true",
        help="with --from-kafka: compare with the decisions topic and tier map; exit 1 on a difference",
    )
    replay.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP)")
    replay.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    replay.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY)")
    replay.add_argument("-o", "--output", metavar="FILE", help="decision log (canonical JSONL); default stdout")
    replay.add_argument("--tiers", metavar="FILE", help="also write the final tier map (JSONL)")
    replay.add_argument(
        "--rejects",
        metavar="FILE",
        help="keep every rejected and late event here, with its reason (default: none written; the first "
        "--show-rejects are printed and the count is given)",
    )
    replay.add_argument("--show-rejects", type=int, default=10, metavar="N", help="print the first N set-aside events")
    replay.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: for large files on a terminal)",
    )
    replay.set_defaults(run=_replay)


def _add_import(commands: Any) -> None:
    load_history = commands.add_parser(
        "import",
        help="append an older history to a data directory, without clock ticks",
        description="Append a history (a backfill, another instance's export) to an embedded data directory, "
        "with no server running on it. Import before serving: once a server has run, its clock ticks have "
        "closed the windows of older events, which then arrive late (exit 1 when most of them do).",
        **examples(
            "tiergate import older.jsonl --policy policy.yaml --data-dir tiergate-data",
            "TIERGATE_DATA_DIR=/var/lib/tiergate TIERGATE_POLICY=policy.yaml tiergate import older.jsonl --json",
        ),
    )
    load_history.add_argument("events", metavar="EVENTS.jsonl")
    load_history.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY)")
    load_history.add_argument("--data-dir", metavar="DIR", help="(or TIERGATE_DATA_DIR; default ./tiergate-data)")
    load_history.add_argument("--batch", type=int, default=5000, help="events per transaction")
    load_history.add_argument("--json", action="store_true", help="print the counts as JSON on stdout")
    load_history.set_defaults(run=_import)


def _add_export(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a data directory's event log as JSONL (replay input)",
        description="Write the event log of an embedded data directory (ticks included) as JSONL.",
        **examples(
            "tiergate export --data-dir tiergate-data -o events.jsonl --decisions decisions.jsonl",
            "tiergate export | tiergate replay - --policy policy.yaml   # TIERGATE_DATA_DIR or ./tiergate-data",
        ),
    )
    export.add_argument("--data-dir", metavar="DIR", help="(or TIERGATE_DATA_DIR; default ./tiergate-data)")
    export.add_argument("-o", "--output", metavar="FILE", help="default stdout")
    export.add_argument("--decisions", metavar="FILE", help="also write the stored decision log")
    export.set_defaults(run=_export)
