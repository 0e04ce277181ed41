"""The Kafka runtime's commands: `worker`, `topics`, and `replay --from-kafka`.

Each first checks, in one short round trip, what a user gets wrong most: the topic definition cannot be
read, the connection settings are incomplete, the broker cannot be reached, or the topics were never
created. Those are one-line errors with the fix, not a traceback from deep inside a client library.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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


GENESIS_KEYS_FIX = (
    "set TIERGATE_KAFKA_GENESIS_KEYS to the deployment's genesis keys file (a YAML list of {key_id, public_key, "
    "actor}, as `tiergate keys new` prints), the one the workers are given"
)


def genesis_keys(settings: KafkaSettings) -> tuple[dict[str, str], ...] | None:
    """The genesis keys TIERGATE_KAFKA_GENESIS_KEYS names (None when it is not set), or a CommandError that
    names the file and what is wrong with it."""
    if settings.genesis_keys is None:
        return None
    from ..signing import OperatorKeyError, read_trusted

    try:
        return read_trusted(settings.genesis_keys)
    except OperatorKeyError as error:
        raise CommandError(f"TIERGATE_KAFKA_GENESIS_KEYS: {error}") from None


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


def preflight(settings: KafkaSettings, needed: tuple[str, ...] = (), create: str = "tiergate topics create") -> None:
    """The topic definition reads, the broker answers, and the `needed` topics exist — or a CommandError
    (`create`: the command that would create them)."""
    from ..kafka import read_topics

    try:
        read_topics(settings.topics_file)
    except ValueError as error:  # the definition cannot be read: the message says where it looked
        raise CommandError(str(error)) from None
    existing = asyncio.run(_existing_topics(settings))
    missing = [settings.topic(name) for name in needed if settings.topic(name) not in existing]
    if missing:
        raise CommandError(f"topic {', '.join(missing)} does not exist on {settings.bootstrap}: run `{create}`")


def replay_from_kafka(args: argparse.Namespace, policy: Policy | None) -> int:
    """Fold the events topic from offset 0 as the workers do (their admission, the genesis keys included),
    with file replay's outputs: decisions, --tiers, --rejects and the first --show-rejects, the summary."""
    from ..kafka import DECISIONS, EVENTS, TIER_MAP, state_changelog
    from ..kafka_replay import read_topic, replay_records, verify, verify_state
    from ..replay import line_writer
    from ..worker import WorkerSettings
    from .history import is_policy_event, replay_summary, shown_rejected

    kafka = kafka_settings(args)
    genesis = genesis_keys(kafka)
    app_id = load(WorkerSettings).app_id  # whose saved state --verify checks: TIERGATE_WORKER_APP_ID's
    preflight(kafka, (EVENTS, DECISIONS, TIER_MAP, state_changelog(app_id)) if args.verify else (EVENTS,))
    records = asyncio.run(read_topic(kafka, EVENTS))
    if genesis is None and any(is_policy_event(record.value or b"") for record in records):
        raise CommandError(
            f"{kafka.topic(EVENTS)} holds policy activations, which are checked against the genesis keys, and "
            f"TIERGATE_KAFKA_GENESIS_KEYS is not set (every activation would be refused): {GENESIS_KEYS_FIX}"
        )
    reference = replay_records(kafka, policy, records)
    with line_writer(Path(args.output) if args.output else sys.stdout) as write:
        for line in reference.lines():
            write(line)
    if args.tiers:
        with line_writer(Path(args.tiers)) as write:
            for line in reference.replay.tier_lines():
                write(line)
    rejects = Path(args.rejects) if args.rejects else None
    with line_writer(rejects, lazy=True) as write:
        for number, rejected in enumerate(reference.rejected):
            if number < args.show_rejects:
                err.print(shown_rejected(rejected))
            write(rejected.to_json().decode())
    replay_summary(reference.replay, f"{kafka.topic(EVENTS)} from offset 0", rejects, args.show_rejects)
    if not args.verify:
        return 0
    found = asyncio.run(verify(kafka, reference)) + asyncio.run(verify_state(kafka, reference, app_id))
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
    from ..worker import WorkerSettings

    settings = kafka_settings(args, **({"topics_file": args.definition} if args.definition else {}))
    app_id = load(WorkerSettings, app_id=args.app_id).app_id
    preflight(settings)
    overrides = dict(_config_override(item) for item in args.config)
    if args.action == "create":
        try:
            created = asyncio.run(create_topics(settings, args.replication_factor, overrides, app_id))
        except ValueError as error:  # the cluster refused: its message says why
            raise CommandError(str(error)) from None
        err.print(f"created {', '.join(created)}" if created else "every defined topic exists already")
    report, found = asyncio.run(describe_topics(settings, overrides, app_id))
    print_json(report)
    problems = [check for check in found if not check.warning]
    for problem in problems:
        err.print(f"[red]{escape(problem.topic)}[/]: {escape(problem.problem)}")
    warnings: dict[str, list[str]] = {}
    for check in found:
        if check.warning:
            warnings.setdefault(check.problem, []).append(check.topic)
    for warning, topics in warnings.items():
        err.print(f"[yellow]warning:[/] {len(topics)} topics: {escape(warning)}")
    return 1 if problems else 0


