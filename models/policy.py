"""The promotion policy (DESIGN.md §5): declarative data, validated once, at load.

The loader takes the policy as a mapping (streams/ reads the YAML) and either returns a `Policy` whose
every per-action-type policy is merged and valid, or raises `PolicyError` whose messages name the field
and the fix. After that nothing in the fold needs to check the policy again.

Each published policy is identified by `policy_version` and by the sha256 of its normalised form as
canonical JSON; both are written into every decision.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .wire import ACTION_TYPE_PATTERN, TIER_INDEX, TIERS, Tier

Metric = Literal["acceptance_rate", "completion_rate", "customer_success_rate"]
METRICS: tuple[Metric, ...] = ("acceptance_rate", "completion_rate", "customer_success_rate")
METRIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(METRICS)}
CUSTOMER_METRICS: frozenset[str] = frozenset({"customer_success_rate"})

# What each tier can observe: there are no human reviews once the agent acts (Walk, Run), and at Run it
# acts on customers, so only customer outcomes are left.
OBSERVABLE: dict[str, frozenset[str]] = {
    "crawl": frozenset({"acceptance_rate", "customer_success_rate"}),
    "walk": frozenset({"completion_rate", "customer_success_rate"}),
    "run": frozenset({"customer_success_rate"}),
}

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: object) -> int:
    """`\\d+[smhd]` -> seconds."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration: write a whole number and a unit s, m, h or d, e.g. 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: int) -> str:
    """Seconds -> the largest unit that divides it exactly (`604800` -> `7d`)."""
    for unit, size in _UNIT_SECONDS.items():
        if seconds % size == 0 and (seconds or unit == "s"):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]


class Bar(_Strict):
    """One metric bar: the metric's Wilson lower bound must reach `target` on at least `min_samples`."""

    metric: Metric
    target: Annotated[float, Field(gt=0, le=1)]
    min_samples: Annotated[int, Field(ge=1)] | None = None


class Gate(_Strict):
    """The promote gate of a tier: every bar passes at every close for `hold`."""

    hold: Duration
    bars: Annotated[list[Bar], Field(min_length=1)]


class TierPolicy(_Strict):
    """What a tier publishes: the gate that leads out of it and the bars it must keep."""

    promote: Gate | None = None
    keep: list[Bar] = Field(default_factory=list)


class Tiers(_Strict):
    crawl: TierPolicy = Field(default_factory=TierPolicy)
    walk: TierPolicy = Field(default_factory=TierPolicy)
    run: TierPolicy = Field(default_factory=TierPolicy)


class Demotion(_Strict):
    """Automatic demotion: a keep bar's point rate below target − margin on enough samples."""

    margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    min_samples: Annotated[int, Field(ge=1)] = 20
    cooldown: Duration = 0


class Acceptance(_Strict):
    minor_edits_accepted: bool = False


class _ActionTypeSpec(_Strict):
    max_tier: Tier = "run"
    read_only: bool = False
    tiers: dict[str, Any] | None = None
    demotion: dict[str, Any] | None = None


class _Global(_Strict):
    policy_version: Annotated[str, Field(min_length=1)]
    window: PositiveDuration
    allowed_lateness: Duration = 0
    lookback: PositiveDuration
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    acceptance: Acceptance = Field(default_factory=Acceptance)
    demotion: dict[str, Any] = Field(default_factory=dict)
    tiers: dict[str, Any] = Field(default_factory=dict)
    action_types: Annotated[dict[str, _ActionTypeSpec | None], Field(min_length=1)]


_M = TypeVar("_M", bound=BaseModel)


