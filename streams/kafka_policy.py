"""Activating a policy on a Kafka deployment: signed `policy` events into the input topic, one per action
type, then the whole document into the compacted `tiergate.policies.v1` (key = activation id).

Workers need no policy file: they fold the activations in the log. The policies topic records what was
produced; what is in force is what the workers applied, as their decisions say (each applied activation
makes a decision per type naming it). An activation the workers refused (signed by a key the policy in force
does not trust, or stale) is on the policies topic but never in force. From the applied ones `apply` shows
the diff and refuses, before anything is written, what the fold would refuse: a window or lateness change, a
signing key the policy in force does not list, a parent that is no longer in force. A resumed apply
(`--activation-id`) writes the same events again: duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tiergate.models.policy import Policy

from .activation import Catalog, Diff, diff, policy_events
from .kafka import DECISIONS, EVENTS, POLICIES, KafkaSettings
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


ACTIVATING = ("initial", "policy", "retire")  # the kinds of decision an applied activation makes


async def history(settings: KafkaSettings) -> list[Activation]:
    """The activations the workers applied, oldest first: recorded on the policies topic (a resumed one
    counts once) and named by at least one of their decisions."""
    applied = await applied_activations(settings)
    seen: dict[str, Activation] = {}
    for record in await policy_records(settings):
        if record["activation_id"] in applied:
            seen.setdefault(record["activation_id"], Activation(record["activation_id"], record["policy"], record))
    return list(seen.values())


async def policy_records(settings: KafkaSettings) -> list[dict[str, Any]]:
    """Every record on the policies topic, oldest first (a resumed activation's more than once)."""
    return [
        orjson.loads(message.value) for message in await read_topic(settings, POLICIES) if message.value is not None
    ]


async def recorded_activations(settings: KafkaSettings) -> dict[str, tuple[str, str]]:
    """Every activation id on the policies topic, applied by the workers yet or not: (version, sha) each."""
    return {
        str(record["activation_id"]): (str(record["policy_version"]), str(record["policy_sha256"]))
        for record in await policy_records(settings)
    }


async def applied_activations(settings: KafkaSettings) -> set[str]:
    """The activation ids the workers' decisions name."""
    applied = set()
    for message in await read_topic(settings, DECISIONS):
        record = orjson.loads(message.value) if message.value else None
        if isinstance(record, dict) and record.get("kind") in ACTIVATING and record.get("activation_id"):
            applied.add(str(record["activation_id"]))
    return applied


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


def refusals(activations: list[Activation], policy: Policy, key_id: str, genesis: Sequence[str] | None) -> list[str]:
    """What the fold would refuse: an existing type's window or lateness redrawn, or a signing key that is not
    trusted — by the policy in force for the types it has, by the genesis keys for a type's first activation
    (`genesis`: their key ids; None when TIERGATE_KAFKA_GENESIS_KEYS is not set here, which a first
    activation then needs: the workers would refuse it unchecked)."""
    problems = []
    first = sorted(set(policy.types) - set(catalog_of(activations).parents))
    which = "a type's first activation" if not activations else f"the first activation of {', '.join(first)}"
    if first and genesis is None:
        problems.append(
            f"TIERGATE_KAFKA_GENESIS_KEYS is not set here, and the workers check {which} against the genesis keys: "
            "set it to the deployment's genesis keys file (the workers') so the signing key is checked first"
        )
    elif first and genesis is not None and key_id not in genesis:
        whose = "the deployment's genesis keys (TIERGATE_KAFKA_GENESIS_KEYS)"
        checked = "" if not activations else f", which the workers check {which} against"
        problems.append(f"key {key_id!r} is not among {whose}{checked}: sign with a key it lists")
    if activations:
        trusted = {operator["key_id"] for operator in activations[-1].document.get("operators", [])}
        if key_id not in trusted:
            whose = f"the policy in force ({activations[-1].record['policy_version']})"
            problems.append(f"key {key_id!r} is not among {whose}: sign with a key it lists")
        current = activations[-1].document
        problems += [
            f"{field} cannot change for existing action types ({current[field]} → {policy.normalised[field]}): "
            "their windows are already drawn; keep it, or start a new log"
            for field in WINDOWED
            if current[field] != policy.normalised[field] and set(current["action_types"]) & set(policy.types)
        ]
    return problems


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
        latest = policy_from_mapping(activations[-1].document, recorded=True)
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
    try:
        await producer.start()
        for event in planned.events:
            await producer.send_and_wait(settings.topic(EVENTS), orjson.dumps(event), key=event["action_type"].encode())
        await producer.send_and_wait(
            settings.topic(POLICIES), orjson.dumps(planned.document), key=planned.activation_id.encode()
        )
    finally:
        await producer.stop()
