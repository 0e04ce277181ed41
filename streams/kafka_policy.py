"""Activating a policy on a Kafka deployment: signed `policy` events into the input topic, one per action
type, then the whole document into the compacted `tiergate.policies.v1` (key = activation id).

Workers need no policy file: they fold the activations in the log. What an activation replaces per key is
read from the policies topic (each activation's document, in order), so `apply` can show the diff and
refuse a change the fold would refuse (a window or lateness change) before anything is written. A resumed
apply (`--activation-id`) writes the same events again: duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tiergate.models.policy import Policy

from .activation import Catalog, Diff, diff, policy_events
from .kafka import EVENTS, POLICIES, KafkaSettings
from .kafka_replay import read_topic
from .policy_file import policy_from_mapping
from .signing import OperatorKey

WINDOWED = ("window", "allowed_lateness")


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation as the policies topic keeps it."""

    activation_id: str
    document: dict[str, Any]
    record: dict[str, Any]


async def history(settings: KafkaSettings) -> list[Activation]:
    """Every activation recorded on the policies topic, oldest first (a resumed one counts once)."""
    seen: dict[str, Activation] = {}
    for message in await read_topic(settings, POLICIES):
        if message.value is None:
            continue
        record = orjson.loads(message.value)
        seen.setdefault(record["activation_id"], Activation(record["activation_id"], record["policy"], record))
    return list(seen.values())


def catalog_of(activations: list[Activation]) -> Catalog:
    """Per key, the sha of its latest activation (a retirement included) and the catalog now."""
    parents: dict[str, str | None] = {}
    current: frozenset[str] = frozenset()
    for activation in activations:
        names = frozenset(activation.document["action_types"])
        for name in names | current:
            parents[name] = activation.record["policy_sha256"]
        current = names
    return Catalog(parents, current)


def refusals(activations: list[Activation], policy: Policy) -> list[str]:
    """What the fold would refuse: an existing type's window or lateness redrawn."""
    if not activations:
        return []
    current = activations[-1].document
    return [
        f"{field} cannot change for existing action types ({current[field]} → {policy.normalised[field]}): "
        "their windows are already drawn; keep it, or start a new log"
        for field in WINDOWED
        if current[field] != policy.normalised[field] and set(current["action_types"]) & set(policy.types)
    ]


@dataclass(frozen=True, slots=True)
class Planned:
    activation_id: str
    diff: Diff
    events: list[dict[str, Any]]  # signed
    document: dict[str, Any]  # the policies topic record, signed


def plan(
    activations: list[Activation],
    policy: Policy,
    key: OperatorKey,
    deployment: str,
    activation_id: str,
    actor: str,
    reason: str,
    now: int,
) -> Planned:
    """The signed events of an activation and its document record, against the recorded history."""
    old = {}
    if activations:
        latest = policy_from_mapping(activations[-1].document)
        old = {name: rules.mapping for name, rules in latest.types.items()}
    events = policy_events(policy, catalog_of(activations), activation_id, actor, reason, now)
    signed = [key.sign(event, deployment) for event in events]
    record = {
        "activation_id": activation_id,
        "ts": now,
        "actor": actor,
        "reason": reason,
        "policy_version": policy.version,
        "policy_sha256": policy.sha256,
        "policy": policy.normalised,
    }
    return Planned(activation_id, diff(old, policy), signed, key.sign(record, deployment))


async def produce(settings: KafkaSettings, planned: Planned) -> None:
    """The per-type events (keyed by type), then the document: a reader of the policies topic never sees an
    activation whose events are not in the log yet."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in planned.events:
            await producer.send_and_wait(settings.topic(EVENTS), orjson.dumps(event), key=event["action_type"].encode())
        await producer.send_and_wait(
            settings.topic(POLICIES), orjson.dumps(planned.document), key=planned.activation_id.encode()
        )
    finally:
        await producer.stop()
