"""Kafka connection settings and topic administration (`tiergate topics create|describe`).

The topics come from one definition, streams/topics.yaml (shipped with the package, so a worker runs from
any directory); nothing is auto-created. Connection settings cover a plain local broker and a secured
cluster (SASL/SCRAM over TLS) alike.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

EVENTS = "tiergate.events.v1"
ACTIONS = "tiergate.actions.v1"  # agents' actions, forwarded into EVENTS by the workers (streams/forwarder.py)
OUTCOMES = "tiergate.outcomes.v1"  # reporters' outcomes and checkpoints, forwarded likewise
POLICIES = "tiergate.policies.v1"
TIER_MAP = "tiergate.tier-map.v1"
DECISIONS = "tiergate.decisions.v1"
DLQ = "tiergate.events.v1.dlq"
WORKER_GROUP = "tiergate-worker"  # the workers' consumer group unless TIERGATE_WORKER_APP_ID names another
STATE_CHANGELOG = f"{WORKER_GROUP}-state-changelog"  # their snapshots of each key's state (streams/changelog.py)
DEFAULT_TOPICS_FILE = Path(__file__).with_name("topics.yaml")  # shipped with the package
SINGLE_BROKER = {"min.insync.replicas": "1"}  # what a one-broker development cluster overrides of the definition


class KafkaSettings(BaseSettings):
    """How to reach the cluster: TIERGATE_KAFKA_* variables (or flags)."""

    # an empty variable is unset (TIERGATE_KAFKA_GENESIS_KEYS= named the current directory)
    model_config = SettingsConfigDict(env_prefix="TIERGATE_KAFKA_", extra="ignore", env_ignore_empty=True)

    bootstrap: str = Field("127.0.0.1:19092", description="host:port[,host:port…]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates")
    ssl_check_hostname: bool = True
    client_id: str = "tiergate"
    topics_file: Path = Field(DEFAULT_TOPICS_FILE, description="the topic definition")
    deployment: str = Field(
        "tiergate", description="the name operators sign for: a signed event of another deployment does not count"
    )
    genesis_keys: Path | None = Field(
        None,
        description="operator keys trusted before a type's first activation (YAML list: key_id, public_key, actor)",
    )
    topic_prefix: str = Field(
        "",
        description="prefixed to every topic and the worker's app id (test isolation, "
        "several deployments on one cluster)",
    )

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        context.check_hostname = self.ssl_check_hostname
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "SASL needs sasl_mechanism, sasl_username and sasl_password "
                    "(TIERGATE_KAFKA_SASL_MECHANISM, …_USERNAME, …_PASSWORD)"
                )
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs


class BrokerLog(logging.Filter):
    """The Kafka client's connection errors while a broker is unreachable, as state changes: one warning
    when it becomes unreachable, a summary at growing intervals (10 s, 20 s, … at most 5 min), one line
    when no connection error was seen for `quiet_for` seconds — instead of a line per retry (dozens a
    second). Attach it to the log handlers; call `check()` every second or so."""

    SIGNS = (  # the client's messages for "cannot reach the broker"
        "Unable connect to node",
        "Unable to update metadata",
        "NodeNotReadyError",
        "GroupCoordinatorNotAvailable",
        "Connect call failed",
        "KafkaConnectionError",
        "Heartbeat session expired",
    )
    FIRST_SUMMARY, LONGEST = 10.0, 300.0

    def __init__(self, clock: Callable[[], float] = time.monotonic, quiet_for: float = 10.0) -> None:
        super().__init__()
        self.clock, self.quiet_for = clock, quiet_for
        self.since: float | None = None  # when the broker became unreachable
        self.errors, self.last_error, self.next_summary, self.interval = 0, 0.0, 0.0, self.FIRST_SUMMARY

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not any(sign in record.getMessage() for sign in self.SIGNS):
            return True
        now = self.clock()
        self.errors, self.last_error = self.errors + 1, now
        if self.since is None:
            self.since, self.errors, self.interval = now, 1, self.FIRST_SUMMARY
            self.next_summary = now + self.interval
            _rewrite(record, "Kafka broker unreachable (%s); retrying, further connection errors are summarised")
            return True
        if now < self.next_summary:
            return False
        summary = "Kafka broker still unreachable after %.0f s (%d connection errors)"
        _rewrite(record, summary, now - self.since, self.errors)
        self.interval = min(2 * self.interval, self.LONGEST)
        self.next_summary = now + self.interval
        return True

    def check(self) -> str | None:
        """The line to log when the broker looks reachable again (no connection error for a while)."""
        if self.since is None or self.clock() - self.last_error < self.quiet_for:
            return None
        line = (
            f"Kafka broker reachable again: no connection error for {self.quiet_for:.0f} s "
            f"(unreachable for {self.last_error - self.since:.0f} s, {self.errors} connection errors)"
        )
        self.since = None
        return line


def _rewrite(record: logging.LogRecord, message: str, *args: object) -> None:
    """Turn a client's record into one of BrokerLog's warnings (the first one quotes the client)."""
    record.args = args or (record.getMessage(),)
    record.msg, record.levelno, record.levelname = message, logging.WARNING, "WARNING"


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partitions: int = Field(gt=0)
    config: dict[str, str] = Field(default_factory=dict)


class TopicsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topics: dict[str, TopicSpec]


def state_changelog(app_id: str) -> str:
    """The state changelog of the workers of consumer group `app_id` (tiergate-worker: STATE_CHANGELOG)."""
    return f"{app_id}-state-changelog"


def for_workers(topics: Mapping[str, TopicSpec], app_id: str) -> dict[str, TopicSpec]:
    """The definition with the state changelog named for the workers' group `app_id`
    (`<app_id>-state-changelog`; the definition names tiergate-worker's)."""
    return {state_changelog(app_id) if name == STATE_CHANGELOG else name: spec for name, spec in topics.items()}


def home_partition(key: bytes, partitions: int) -> int:
    """The partition the default partitioner (every Kafka client's, murmur2) gives a message key: where an
    action type's input, and the worker's changelog record of its state, live."""
    from aiokafka.partitioner import DefaultPartitioner

    return int(DefaultPartitioner()(key, list(range(partitions)), None))


def read_topics(path: Path, overrides: Mapping[str, str] | None = None) -> dict[str, TopicSpec]:
    """The topic definition, with `overrides` replacing (or adding) a config of every topic: a single
    development broker needs `min.insync.replicas=1`, a compaction test a short `segment.ms`."""
    try:
        topics = TopicsFile.model_validate(yaml.safe_load(path.read_text())).topics
    except OSError as error:
        raise ValueError(
            f"{path}: cannot read the topic definition ({error.strerror}); "
            "name a readable one with --definition or TIERGATE_KAFKA_TOPICS_FILE, or leave both unset for the "
            "definition that ships with tiergate"
        ) from None
    if not overrides:
        return topics
    return {name: TopicSpec(partitions=t.partitions, config=t.config | dict(overrides)) for name, t in topics.items()}


def check_replication(topics: Mapping[str, TopicSpec], replication: int) -> None:
    """A topic whose `min.insync.replicas` exceeds its replication factor refuses every acks=all write."""
    for name, spec in topics.items():
        needed = int(spec.config.get("min.insync.replicas", "1"))
        if needed > replication:
            raise ValueError(
                f"{name}: min.insync.replicas={needed} needs a replication factor of at least {needed}, not "
                f"{replication}: give --replication-factor 3 on a production cluster, or "
                "--config min.insync.replicas=1 on a single development broker"
            )


@dataclass(frozen=True, slots=True)
class TopicCheck:
    """A difference between the cluster and the definition: a missing topic, partitions or a config."""

    topic: str
    problem: str
    warning: bool = False  # worth saying, not a difference: the exit status stays 0


async def create_topics(
    settings: KafkaSettings,
    replication: int = 3,
    overrides: Mapping[str, str] | None = None,
    app_id: str = WORKER_GROUP,
) -> list[str]:
    """Create every defined topic that does not exist yet (the state changelog of the workers' group
    `app_id`); return the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = for_workers(read_topics(settings.topics_file, overrides), app_id)
    check_replication(wanted, replication)
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(settings.topic(name), spec.partitions, replication, topic_configs=spec.config)
            for name, spec in wanted.items()
            if settings.topic(name) not in existing
        ]
        refused = _refusals(await admin.create_topics(new)) if new else []
        if refused:
            raise ValueError("the cluster refused to create topics: " + "; ".join(refused))
        if new:
            await _visible(admin, {topic.name for topic in new})
        return [topic.name for topic in new]
    finally:
        await admin.close()


async def _visible(admin: Any, names: set[str], timeout: float = 60.0) -> None:
    """Wait until the cluster's metadata lists `names`: a topic is usable a moment after it is created."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not names <= set(await admin.list_topics()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics {sorted(names)} were created but did not appear within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def _refusals(response: Any) -> list[str]:
    """The topics a CreateTopics response refused, each with the broker's message (or error code)."""
    return [
        f"{error[0]}: {error[2] if len(error) > 2 and error[2] else f'error code {error[1]}'}"
        for error in response.topic_errors
        if error[1] != 0
    ]


def create_command(app_id: str) -> str:
    """The command that creates the topics of a worker group's deployment."""
    return "tiergate topics create" + ("" if app_id == WORKER_GROUP else f" --app-id {app_id}")


async def describe_topics(
    settings: KafkaSettings, overrides: Mapping[str, str] | None = None, app_id: str = WORKER_GROUP
) -> tuple[dict[str, dict[str, Any]], list[TopicCheck]]:
    """Each defined topic as the cluster has it (partitions, replication factor, the defined configs) and
    every difference. A topic's `min.insync.replicas` is expected at most at its replication factor (what
    `create` requires of a single broker's topics), so a cluster made the documented single-broker way
    describes clean, with a warning that its writes are on one broker."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    defined = for_workers(read_topics(settings.topics_file, overrides), app_id)
    wanted = {settings.topic(name): spec for name, spec in defined.items()}
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        present = [name for name in wanted if name in existing]
        described = {t["topic"]: t for t in await admin.describe_topics(present)} if present else {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        configs: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs(resources) if resources else []:
            for resource in response.resources:
                name, entries = resource[3], resource[4]
                configs[name] = {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()
    report: dict[str, dict[str, Any]] = {}
    problems: list[TopicCheck] = []
    for name, spec in wanted.items():
        if name not in existing:
            problems.append(TopicCheck(name, f"missing: run `{create_command(app_id)}`"))
            continue
        partitions = described[name]["partitions"]
        replication = min((len(p["replicas"]) for p in partitions), default=0)
        actual = {key: configs.get(name, {}).get(key) for key in spec.config}
        report[name] = {"partitions": len(partitions), "replication_factor": replication, "config": actual}
        if len(partitions) != spec.partitions:
            problems.append(TopicCheck(name, f"{len(partitions)} partitions, defined {spec.partitions}"))
        for key, value in _expected(spec.config, replication).items():
            if actual[key] != value:
                problems.append(TopicCheck(name, f"{key}={actual[key]}, defined {value}"))
        defined_isr = int(spec.config.get("min.insync.replicas", "1"))
        if replication < defined_isr:
            problems.append(
                TopicCheck(
                    name,
                    f"replication factor {replication}, below the definition's min.insync.replicas {defined_isr}: "
                    "each write is on fewer brokers than defined (a development broker; on a production cluster, "
                    "create the topics with --replication-factor 3)",
                    warning=True,
                )
            )
    return report, problems


def _expected(config: Mapping[str, str], replication: int) -> dict[str, str]:
    """A topic's defined configs as its replication factor allows them: `min.insync.replicas` at most the
    replication factor (a single broker's topics cannot have more)."""
    expected = dict(config)
    if "min.insync.replicas" in expected and replication > 0:
        expected["min.insync.replicas"] = str(min(int(expected["min.insync.replicas"]), replication))
    return expected


async def produce_history(settings: KafkaSettings, events: list[tuple[str, bytes]]) -> int:
    """Produce (action type, raw event) pairs to the events topic in order, keyed by action type, each
    acknowledged by all in-sync replicas; return how many."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.client_kwargs(), acks="all", enable_idempotence=True, linger_ms=20)
    try:
        await producer.start()
        for action_type, raw in events:
            await producer.send(settings.topic(EVENTS), raw, key=action_type.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return len(events)
