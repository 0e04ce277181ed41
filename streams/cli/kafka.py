"""The Kafka runtime's commands: `worker`, `topics`, and `replay --from-kafka`.

Each first checks, in one short round trip, what a user gets wrong most: the topic definition cannot be
read, the connection settings are incomplete, the broker cannot be reached, or the topics were never
created. Those are one-line errors with the fix, not a traceback from deep inside a client library.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from tiergate.models.policy import Policy

from ..policy_file import read_policy
from ..settings import load
from .terminal import CommandError, err, examples, input_file, print_json

if TYPE_CHECKING:
    from ..kafka import KafkaSettings

CONNECT_TIMEOUT_MS = 10_000


def kafka_settings(args: argparse.Namespace, **extra: Any) -> KafkaSettings:
    from ..kafka import KafkaSettings

    return load(KafkaSettings, bootstrap=args.bootstrap, topic_prefix=args.topic_prefix, **extra)


async def _existing_topics(settings: KafkaSettings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    try:
        kwargs = settings.client_kwargs()
    except ValueError as error:  # incomplete SASL settings: the message names the variables
        raise CommandError(str(error)) from None
    admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=CONNECT_TIMEOUT_MS)
    client_log = logging.getLogger("aiokafka")
    level, client_log.level = client_log.level, logging.CRITICAL  # the error below says it once, plainly
    try:
        await admin.start()
        return set(await admin.list_topics())
    except KafkaError as error:
        raise CommandError(
            f"cannot reach the Kafka broker at {settings.bootstrap} ({type(error).__name__}): is it running? "
            "(a local one, in a clone of tiergate: deploy/kafka/broker.sh start), or give --bootstrap / "
            "TIERGATE_KAFKA_BOOTSTRAP"
        ) from None
    finally:
        await admin.close()
        client_log.setLevel(level)


def preflight(settings: KafkaSettings, needed: tuple[str, ...] = ()) -> None:
    """The topic definition reads, the broker answers, and the `needed` topics exist — or a CommandError."""
    from ..kafka import read_topics

    try:
        read_topics(settings.topics_file)
    except ValueError as error:  # the definition cannot be read: the message says where it looked
        raise CommandError(str(error)) from None
    existing = asyncio.run(_existing_topics(settings))
    missing = [settings.topic(name) for name in needed if settings.topic(name) not in existing]
    if missing:
        raise CommandError(
            f"topic {', '.join(missing)} does not exist on {settings.bootstrap}: run `tiergate topics create`"
        )


def replay_from_kafka(args: argparse.Namespace, policy: Policy | None) -> int:
    from ..kafka import DECISIONS, EVENTS, TIER_MAP
    from ..kafka_replay import replay_topic, verify, verify_state
    from ..replay import line_writer

    kafka = kafka_settings(args)
    preflight(kafka, (EVENTS, DECISIONS, TIER_MAP) if args.verify else (EVENTS,))
    reference = asyncio.run(replay_topic(kafka, policy))
    with line_writer(Path(args.output) if args.output else sys.stdout) as write:
        for line in reference.lines():
            write(line)
    if args.tiers:
        with line_writer(Path(args.tiers)) as write:
            for line in reference.replay.tier_lines():
                write(line)
    counts = ", ".join(f"{n} {name}" for name, n in sorted(reference.replay.results.items())) or "no events"
    err.print(f"replayed {kafka.topic(EVENTS)} from offset 0: {counts}; {reference.replay.decisions} decisions")
    if not args.verify:
        return 0
    found = asyncio.run(verify(kafka, reference)) + asyncio.run(verify_state(kafka, reference))
    differences = [d for d in found if not d.pending]
    for difference in found:
        colour = "yellow" if difference.pending else "red"
        err.print(f"[{colour}]{escape(difference.action_type)}[/]: {escape(difference.problem)}")
    err.print(
        "verified: the decisions topic, the tier map and the workers' saved state equal the reference fold"
        + (" (as far as the workers' last snapshots reach)" if len(found) > len(differences) else "")
        if not differences
        else f"[red]{len(differences)} differences[/]"
    )
    return 1 if differences else 0


def _topics(args: argparse.Namespace) -> int:
    from ..kafka import create_topics, describe_topics

    settings = kafka_settings(args, **({"topics_file": args.definition} if args.definition else {}))
    preflight(settings)
    overrides = dict(_config_override(item) for item in args.config)
    if args.action == "create":
        try:
            created = asyncio.run(create_topics(settings, args.replication_factor, overrides))
        except ValueError as error:  # the cluster refused: its message says why
            raise CommandError(str(error)) from None
        err.print(f"created {', '.join(created)}" if created else "every defined topic exists already")
    report, problems = asyncio.run(describe_topics(settings, overrides))
    print_json(report)
    for problem in problems:
        err.print(f"[red]{escape(problem.topic)}[/]: {escape(problem.problem)}")
    return 1 if problems else 0


def _config_override(item: str) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name:
        raise CommandError(f"--config {item!r}: give NAME=VALUE, e.g. --config min.insync.replicas=1")
    return name, value


def _worker(args: argparse.Namespace) -> int:
    from ..kafka import ACTIONS, EVENTS, OUTCOMES, state_changelog
    from ..worker import WorkerSettings, run_worker
    from .serve import listening_socket

    kafka = kafka_settings(args)
    flags = {"policy": args.policy, "web_port": args.web_port, "ticks": args.ticks}
    settings = load(WorkerSettings, **flags)
    policy = None if settings.policy is None else read_policy(settings.policy)
    ingress = (ACTIONS, OUTCOMES) if settings.forward else ()
    preflight(kafka, (EVENTS, state_changelog(settings.app_id), *ingress))
    listening_socket(settings.web_host, settings.web_port).close()  # a busy port: one line, before joining the group
    run_worker(policy, settings, kafka, args.loglevel)
    return 0


def _backfill(args: argparse.Namespace) -> int:
    """Produce a JSONL history to the events topic, all or nothing: every line must decode first."""
    from ..codec import EventError, decode
    from ..kafka import EVENTS, produce_history
    from ..replay import file_lines

    source = input_file(args.events, "a JSONL event history")
    events, problems = [], []
    with open(source, "rb") as stream:
        for number, line in file_lines(stream):
            try:
                events.append((decode(line).action_type, line))
            except EventError as error:
                problems.append(f"{source}:{number}: {error.reason}")
    if problems:
        for problem in problems[:20]:
            err.print(f"[red]{escape(problem)}[/]")
        raise CommandError(f"{len(problems)} lines do not decode; nothing was produced: fix or remove them")
    kafka = kafka_settings(args)
    preflight(kafka, (EVENTS,))
    produced = asyncio.run(produce_history(kafka, events))
    err.print(
        f"produced {produced} events to {kafka.topic(EVENTS)}; once the workers have folded them, start them "
        "with ticks (without --no-ticks)"
    )
    return 0


def add_commands(commands: Any) -> None:
    work = commands.add_parser(
        "worker",
        help="the Kafka runtime: a consumer group member that folds the input topic",
        description="Fold tiergate.events.v1 into decisions and the compacted tier map, with each action "
        "type's state snapshotted to a compacted changelog. Needs the kafka extra and the topics "
        "(tiergate topics create).",
        **examples(
            "tiergate worker   # the policy lives in the log: tiergate policy apply --kafka",
            "TIERGATE_KAFKA_BOOTSTRAP=broker1:9092 tiergate worker --web-port 6067",
            "tiergate worker --no-ticks   # while `tiergate backfill` produces a history",
        ),
    )
    work.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_WORKER_POLICY)")
    work.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    work.add_argument("--web-port", type=int, help="loopback port of /metrics and /healthz (default 6066)")
    work.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    work.add_argument(
        "--ticks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tick on the clock (default; or TIERGATE_WORKER_TICKS); --no-ticks while a history is backfilled "
        "through the topic, so its events are not late",
    )
    work.add_argument("--loglevel", default="warn", choices=("crit", "error", "warn", "info", "debug"))
    work.set_defaults(run=_worker)

    backfill = commands.add_parser(
        "backfill",
        help="produce a JSONL history to the Kafka events topic (run the workers with --no-ticks meanwhile)",
        **examples(
            "tiergate worker --no-ticks &   # no clock ticks while the history goes in",
            "tiergate backfill history.jsonl",
        ),
    )
    backfill.add_argument("events", metavar="EVENTS.jsonl")
    backfill.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    backfill.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    backfill.set_defaults(run=_backfill)

    topics = commands.add_parser(
        "topics",
        help="create or check the Kafka topics of the topic definition",
        description="Create the defined topics that do not exist yet, or compare the cluster with the "
        "definition. The report goes to stdout as JSON; differences to stderr (exit 1).",
        **examples(
            "tiergate topics create --bootstrap broker1:9092   # 3 replicas, min.insync.replicas 2",
            "tiergate topics create --replication-factor 1 --config min.insync.replicas=1   # one broker",
            "tiergate topics describe | jq .",
        ),
    )
    topics.add_argument("action", choices=("create", "describe"))
    topics.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    topics.add_argument("--definition", type=Path, help="topic definition (or TIERGATE_KAFKA_TOPICS_FILE)")
    topics.add_argument(
        "--replication-factor", type=int, default=3, help="of each topic created (default 3; 1 on a single broker)"
    )
    topics.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a config of every defined topic (repeatable), e.g. min.insync.replicas=1 on a single broker",
    )
    topics.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    topics.set_defaults(run=_topics)