class PolicyError(ValueError):
    """The policy cannot be used. `problems` are `(path, message)` pairs, each naming a field and the fix."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{_dotted(path)}: {message}" for path, message in problems))


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "policy"


@dataclass(frozen=True, slots=True)
class BarRule:
    """A bar resolved for the fold: indices instead of names, thresholds as exact fractions."""

    metric: str
    metric_index: int
    target: float
    min_samples: int
    keep_below: Fraction  # demote when successes/n < keep_below (target − margin), exactly


@dataclass(frozen=True, slots=True)
class TypePolicy:
    """Everything the fold needs to judge one action type, merged and validated."""

    name: str
    read_only: bool
    max_tier: int
    promote_bars: tuple[tuple[BarRule, ...], ...]  # per tier; empty = no way up from that tier
    hold: tuple[int, ...]  # per tier
    keep_bars: tuple[tuple[BarRule, ...], ...]  # per tier
    cooldown: int
    tiers: Tiers
    demotion: Demotion


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded policy: global settings, one `TypePolicy` per catalog action type, and its identity."""

    version: str
    sha256: str
    window: int
    allowed_lateness: int
    lookback: int
    confidence: float
    z: float
    minor_edits_accepted: bool
    types: dict[str, TypePolicy]
    normalised: dict[str, Any]

    @property
    def catalog(self) -> list[str]:
        """Action type names in name order, the order of the initial decisions."""
        return sorted(self.types)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in `override` replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _pydantic_problems(
    error: ValidationError, prefix: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required: add it"
        elif item["type"] == "extra_forbidden":
            message = "is not a policy field: remove it or check its spelling"
        elif item["type"] == "literal_error" and item["loc"] and item["loc"][-1] == "metric":
            message = f"unknown metric {item['input']!r}: use one of {', '.join(METRICS)}"
        problems.append((prefix + tuple(item["loc"]), message))
    return problems


def _validate(
    model: type[_M],
    raw: dict[str, Any],
    where: tuple[str | int, ...],
    problems: list[tuple[tuple[str | int, ...], str]],
) -> _M | None:
    """`model` from `raw`, or None with its problems added once (a global error repeats in every type)."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems.extend(p for p in _pydantic_problems(error, where) if p not in problems)
        return None


def _check_tiers(tiers: Tiers, where: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """The method's rules for a (merged) set of tiers, each broken rule as (path, message)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []

    def add(path: tuple[str | int, ...], message: str) -> None:
        problems.append((path, message))

    if tiers.run.promote is not None:
        add((*where, "run", "promote"), "run is the top tier and has no promote gate: remove it")
    if tiers.crawl.keep:
        add((*where, "crawl", "keep"), "crawl is the bottom tier and cannot demote: remove its keep bars")
    for tier in TIERS:
        policy: TierPolicy = getattr(tiers, tier)
        bars: list[tuple[tuple[str | int, ...], Bar]] = [
            (("promote", "bars", i), b) for i, b in enumerate(policy.promote.bars if policy.promote else [])
        ]
        bars += [(("keep", i), b) for i, b in enumerate(policy.keep)]
        for path, bar in bars:
            if bar.metric not in OBSERVABLE[tier]:
                add(
                    (*where, tier, *path, "metric"),
                    f"{bar.metric} cannot be observed at {tier}: use one of {', '.join(sorted(OBSERVABLE[tier]))}",
                )
        if policy.promote is not None:
            for i, bar in enumerate(policy.promote.bars):
                if bar.min_samples is None:
                    add(
                        (*where, tier, "promote", "bars", i, "min_samples"),
                        "every promote bar states its min_samples: add it",
                    )
    crawl_gate, walk_gate = tiers.crawl.promote, tiers.walk.promote
    if crawl_gate is not None and not any(b.metric == "acceptance_rate" for b in crawl_gate.bars):
        add(
            (*where, "crawl", "promote", "bars"), "Crawl→Walk is judged on human acceptance: add an acceptance_rate bar"
        )
    if walk_gate is not None and not any(b.metric in CUSTOMER_METRICS for b in walk_gate.bars):
        add(
            (*where, "walk", "promote", "bars"),
            "tiers.walk.promote must include a customer metric (customer_success_rate): "
            "internal acceptance alone never qualifies for Run",
        )
    for lower, upper in (("crawl", "walk"), ("walk", "run")):
        gate: Gate | None = getattr(tiers, lower).promote
        gate_targets = {b.metric: b.target for b in gate.bars} if gate else {}
        for i, bar in enumerate(getattr(tiers, upper).keep):
            into = gate_targets.get(bar.metric)
            if into is not None and bar.target > into:
                add(
                    (*where, upper, "keep", i, "target"),
                    f"keep target {bar.target} is above the {bar.metric} target {into} of the gate into {upper}: "
                    f"a freshly promoted type would be demoted at once; lower it to at most {into}",
                )
    return problems


def _resolve_bar(bar: Bar, default_min_samples: int, margin: float) -> BarRule:
    return BarRule(
        metric=bar.metric,
        metric_index=METRIC_INDEX[bar.metric],
        target=bar.target,
        min_samples=bar.min_samples if bar.min_samples is not None else default_min_samples,
        keep_below=Fraction(str(bar.target)) - Fraction(str(margin)),
    )


def _resolve_type(name: str, spec: _ActionTypeSpec, tiers: Tiers, demotion: Demotion) -> TypePolicy:
    gates = [getattr(tiers, t).promote for t in TIERS]
    return TypePolicy(
        name=name,
        read_only=spec.read_only,
        max_tier=TIER_INDEX[spec.max_tier],
        promote_bars=tuple(
            tuple(_resolve_bar(b, 0, demotion.margin) for b in gate.bars) if gate else () for gate in gates
        ),
        hold=tuple(gate.hold if gate else 0 for gate in gates),
        keep_bars=tuple(
            tuple(_resolve_bar(b, demotion.min_samples, demotion.margin) for b in getattr(tiers, t).keep) for t in TIERS
        ),
        cooldown=demotion.cooldown,
        tiers=tiers,
        demotion=demotion,
    )


def _normalise_tiers(tiers: Tiers) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tier in TIERS:
        policy: TierPolicy = getattr(tiers, tier)
        entry: dict[str, Any] = {"keep": [b.model_dump(exclude_none=True) for b in policy.keep]}
        if policy.promote is not None:
            entry["promote"] = {
                "hold": format_duration(policy.promote.hold),
                "bars": [b.model_dump(exclude_none=True) for b in policy.promote.bars],
            }
        out[tier] = entry
    return out


def canonical_json(value: Any) -> str:
    """The one serialisation tiergate hashes and compares: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_policy(raw: Any) -> Policy:
    """Validate a policy mapping (as read from YAML) and resolve every action type's policy."""
    if not isinstance(raw, dict):
        raise PolicyError([((), "the policy must be a mapping of fields (policy_version, window, tiers, …)")])
    try:
        spec = _Global.model_validate(raw)
    except ValidationError as error:
        raise PolicyError(_pydantic_problems(error, ())) from None
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if spec.lookback % spec.window:
        problems.append(
            (
                ("lookback",),
                f"{format_duration(spec.lookback)} is not a whole number of windows "
                f"({format_duration(spec.window)}): use a multiple of {format_duration(spec.window)}",
            )
        )
    base_tiers = _validate(Tiers, spec.tiers, ("tiers",), problems)
    base_demotion = _validate(Demotion, spec.demotion, ("demotion",), problems)
    if base_tiers is not None:
        problems.extend(_check_tiers(base_tiers, ("tiers",)))
    if problems:
        raise PolicyError(problems)
    assert base_tiers is not None and base_demotion is not None
    types: dict[str, TypePolicy] = {}
    normalised_types: dict[str, Any] = {}
    for name, type_spec in spec.action_types.items():
        type_spec = type_spec or _ActionTypeSpec()
        where: tuple[str | int, ...] = ("action_types", name)
        if not re.match(ACTION_TYPE_PATTERN, name):
            problems.append(
                (
                    where,
                    "action type names are 1-128 letters, digits or _ . : - starting with a letter or digit: rename it",
                )
            )
        if type_spec.read_only and type_spec.max_tier != "run":
            problems.append(
                ((*where, "max_tier"), "a read_only type is Run from the start: remove max_tier or read_only")
            )
        tiers: Tiers | None = base_tiers
        if type_spec.tiers:
            tiers = _validate(Tiers, deep_merge(spec.tiers, type_spec.tiers), (*where, "tiers"), problems)
            if tiers is not None:
                problems.extend(_check_tiers(tiers, (*where, "tiers")))
        demotion: Demotion | None = base_demotion
        if type_spec.demotion:
            demotion = _validate(
                Demotion, deep_merge(spec.demotion, type_spec.demotion), (*where, "demotion"), problems
            )
        if tiers is None or demotion is None:
            continue
        types[name] = _resolve_type(name, type_spec, tiers, demotion)
        normalised_types[name] = {
            "read_only": type_spec.read_only,
            "max_tier": type_spec.max_tier,
            "tiers": _normalise_tiers(tiers),
            "demotion": {
                "margin": demotion.margin,
                "min_samples": demotion.min_samples,
                "cooldown": format_duration(demotion.cooldown),
            },
        }
    if problems:
        raise PolicyError(problems)
    normalised = {
        "policy_version": spec.policy_version,
        "window": format_duration(spec.window),
        "allowed_lateness": format_duration(spec.allowed_lateness),
        "lookback": format_duration(spec.lookback),
        "confidence": spec.confidence,
        "acceptance": spec.acceptance.model_dump(),
        "action_types": normalised_types,
    }
    return Policy(
        version=spec.policy_version,
        sha256=hashlib.sha256(canonical_json(normalised).encode()).hexdigest(),
        window=spec.window,
        allowed_lateness=spec.allowed_lateness,
        lookback=spec.lookback,
        confidence=spec.confidence,
        z=NormalDist().inv_cdf(1 - (1 - spec.confidence) / 2),
        minor_edits_accepted=spec.acceptance.minor_edits_accepted,
        types=types,
        normalised=normalised,
    )
