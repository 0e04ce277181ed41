"""The `tiergate` command line."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from .codec import Kept
from .explain import ExplainError, decisions_for, explain
from .policy_file import PolicyFileError, read_policy
from .replay import file_lines, line_writer, progress_bar, replay_file
from .store import StoreError

err = Console(stderr=True, highlight=False)


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave (None = not given: leave it to the environment and the defaults)."""
    return {name: value for name, value in flags.items() if value is not None}


def _replay_kafka(args: argparse.Namespace, policy: Any) -> int:
    import asyncio

    from .kafka import KafkaSettings
    from .kafka_replay import replay_topic, verify

    flags = {"bootstrap": args.bootstrap, "topic_prefix": args.topic_prefix}
    kafka = KafkaSettings(**_given(flags))
    reference = asyncio.run(replay_topic(kafka, policy))
    with line_writer(Path(args.output) if args.output else sys.stdout) as write:
        for line in reference.lines():
            write(line)
    if args.tiers:
        with line_writer(Path(args.tiers)) as write:
            for line in reference.replay.tier_lines():
                write(line)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(reference.replay.results.items())) or "no events"
    err.print(
        f"replayed {kafka.topic('tiergate.events.v1')} from offset 0: {counts}; {reference.replay.decisions} decisions",
        soft_wrap=True,
    )
    if not args.verify:
        return 0
    differences = asyncio.run(verify(kafka, reference))
    for difference in differences:
        err.print(f"[red]{difference.action_type}[/]: {difference.problem}", soft_wrap=True)
    err.print(
        "verified: the decisions topic and the tier map equal the reference fold"
        if not differences
        else f"[red]{len(differences)} differences[/]"
    )
    return 1 if differences else 0


def _replay(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    if args.from_kafka:
        return _replay_kafka(args, policy)
    if args.verify or args.events is None:
        err.print("[red]error:[/] give EVENTS.jsonl, or --from-kafka (which --verify needs)")
        return 2
    events = Path(args.events)
    if not events.is_file():
        err.print(f"[red]error:[/] {events}: no such file; give a JSONL event history (one JSON object a line)")
        return 2
    gc.freeze()  # what exists now lives all run long: keep the collector from rescanning it per batch
    rejects = Path(args.rejects) if args.rejects else events.with_name(events.name + ".rejects.jsonl")
    shown = 0

    def keep(kept: Kept) -> None:
        nonlocal shown
        shown += 1
        if shown <= args.show_rejects:
            err.print(f"  {kept.origin}: {kept.result}: {kept.reason}", soft_wrap=True)
        write_kept(kept.to_json().decode())

    with (
        line_writer(Path(args.output) if args.output else sys.stdout) as write_decision,
        line_writer(rejects, lazy=True) as write_kept,
    ):
        result = replay_file(
            events,
            policy,
            lambda d: write_decision(d.to_json()),
            keep,
            progress=args.progress,
            console=err,
        )
    if args.tiers:
        with line_writer(Path(args.tiers)) as write_tier:
            for line in result.tier_lines():
                write_tier(line)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(result.results.items())) or "no events"
    err.print(f"replayed {events}: {counts}; {result.decisions} decisions", soft_wrap=True)
    if result.kept:
        more = result.kept - args.show_rejects
        err.print(
            f"{result.kept} events set aside (rejected or late){f', {more} more not shown' if more > 0 else ''}"
            f"; kept in {rejects}",
            soft_wrap=True,
        )
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


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .clock import SystemClock
    from .embedded import Evaluator
    from .http import make_app
    from .settings import ServeSettings

    settings = ServeSettings.load(
        args.config, policy=args.policy, data_dir=args.data_dir, host=args.host, port=args.port, token=args.token
    )
    settings.check_exposure()
    policy = read_policy(settings.policy)
    evaluator = Evaluator(policy, settings.data_dir, SystemClock(), settings.max_skew)
    try:
        err.print(
            f"tiergate serve: policy {policy.version} ({len(policy.catalog)} action types), "
            f"data in {settings.data_dir}, http://{settings.host}:{settings.port}/v1/tiers",
            soft_wrap=True,
        )
        web.run_app(
            make_app(evaluator, settings),
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            handle_signals=True,
        )
    finally:
        evaluator.close()
    return 0


