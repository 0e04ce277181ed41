"""Operators' signatures on Kafka: overrides and policy activations are signed with Ed25519.

On Kafka, whoever may write to the input topic could otherwise post a `promote`; so an override or a policy
event counts only if an operator key trusted by the key's policy signed it. The signature covers the event
as produced, in RFC 8785 canonical form, minus `sig` — its `key_id` and `deployment` included, so a signed
event of staging does not count in production. The keys a key trusts are those of its latest activation
(`operators` in the policy document: a rotation is an activation); a key with no activation yet trusts the
genesis keys the workers and replay are given.

Checking is admission, before the fold: a failing event is rejected and kept with its reason before
de-duplication, and marks no id, so nobody can squat the id of a genuine event.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tiergate.models.fold import Event
from tiergate.models.state import State
from tiergate.models.wire import Override, PolicyEvent

from .canonical import canonical_bytes
from .pipeline import Admit, Input, key_matches

SIGNED = (Override, PolicyEvent)


class OperatorKeyError(ValueError):
    """A key file or key list that cannot be used; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """An operator's private signing key and the id the policy document knows it by."""

    key_id: str
    private: Ed25519PrivateKey

    @classmethod
    def new(cls, key_id: str) -> OperatorKey:
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def read(cls, path: Path) -> OperatorKey:
        """A key file as `tiergate keys new` writes it: PEM (PKCS#8) with the key id in its first line."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise OperatorKeyError(f"{path}: cannot read the operator key ({error.strerror})") from None
        first, _, rest = text.partition("\n")
        if not first.startswith("# key_id: "):
            raise OperatorKeyError(
                f"{path}: not a tiergate operator key (its first line names the key_id): use `tiergate keys new`"
            )
        try:
            private = serialization.load_pem_private_key(rest.encode(), password=None)
        except ValueError as error:
            raise OperatorKeyError(f"{path}: not a PEM private key ({error})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise OperatorKeyError(f"{path}: not an Ed25519 key")
        return cls(first.removeprefix("# key_id: ").strip(), private)

    def write(self, path: Path) -> None:
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.touch(mode=0o600, exist_ok=False)
        path.write_text(f"# key_id: {self.key_id}\n" + pem.decode(), encoding="utf-8")

    def public_key(self) -> str:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, event: Mapping[str, Any], deployment: str) -> dict[str, Any]:
        """`event` with `key_id`, `deployment` and the signature over all of it (RFC 8785, minus `sig`)."""
        signed = {k: v for k, v in event.items() if k != "sig"} | {"key_id": self.key_id, "deployment": deployment}
        signed["sig"] = base64.b64encode(self.private.sign(canonical_bytes(signed))).decode()
        return signed


def read_trusted(path: Path) -> tuple[dict[str, str], ...]:
    """Genesis keys: a YAML or JSON list of {key_id, public_key, actor} (the policy's `operators` form)."""
    shape = "a list of {key_id, public_key, actor}, as `tiergate keys new` prints"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise OperatorKeyError(f"{path}: cannot read the genesis keys ({error.strerror})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise OperatorKeyError(f"{path}: the genesis keys are not YAML{line}; write {shape}") from None
    if isinstance(loaded, dict):
        loaded = loaded.get("operators", loaded.get("keys"))
    if not isinstance(loaded, list) or not all(
        isinstance(k, dict) and {"key_id", "public_key"} <= set(k) for k in loaded
    ):
        raise OperatorKeyError(f"{path}: genesis keys are {shape}")
    for number, key in enumerate(loaded):
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(str(key["public_key"]), validate=True))
        except (ValueError, binascii.Error):
            raise OperatorKeyError(
                f"{path}: entry {number} ({key['key_id']!r}): public_key is not an Ed25519 public key in base64; "
                "copy the entry `tiergate keys new` printed"
            ) from None
    return tuple(loaded)


def untrusted_by_policy(key_id: str) -> str:
    return f"key {key_id!r} is not trusted by this action type's policy: sign with a key its policy lists"


def untrusted_by_genesis(genesis: tuple[dict[str, str], ...]) -> Callable[[str], str]:
    """The reason for an untrusted key before a type's first activation: no policy trusts anyone yet, the
    genesis keys decide (and there may be none, when TIERGATE_KAFKA_GENESIS_KEYS is not set)."""

    def reason(key_id: str) -> str:
        if not genesis:
            return (
                f"key {key_id!r} is not a genesis key: before an action type's first activation only the genesis "
                "keys are trusted, and none are set: set TIERGATE_KAFKA_GENESIS_KEYS (a file of {key_id, "
                "public_key, actor}) for the workers and replay"
            )
        return (
            f"key {key_id!r} is not among the genesis keys (TIERGATE_KAFKA_GENESIS_KEYS), the only keys trusted "
            "before an action type's first activation: sign with one of them"
        )

    return reason


def verify(
    raw: bytes,
    trusted: Iterable[Mapping[str, str]],
    deployment: str,
    untrusted: Callable[[str], str] = untrusted_by_policy,
) -> str | None:
    """Why the signed event `raw` does not count, or None when a trusted key signed it for `deployment`
    (`untrusted`: the reason for a key that `trusted` does not hold)."""
    data = orjson.loads(raw)
    if not isinstance(data.get("sig"), str) or not isinstance(data.get("key_id"), str):
        return (
            "unsigned: overrides and policy events on Kafka must be signed by an operator key "
            "(tiergate override --kafka, tiergate policy apply --kafka)"
        )
    if data.get("deployment") != deployment:
        meant = data.get("deployment")
        return f"signed for deployment {meant!r}, not {deployment!r}: it counts only where it was meant to"
    key = next((k for k in trusted if k.get("key_id") == data["key_id"]), None)
    if key is None:
        return untrusted(data["key_id"])
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
        public.verify(base64.b64decode(data["sig"]), canonical_bytes({k: v for k, v in data.items() if k != "sig"}))
    except (InvalidSignature, ValueError, binascii.Error):
        return (
            f"bad signature for key {data['key_id']!r}: the event was changed after signing, or signed with another key"
        )
    return None


def signed_by_operators(deployment: str, genesis: tuple[dict[str, str], ...]) -> Admit:
    """The worker's admission of operator events: a policy event must be signed by a key the key's previous
    activation trusts (genesis keys for its first); an override by a key its current activation trusts."""

    before_activation = untrusted_by_genesis(genesis)

    def admit(item: Input, event: Event, state: State) -> str | None:
        if not isinstance(event, SIGNED):
            return None
        key = state.keys.get(event.action_type)
        if key is not None and key.activation_id is not None:
            return verify(item.raw, key.operators, deployment)
        return verify(item.raw, genesis, deployment, before_activation)

    return admit


def all_of(*checks: Admit) -> Admit:
    """Admission that passes only what every check passes (the first refusal's reason)."""

    def admit(item: Input, event: Event, state: State) -> str | None:
        for check in checks:
            refused = check(item, event, state)
            if refused is not None:
                return refused
        return None

    return admit


def kafka_admission(deployment: str, genesis_keys: Path | None) -> Admit:
    """What the worker and `replay --from-kafka` admit: events under their own key, and operator events
    signed by a trusted key for this deployment. (`all_of(key_matches, signed_by_operators(…))`, in one
    function: it runs for every input record.)"""
    genesis = () if genesis_keys is None else read_trusted(genesis_keys)
    signed = signed_by_operators(deployment, genesis)

    def admit(item: Input, event: Event, state: State) -> str | None:
        if item.key is not None and item.key != event.action_type.encode():
            return key_matches(item, event, state)
        return signed(item, event, state) if isinstance(event, SIGNED) else None

    return admit


def signing_key(item: Input, event: Event) -> str | None:
    """Who sent an operator event on Kafka: the key that signed it (the admission has verified the signature
    before the fold runs, so the key id is authenticated, not merely claimed)."""
    if not isinstance(event, SIGNED):
        return item.principal
    key_id = orjson.loads(item.raw).get("key_id")
    return key_id if isinstance(key_id, str) else item.principal