def _config_override(item: str) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name:
        raise CommandError(f"--config {item!r}: give NAME=VALUE, e.g. --config min.insync.replicas=1")
    return name, value


def _worker(args: argparse.Namespace) -> int:
    from ..kafka import ACTIONS, EVENTS, OUTCOMES, create_command, state_changelog
    from ..worker import WorkerSettings, run_worker
    from .serve import Listener, listening_socket

    kafka = kafka_settings(args)
    flags = {"policy": args.policy, "web_port": args.web_port, "ticks": args.ticks}
    settings = load(WorkerSettings, **flags)
    policy = None if settings.policy is None else read_policy(settings.policy)
    genesis_keys(kafka)  # a file that cannot be used: one line now, not a traceback from the running worker
    web = Listener("tiergate worker", "--web-port (or TIERGATE_WORKER_WEB_PORT)", "TIERGATE_WORKER_WEB_HOST")
    listening_socket(settings.web_host, settings.web_port, web).close()  # a busy port: one line, before joining
    ingress = (ACTIONS, OUTCOMES) if settings.forward else ()
    create = create_command(settings.app_id)
    preflight(kafka, (EVENTS, state_changelog(settings.app_id), *ingress), create)
    run_worker(policy, settings, kafka, args.loglevel)
    return 0


def _backfill(args: argparse.Namespace) -> int:
    """Produce a JSONL history to the events topic, all or nothing: every line must decode first, and its
    policy events must be signed — by --key, or already — or the workers reject them (and with them their
    types' later events)."""
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
    events = _signed_operator_events(events, source, args.key, kafka.deployment)
    preflight(kafka, (EVENTS,))
    produced = asyncio.run(produce_history(kafka, events))
    err.print(
        f"produced {produced} events to {kafka.topic(EVENTS)}; once the workers have folded them, start them "
        "with ticks (without --no-ticks)"
    )
    return 0


SIGN_WITH = (
    "sign them as they are produced with --key OPERATOR.key (or TIERGATE_OPERATOR_KEY_FILE), a key the genesis "
    "keys trust for first activations and each activation's operators for what follows"
)


def _signed_operator_events(
    events: list[tuple[str, bytes]], source: Path, key_file: str | None, deployment: str
) -> list[tuple[str, bytes]]:
    """The history with each unsigned operator event (policy, override) signed by the operator's key (--key,
    else TIERGATE_OPERATOR_KEY_FILE). Without a key, unsigned policy events are a CommandError (the workers
    would reject them, and then every later event of their types); unsigned overrides only a warning (the
    workers reject them alone)."""
    import orjson

    from .keys import operator_key

    unsigned = {i: kind for i, (_, raw) in enumerate(events) if (kind := _unsigned_operator_event(raw))}
    if not unsigned:
        return events
    policies, overrides = sum(k == "policy" for k in unsigned.values()), sum(k == "override" for k in unsigned.values())
    if key_file is None and not os.environ.get("TIERGATE_OPERATOR_KEY_FILE"):
        if policies:
            raise CommandError(
                f"{source}: {policies} policy events (and {overrides} overrides) are unsigned: on Kafka the workers "
                f"reject them, and then every later event of their types; nothing was produced: {SIGN_WITH}"
            )
        err.print(
            f"[yellow]warning:[/] {escape(str(source))}: {overrides} overrides are unsigned: the workers reject them "
            f"(to the DLQ) and fold the rest; to count them, {SIGN_WITH}"
        )
        return events
    key = operator_key(key_file)
    signed = list(events)
    for i in unsigned:
        action_type, raw = events[i]
        signed[i] = (action_type, orjson.dumps(key.sign(orjson.loads(raw), deployment)))
    err.print(f"signed {policies} policy events and {overrides} overrides with key {key.key_id} for {deployment}")
    return signed


def _unsigned_operator_event(raw: bytes) -> str | None:
    """ "policy" or "override" for an operator event without a signature, else None."""
    from ..pipeline import named

    if not (b'"policy"' in raw or b'"override"' in raw):
        return None  # the common case, decided without decoding
    kind = named(raw, "type")  # None for input that is no JSON object: the workers set it aside with its reason
    return kind if kind in ("policy", "override") and named(raw, "sig") is None else None


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
            "tiergate backfill exported.jsonl --key ops-2026.key   # signs its policy and override events",
        ),
    )
    backfill.add_argument("events", metavar="EVENTS.jsonl")
    backfill.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    backfill.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    backfill.add_argument(
        "--key",
        metavar="FILE",
        help="operator key that signs the history's unsigned policy and override events (or "
        "TIERGATE_OPERATOR_KEY_FILE); without one, unsigned policy events are refused, as the workers would",
    )
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
            "tiergate topics create --app-id tiergate-worker-2   # for TIERGATE_WORKER_APP_ID=tiergate-worker-2",
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
    topics.add_argument(
        "--app-id",
        help="the workers' group, whose <app-id>-state-changelog is created and checked (or TIERGATE_WORKER_APP_ID; "
        "default tiergate-worker)",
    )
    topics.set_defaults(run=_topics)