def _import(args: argparse.Namespace) -> int:
    from .clock import SystemClock
    from .embedded import Evaluator

    policy = read_policy(args.policy)
    source = Path(args.events)
    evaluator = Evaluator(policy, Path(args.data_dir), SystemClock())
    counts: dict[str, int] = {}
    try:
        with (
            open(source, "rb") as stream,
            progress_bar(source.name, source.stat().st_size, sys.stderr.isatty(), err) as advance,
        ):
            batch: list[bytes] = []
            for _, line in file_lines(stream, advance):
                batch.append(line)
                if len(batch) >= args.batch:
                    _tally(evaluator.ingest(batch, f"import:{source.name}", live=False).results, counts)
                    batch = []
            if batch:
                _tally(evaluator.ingest(batch, f"import:{source.name}", live=False).results, counts)
    finally:
        evaluator.close()
    err.print(f"imported {source} into {args.data_dir}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def _tally(results: list[Any], counts: dict[str, int]) -> None:
    for result in results:
        counts[result.result] = counts.get(result.result, 0) + 1


def _export(args: argparse.Namespace) -> int:
    from .embedded import DB_NAME
    from .store import Store

    path = Path(args.data_dir) / DB_NAME
    if not path.exists():
        err.print(f"[red]error:[/] {path}: no store here; give the --data-dir of a tiergate serve")
        return 2
    store = Store(path)
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


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from .demo import run_demo, summary

    console = Console(highlight=False)
    console.print(
        f"[bold]tiergate demo[/]: {args.days} days of a simulated support fleet, in about {args.seconds:.0f}s."
    )
    result = asyncio.run(run_demo(Path(args.data_dir), args.days, args.seconds, console, seed=args.seed))
    console.print(summary(result))
    return 0 if result.replay_matches else 1


def _topics(args: argparse.Namespace) -> int:
    import asyncio

    from .kafka import KafkaSettings, create_topics, describe_topics

    flags = {"bootstrap": args.bootstrap, "topics_file": args.definition, "topic_prefix": args.topic_prefix}
    settings = KafkaSettings(**_given(flags))
    if args.action == "create":
        created = asyncio.run(create_topics(settings, args.replication_factor))
        err.print(f"created {', '.join(created)}" if created else "every defined topic exists already")
    report, problems = asyncio.run(describe_topics(settings))
    print(json.dumps(report, indent=2, sort_keys=True))
    for problem in problems:
        err.print(f"[red]{problem.topic}[/]: {problem.problem}")
    return 1 if problems else 0


def _worker(args: argparse.Namespace) -> int:
    import faust

    from .kafka import KafkaSettings
    from .worker import Worker, WorkerSettings

    flags = {"bootstrap": args.bootstrap, "topic_prefix": args.topic_prefix}
    kafka = KafkaSettings(**_given(flags))
    flags = {"policy": args.policy, "web_port": args.web_port, "data_dir": args.data_dir}
    settings = WorkerSettings(**_given(flags))
    worker = Worker(read_policy(settings.policy), settings, kafka)
    faust.Worker(worker.app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import render, timelines

    policy = read_policy(args.policy)
    with open(args.events, "rb") as stream:
        lines = timelines((line for _, line in file_lines(stream)), policy)
    if args.types:
        lines = {name: line for name, line in lines.items() if name in args.types.split(",")}
    render(lines, Path(args.output), f"{Path(args.events).name} under policy {policy.version}")
    err.print(f"wrote {args.output}: {', '.join(sorted(lines))}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tiergate", description="Progressive autonomy for AI agents, earned per action type."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="fold a JSONL event history into the decision log")
    replay.add_argument("events", metavar="EVENTS.jsonl", nargs="?")
    replay.add_argument("--from-kafka", action="store_true", help="fold tiergate.events.v1 from offset 0 instead")
    replay.add_argument(
        "--verify",
        action="store_true",
        help="with --from-kafka: compare with the decisions topic and tier map; exit 1 on a difference",
    )
    replay.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP)")
    replay.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    replay.add_argument("--policy", required=True, metavar="POLICY.yaml")
    replay.add_argument("-o", "--output", metavar="FILE", help="decision log (canonical JSONL); default stdout")
    replay.add_argument("--tiers", metavar="FILE", help="also write the final tier map (JSONL)")
    replay.add_argument(
        "--rejects", metavar="FILE", help="where rejected and late events are kept (default EVENTS.jsonl.rejects.jsonl)"
    )
    replay.add_argument("--show-rejects", type=int, default=10, metavar="N", help="print the first N set-aside events")
    replay.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: for large files on a terminal)",
    )
    replay.set_defaults(run=_replay)

    plot = commands.add_parser("plot", help="each type's bars, samples and tier over time as a PNG (plot extra)")
    plot.add_argument("events", metavar="EVENTS.jsonl")
    plot.add_argument("--policy", required=True, metavar="POLICY.yaml")
    plot.add_argument("-o", "--output", default="tiers.png", metavar="FILE.png")
    plot.add_argument("--types", help="comma-separated action types (default: every evaluated type)")
    plot.set_defaults(run=_plot)

    check = commands.add_parser("check-policy", help="validate a policy; print its normalised form and sha256")
    check.add_argument("policy", metavar="POLICY.yaml")
    check.set_defaults(run=_check_policy)

    why = commands.add_parser("explain", help="an action type's tier, since when, and the evidence behind it")
    why.add_argument("action_type", metavar="ACTION_TYPE")
    why.add_argument("--log", required=True, metavar="DECISIONS.jsonl", help="a decision log (replay's output)")
    why.set_defaults(run=_explain)
    work = commands.add_parser("worker", help="the Kafka runtime: a faust-streaming worker")
    work.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_WORKER_POLICY)")
    work.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    work.add_argument("--web-port", type=int, help="loopback port of /metrics and /healthz (default 6066)")
    work.add_argument("--data-dir", metavar="DIR", help="faust's data directory (default ./tiergate-worker-data)")
    work.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    work.add_argument("--loglevel", default="warn", choices=("crit", "error", "warn", "info", "debug"))
    work.set_defaults(run=_worker)

    topics = commands.add_parser("topics", help="create or check the Kafka topics of deploy/topics.yaml")
    topics.add_argument("action", choices=("create", "describe"))
    topics.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    topics.add_argument("--definition", type=Path, help="topic definition (default deploy/topics.yaml)")
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    topics.set_defaults(run=_topics)

    demo = commands.add_parser("demo", help="watch a simulated fleet earn autonomy on a live embedded server")
    demo.add_argument("--data-dir", default="tiergate-demo", metavar="DIR", help="replaced on each run")
    demo.add_argument("--days", type=int, default=30, help="simulated days of event time")
    demo.add_argument("--seconds", type=float, default=30.0, help="wall-clock time to spread them over")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)

    serve = commands.add_parser("serve", help="the embedded runtime: HTTP API over a SQLite store")
    serve.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY)")
    serve.add_argument("--data-dir", metavar="DIR", help="(or TIERGATE_DATA_DIR; default ./tiergate-data)")
    serve.add_argument("--host", help="(or TIERGATE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="(or TIERGATE_PORT; default 8360)")
    serve.add_argument("--token", help="bearer token for writes (or TIERGATE_TOKEN)")
    serve.add_argument("--config", type=Path, metavar="FILE.toml", help="settings file (lowest precedence)")
    serve.set_defaults(run=_serve)

    load = commands.add_parser("import", help="append an older history to a data directory, without clock ticks")
    load.add_argument("events", metavar="EVENTS.jsonl")
    load.add_argument("--policy", required=True, metavar="POLICY.yaml")
    load.add_argument("--data-dir", default="tiergate-data", metavar="DIR")
    load.add_argument("--batch", type=int, default=5000, help="events per transaction")
    load.set_defaults(run=_import)

    export = commands.add_parser("export", help="write a data directory's event log as JSONL (replay input)")
    export.add_argument("--data-dir", default="tiergate-data", metavar="DIR")
    export.add_argument("-o", "--output", metavar="FILE", help="default stdout")
    export.add_argument("--decisions", metavar="FILE", help="also write the stored decision log")
    export.set_defaults(run=_export)

    from . import oc

    oc.add_command(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PolicyFileError as error:
        err.print(f"[red]invalid policy[/]\n{error}", soft_wrap=True)
        return 2
    except (StoreError, ValidationError, ValueError) as error:
        err.print(f"[red]error:[/] {error}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
