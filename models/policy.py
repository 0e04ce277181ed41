"""The promotion policy document: declarative data, validated once, at load.

The loader takes the policy as a mapping (streams/ reads the YAML) and either returns a `Policy` whose
every per-action-type `Rules` is merged and valid, or raises `PolicyError` whose messages name the field
and the fix. After that nothing in the fold needs to check the policy again.

Each published policy is identified by `policy_version` and by the sha256 of its normalised form as
canonical JSON; both are written into every decision.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError

from .durations import format_duration
from .resolved import Rules
from .rules import (
    SOUND_DEMOTION,
    SOUND_PROMOTION,
    V1_DEMOTION,
    V1_PROMOTION,
    Acceptance,
    Demotion,
    Duration,
    Path,
    PositiveDuration,
    Problems,
    RulesError,
    RulesSpec,
    Strict,
    Tiers,
    lookback_problems,
    normalise_demotion,
    normalise_tiers,
    problems_of,
    pydantic_problems,
    resolve,
    tier_problems,
)
from .wire import ACTION_TYPE_PATTERN, Tier


class PolicyError(RulesError):
    """The policy cannot be used. `problems` are `(path, message)` pairs, each naming a field and the fix."""


class _ActionTypeSpec(Strict):
    max_tier: Tier = "run"
    read_only: bool = False
    tiers: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    demotion: dict[str, Any] | None = None
    outcomes: dict[str, Any] | None = None


ActionTypeName = Annotated[str, Field(pattern=ACTION_TYPE_PATTERN)]


def _ed25519_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("must be an Ed25519 public key: 32 bytes, base64 (tiergate keys new prints it)")
    return value


class Operator(Strict):
    """An operator key the deployment trusts to sign overrides and policy activations (on Kafka)."""

    key_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")]
    public_key: Annotated[str, AfterValidator(_ed25519_public_key)]
    actor: Annotated[str, Field(min_length=1)]


class _Document(Strict):
    policy_version: Annotated[str, Field(min_length=1)]
    window: PositiveDuration
    allowed_lateness: Duration = 0
    lookback: PositiveDuration
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    acceptance: Acceptance = Field(default_factory=Acceptance)
    promotion: dict[str, Any] = Field(default_factory=dict)
    demotion: dict[str, Any] = Field(default_factory=dict)
    tiers: dict[str, Any] = Field(default_factory=dict)
    outcomes: dict[str, Any] = Field(default_factory=dict)
    action_types: Annotated[
        dict[Annotated[str, Field(pattern=ACTION_TYPE_PATTERN)], _ActionTypeSpec | None], Field(min_length=1)
    ]
    operators: list[Operator] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded policy: its identity, and one `Rules` per catalog action type."""

    version: str
    sha256: str
    window: int  # global, like allowed_lateness: every type's rules carry the same
    allowed_lateness: int
    types: dict[str, Rules]
    normalised: dict[str, Any]
    operators: tuple[dict[str, str], ...] = ()  # the keys trusted to sign its successor (on Kafka)
    old_log: Policy | None = None  # the same document with its unnamed rules v1, when that differs

    @property
    def catalog(self) -> list[str]:
        """Action type names in name order, the order of the initial decisions."""
        return sorted(self.types)

    @property
    def before_activations(self) -> Policy:
        """The policy the events of an old log before its first activation fold under: this document with
        every bar rule it leaves unnamed read as the v1 rule, because that is what decided such logs
        (a document that names its rules is the same either way)."""
        return self if self.old_log is None else self.old_log


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in `override` replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def canonical_json(value: Any) -> str:
    """The one serialisation tiergate hashes and compares: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


GLOBAL_RULES = ("window", "allowed_lateness", "lookback", "confidence", "acceptance")

# What a bar rule the document leaves unnamed means: the sound rules for a policy being applied, v1 for the
# policy an old log (no activations) was decided by.
Unnamed = Literal["sound", "v1"]
UNNAMED_RULES: dict[Unnamed, tuple[str, str]] = {
    "sound": (SOUND_PROMOTION, SOUND_DEMOTION),
    "v1": (V1_PROMOTION, V1_DEMOTION),
}


def _type_mapping(raw: dict[str, Any], spec: _ActionTypeSpec, unnamed: Unnamed) -> dict[str, Any]:
    """One type's complete rules in the policy's words: the globals with its own entries merged in, and
    the bar rules it does not name filled in."""
    mapping = {name: raw[name] for name in GLOBAL_RULES if name in raw}
    promotion, demotion = UNNAMED_RULES[unnamed]
    return mapping | {
        "promotion": {"rule": promotion} | deep_merge(_mapping(raw.get("promotion")), _mapping(spec.promotion)),
        "demotion": {"rule": demotion} | deep_merge(_mapping(raw.get("demotion")), _mapping(spec.demotion)),
        "tiers": deep_merge(raw.get("tiers") or {}, spec.tiers or {}),
        "outcomes": deep_merge(raw.get("outcomes") or {}, spec.outcomes or {}),
        "max_tier": spec.max_tier,
        "read_only": spec.read_only,
    }


def _mapping(value: Any) -> dict[str, Any]:
    """A section as given (validated as a mapping already), or none."""
    return value if isinstance(value, dict) else {}


def _check(mapping: dict[str, Any], where: Path, problems: Problems) -> RulesSpec | None:
    """Validate one set of rules, adding its problems (each once) under `where`."""
    try:
        spec = RulesSpec.model_validate(mapping)
    except ValidationError as error:
        found = pydantic_problems(error, where)
    else:
        found = [((*where, *path), message) for path, message in problems_of(spec)]
    problems.extend(p for p in found if p not in problems)
    return None if found else spec


Digest = Callable[[Mapping[str, Any]], str]


def load_policy(raw: Any, digest: Digest, unnamed: Unnamed = "sound", recorded: bool = False) -> Policy:
    """Validate a policy mapping (as read from YAML) and resolve every action type's rules. `digest` gives
    the normalised document its identity (streams/canonical.py: sha256 of its RFC 8785 form). A bar rule
    the document does not name is the sound one; `unnamed="v1"` reads it as v1, for the policy of an old
    log (`Policy.before_activations` holds that reading). `recorded`: a document the log already holds,
    read for its rules: checks on the operator keys added since it was accepted (one key_id per key) do not
    make it unreadable, or its successor could not be applied."""
    if not isinstance(raw, dict):
        raise PolicyError([((), "the policy must be a mapping of fields (policy_version, window, tiers, …)")])
    try:
        document = _Document.model_validate(raw)
    except ValidationError as error:
        raise PolicyError(_names_the_fix(pydantic_problems(error))) from None
    problems = lookback_problems(document.window, document.lookback)
    if not recorded:
        problems += _shared_key_ids(document.operators)
    _check(_type_mapping(raw, _ActionTypeSpec(), unnamed), (), problems)  # the globals alone, reported once
    if problems:
        raise PolicyError(problems)
    types: dict[str, Rules] = {}
    for name, spec in document.action_types.items():
        checked = _check(_type_mapping(raw, spec or _ActionTypeSpec(), unnamed), ("action_types", name), problems)
        if checked is not None:
            types[name] = resolve(checked)
    if problems:
        raise PolicyError(problems)
    normalised = _normalise(document, types)
    sha256 = digest(normalised)
    old_log = _old_log_reading(raw, digest, recorded) if unnamed == "sound" else None
    return Policy(
        version=document.policy_version,
        sha256=sha256,
        window=document.window,
        allowed_lateness=document.allowed_lateness,
        types=types,
        operators=tuple(normalised.get("operators", ())),
        normalised=normalised,
        old_log=None if old_log is None or old_log.sha256 == sha256 else old_log,
    )


def _shared_key_ids(operators: list[Operator]) -> Problems:
    """Each operator key needs a key_id of its own: a signed event names only its key_id, so two entries
    sharing one would leave which key, and which actor, is trusted to whichever the verifier finds first."""
    problems: Problems = []
    first: dict[str, int] = {}
    for index, operator in enumerate(operators):
        earlier = first.setdefault(operator.key_id, index)
        if earlier != index:
            problems.append(
                (
                    ("operators", index, "key_id"),
                    f"{operator.key_id!r} is already the key_id of operators.{earlier} "
                    f"({operators[earlier].actor}): give each key its own key_id (`tiergate keys new --key-id "
                    "NEW_ID --actor …` makes a new key) or remove the repeated entry",
                )
            )
    return problems


def _old_log_reading(raw: dict[str, Any], digest: Digest, recorded: bool) -> Policy | None:
    """The document with its unnamed rules v1; None when that reading is not valid (a document that gives
    the sound rules' parameters without naming them was never an old log's policy)."""
    try:
        return load_policy(raw, digest, "v1", recorded)
    except PolicyError:
        return None


def _names_the_fix(problems: Problems) -> Problems:
    """An action type name that breaks the pattern gets the naming rule, not pydantic's regex."""
    fixed: Problems = []
    for path, message in problems:
        if len(path) >= 2 and path[0] == "action_types" and path[-1] == "[key]":
            path, message = (
                path[:2],
                ("action type names are 1-128 letters, digits or _ . : - starting with a letter or digit: rename it"),
            )
        fixed.append((path, message))
    return fixed


def _normalise(document: _Document, types: dict[str, Rules]) -> dict[str, Any]:
    """The document in its normalised form (what is hashed): globals, then every type merged and whole,
    then the trusted operator keys (only when there are any, in key_id order)."""
    operators = sorted((o.model_dump() for o in document.operators), key=lambda o: o["key_id"])
    return ({"operators": operators} if operators else {}) | {
        "policy_version": document.policy_version,
        "window": format_duration(document.window),
        "allowed_lateness": format_duration(document.allowed_lateness),
        "lookback": format_duration(document.lookback),
        "confidence": document.confidence,
        "acceptance": document.acceptance.model_dump(),
        "action_types": {
            name: {
                "read_only": rules.mapping["read_only"],
                "max_tier": rules.mapping["max_tier"],
                "tiers": rules.mapping["tiers"],
                "promotion": rules.mapping["promotion"],
                "demotion": rules.mapping["demotion"],
                "outcomes": rules.mapping["outcomes"],
            }
            for name, rules in types.items()
        },
    }


__all__ = [
    "Demotion",
    "Policy",
    "PolicyError",
    "Tiers",
    "canonical_json",
    "deep_merge",
    "load_policy",
    "normalise_demotion",
    "normalise_tiers",
    "tier_problems",
]
