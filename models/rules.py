"""One action type's rules, complete and resolved: everything the fold judges a key by.

A policy document (models/policy.py) resolves into one `Rules` per catalog type: the global settings with
the type's own entries merged in. The same rules in the policy's vocabulary — durations normalised,
every default written out, plus `schema` — are what a policy activation carries for each key in the log
(`Rules.mapping`), and `rules_from_mapping` turns them back into `Rules` with the same validation. This
mapping is a storage format: the log keeps it for good. Add fields with care and bump `RULES_SCHEMA` for
anything that changes a meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .durations import format_duration, parse_duration
from .resolved import (
    METRIC_INDEX,
    METRIC_OF_KIND,
    METRICS,
    BarRule,
    DemotionRule,
    Metric,
    PromotionRule,
    Rules,
    slot,
)
from .sequential import KeepTest, PromoteTest
from .wire import TIER_INDEX, TIERS, Tier

RULES_SCHEMA = 1

CUSTOMER_METRICS: frozenset[str] = frozenset({"customer_success_rate"})

# What each tier can observe: there are no human reviews once the agent acts (Walk, Run), and at Run it
# acts on customers, so only customer outcomes are left.
OBSERVABLE: dict[str, frozenset[str]] = {
    "crawl": frozenset({"acceptance_rate", "customer_success_rate"}),
    "walk": frozenset({"completion_rate", "customer_success_rate"}),
    "run": frozenset({"customer_success_rate"}),
}

Path = tuple[str | int, ...]
Problems = list[tuple[Path, str]]


class RulesError(ValueError):
    """Rules that cannot be used. `problems` are `(path, message)` pairs, each naming a field and the fix."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{dotted(path)}: {message}" for path, message in problems))


def dotted(path: Path) -> str:
    return ".".join(str(part) for part in path) or "policy"


# -- the vocabulary (validated with pydantic; unknown fields are errors) ---------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]


class Bar(Strict):
    """One metric bar: the metric's Wilson lower bound must reach `target` on at least `min_samples`."""

    metric: Metric
    target: Annotated[float, Field(gt=0, le=1)]
    min_samples: Annotated[int, Field(ge=1)] | None = None


class Gate(Strict):
    """The promote gate of a tier: every bar passes at every close for `hold`."""

    hold: Duration
    bars: Annotated[list[Bar], Field(min_length=1)]


class TierPolicy(Strict):
    """What a tier publishes: the gate that leads out of it and the bars it must keep."""

    promote: Gate | None = None
    keep: list[Bar] = Field(default_factory=list)


class Tiers(Strict):
    crawl: TierPolicy = Field(default_factory=TierPolicy)
    walk: TierPolicy = Field(default_factory=TierPolicy)
    run: TierPolicy = Field(default_factory=TierPolicy)


# The rules a bar is judged by. In a rules mapping an absent `rule` is the v1 rule: rules written
# before the rule fields existed were decided by it. A policy file that names no rule gets the sound rule
# instead (models/policy.py), except where it stands for an old log's policy.
SOUND_PROMOTION: PromotionRule = "mixture"
SOUND_DEMOTION: DemotionRule = "sprt"
V1_PROMOTION: PromotionRule = "wilson"
V1_DEMOTION: DemotionRule = "point"
# Each rule's parameters and their defaults; a parameter of a rule not in force is refused.
PROMOTION_PARAMETERS: dict[str, dict[str, float]] = {"mixture": {"alpha": 0.2, "floor": -10.0}, "wilson": {}}
DEMOTION_PARAMETERS: dict[str, dict[str, float]] = {"sprt": {"threshold": 2.0, "floor": -4.0}, "point": {}}
TRIPWIRE_DEFAULT: dict[str, int] = {"sprt": 6, "point": 0}  # v1 had none
RULES_OF: dict[str, tuple[str, ...]] = {"promotion": ("mixture", "wilson"), "demotion": ("sprt", "point")}


class Promotion(Strict):
    """How a promote bar passes: `wilson` (v1: the lookback's Wilson lower bound ≥ target, at every close) or
    `mixture` (an e-value since the type entered its tier reaches 1/alpha; models/sequential.py)."""

    rule: PromotionRule = V1_PROMOTION
    alpha: Annotated[float, Field(gt=0, lt=1)] | None = None
    floor: Annotated[float, Field(le=0)] | None = None


class Demotion(Strict):
    """Automatic demotion: `point` (v1: a keep bar's point rate below target − margin on enough samples) or
    `sprt` (a sequential test of target − 2·margin against the target reaches `threshold`), and a tripwire
    of `tripwire` failures in a row (0: none)."""

    margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    min_samples: Annotated[int, Field(ge=1)] = 20
    cooldown: Duration = 0
    rule: DemotionRule = V1_DEMOTION
    threshold: Annotated[float, Field(gt=0)] | None = None
    floor: Annotated[float, Field(le=0)] | None = None
    tripwire: Annotated[int, Field(ge=0, strict=True)] | None = None

    @property
    def tripwire_in_force(self) -> int:
        return TRIPWIRE_DEFAULT[self.rule] if self.tripwire is None else self.tripwire


class Acceptance(Strict):
    minor_edits_accepted: bool = False


class CustomerOutcomes(Strict):
    maturity: Duration | None = None  # how long after its action a customer failure can still come


class Outcomes(Strict):
    """How outcomes are known: with a customer maturity, an action counts for the customer only once it is
    old enough and the outcome feed's checkpoint says its failures are in."""

    customer: CustomerOutcomes = Field(default_factory=CustomerOutcomes)


class RulesSpec(Strict):
    """The complete rules of one action type, as an activation carries them."""

    schema_: Annotated[Literal[1], Field(alias="schema")] = 1
    window: PositiveDuration
    allowed_lateness: Duration = 0
    lookback: PositiveDuration
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    acceptance: Acceptance = Field(default_factory=Acceptance)
    promotion: Promotion = Field(default_factory=Promotion)
    demotion: Demotion = Field(default_factory=Demotion)
    tiers: Tiers = Field(default_factory=Tiers)
    outcomes: Outcomes = Field(default_factory=Outcomes)
    max_tier: Tier = "run"
    read_only: bool = False


def problems_of(spec: RulesSpec) -> Problems:
    """The method's rules for one type's complete rules, each broken rule as (path, message)."""
    problems = lookback_problems(spec.window, spec.lookback)
    if spec.read_only and spec.max_tier != "run":
        problems.append((("max_tier",), "a read_only type is Run from the start: remove max_tier or read_only"))
    return problems + tier_problems(spec.tiers) + rule_problems(spec)


def rule_problems(spec: RulesSpec) -> Problems:
    """The bar rules: each parameter belongs to its rule, and each rule's test must be possible for every
    bar it judges."""
    problems: Problems = []
    promotion, demotion = spec.promotion, spec.demotion
    for name in ("alpha", "floor"):
        if getattr(promotion, name) is not None and name not in PROMOTION_PARAMETERS[promotion.rule]:
            problems.append(
                (("promotion", name), f"applies only to promotion.rule mixture, not {promotion.rule}: remove it")
            )
    for name in ("threshold", "floor"):
        if getattr(demotion, name) is not None and name not in DEMOTION_PARAMETERS[demotion.rule]:
            problems.append((("demotion", name), f"applies only to demotion.rule sprt, not {demotion.rule}: remove it"))
    for tier in TIERS:
        policy: TierPolicy = getattr(spec.tiers, tier)
        if promotion.rule == "mixture" and policy.promote is not None:
            for i, bar in enumerate(policy.promote.bars):
                if bar.target >= 1:
                    problems.append(
                        (
                            ("tiers", tier, "promote", "bars", i, "target"),
                            "a target of 1 can never be shown by promotion.rule mixture: lower it below 1, "
                            "or use promotion.rule wilson",
                        )
                    )
        if demotion.rule == "sprt":
            for i, bar in enumerate(policy.keep):
                problem = _keep_test_problem(tier, i, bar, demotion.margin)
                if problem is not None and problem not in problems:
                    problems.append(problem)
    return problems


def _keep_test_problem(tier: str, index: int, bar: Bar, margin: float) -> tuple[Path, str] | None:
    """Why demotion.rule sprt cannot test a keep bar, if it cannot: it tests target − 2·margin against the
    target, so both must lie strictly between 0 and 1 and differ."""
    path: Path = ("tiers", tier, "keep", index, "target")
    if bar.target >= 1:
        return path, "a keep target of 1 cannot be tested by demotion.rule sprt: lower it below 1, or use rule point"
    if margin <= 0:
        return ("demotion", "margin"), "demotion.rule sprt tests target − 2·margin: give a margin above 0"
    if bar.target - 2 * margin <= 0:
        return path, (
            f"demotion.rule sprt tests target − 2·margin, {bar.target} − 2·{margin} ≤ 0: raise the target, "
            "lower demotion.margin, or use rule point"
        )
    return None


def lookback_problems(window: int, lookback: int) -> Problems:
    if lookback % window == 0:
        return []
    size = format_duration(window)
    message = f"{format_duration(lookback)} is not a whole number of windows ({size}): use a multiple of {size}"
    return [(("lookback",), message)]


def tier_problems(tiers: Tiers, where: Path = ("tiers",)) -> Problems:
    """The method's rules for a set of tiers."""
    problems: Problems = []

    def add(path: Path, message: str) -> None:
        problems.append((path, message))

    if tiers.run.promote is not None:
        add((*where, "run", "promote"), "run is the top tier and has no promote gate: remove it")
    if tiers.crawl.keep:
        add((*where, "crawl", "keep"), "crawl is the bottom tier and cannot demote: remove its keep bars")
    for tier in TIERS:
        policy: TierPolicy = getattr(tiers, tier)
        bars: list[tuple[Path, Bar]] = [
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


def pydantic_problems(error: ValidationError, prefix: Path = ()) -> Problems:
    """Pydantic's errors as (path, message) pairs in the policy's words."""
    problems: Problems = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required: add it"
        elif item["type"] == "extra_forbidden":
            message = "is not a policy field: remove it or check its spelling"
        elif item["type"] in ("model_type", "dict_type"):
            message = _mapping_wanted(prefix + tuple(item["loc"]))
        elif item["type"] == "literal_error" and item["loc"] and item["loc"][-1] == "metric":
            message = f"unknown metric {item['input']!r}: use one of {', '.join(METRICS)}"
        elif item["type"] == "literal_error" and len(item["loc"]) >= 2 and item["loc"][-1] == "rule":
            rules = RULES_OF.get(str(item["loc"][-2]), ())
            message = f"unknown rule {item['input']!r}: use {' or '.join(rules)}"
        elif item["type"] == "literal_error" and item["loc"] and item["loc"][-1] == "schema":
            message = f"unknown rules schema {item['input']!r}: this tiergate knows schema {RULES_SCHEMA}; upgrade it"
        problems.append((prefix + tuple(item["loc"]), message))
    return problems


def _mapping_wanted(path: Path) -> str:
    """What a field that must be a mapping takes (a catalog entry: the fields an action type may set)."""
    if len(path) == 2 and path[0] == "action_types":
        return "must be a mapping (e.g. {} or {max_tier: walk})"
    return "must be a mapping of its fields (name: value pairs, in braces or indented lines)"


def rules_from_mapping(mapping: Mapping[str, Any]) -> Rules:
    """Validate one type's complete rules (as written in the policy's vocabulary) and resolve them."""
    try:
        spec = RulesSpec.model_validate(mapping)
    except ValidationError as error:
        raise RulesError(pydantic_problems(error)) from None
    problems = problems_of(spec)
    if problems:
        raise RulesError(problems)
    return resolve(spec)


def resolve(spec: RulesSpec) -> Rules:
    """Validated rules -> what the fold reads (call `problems_of` first)."""
    tiers, demotion = spec.tiers, spec.demotion
    gates = [getattr(tiers, t).promote for t in TIERS]
    return Rules(
        window=spec.window,
        allowed_lateness=spec.allowed_lateness,
        lookback=spec.lookback,
        confidence=spec.confidence,
        z=NormalDist().inv_cdf(1 - (1 - spec.confidence) / 2),
        minor_edits_accepted=spec.acceptance.minor_edits_accepted,
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
        maturity=spec.outcomes.customer.maturity,
        mapping=normalise(spec),
        promotion_rule=spec.promotion.rule,
        demotion_rule=demotion.rule,
        tripwire=demotion.tripwire_in_force,
        promote_tests=tuple(_promote_tests(spec, gate) for gate in gates),
        keep_tests=tuple(_keep_tests(spec, getattr(tiers, t).keep) for t in TIERS),
        sequential_promotion=spec.promotion.rule == "mixture",
        sequential_demotion=demotion.rule == "sprt",
        lookback_windows=spec.lookback // spec.window,
        tripwire_bars=tuple(_tripwire_bars(getattr(tiers, t).keep) for t in TIERS),
        keep_slots=_slots(tuple(getattr(tiers, t).keep for t in TIERS)),
        promote_slots=_slots(tuple(gate.bars if gate else [] for gate in gates)),
    )


def _slots(bars: tuple[list[Bar], ...]) -> tuple[tuple[int, ...], ...]:
    """Per tier, where each bar's (n, successes) pair starts in a window's counters."""
    return tuple(
        tuple(slot(tier, METRIC_INDEX[bar.metric]) for bar in tier_bars) for tier, tier_bars in enumerate(bars)
    )


def _tripwire_bars(bars: list[Bar]) -> Mapping[str, tuple[int, ...]]:
    """Outcome kind -> the indices of the keep bars on its metric: the runs a tripwire extends or ends."""
    return {
        kind: tuple(i for i, bar in enumerate(bars) if bar.metric == metric)
        for kind, metric in METRIC_OF_KIND.items()
        if any(bar.metric == metric for bar in bars)
    }


def _promote_tests(spec: RulesSpec, gate: Gate | None) -> tuple[PromoteTest, ...]:
    promotion = normalise_promotion(spec.promotion)
    if promotion["rule"] != "mixture" or gate is None:
        return ()
    alpha, floor = promotion["alpha"], promotion["floor"]
    return tuple(PromoteTest.against(bar.target, alpha, floor, bar.min_samples or 1) for bar in gate.bars)


def _keep_tests(spec: RulesSpec, bars: list[Bar]) -> tuple[KeepTest, ...]:
    demotion = normalise_demotion(spec.demotion)
    if demotion["rule"] != "sprt":
        return ()
    margin, threshold, floor = demotion["margin"], demotion["threshold"], demotion["floor"]
    return tuple(
        KeepTest.between(
            bar.target, bar.target - 2 * margin, threshold, floor, bar.min_samples or demotion["min_samples"]
        )
        for bar in bars
    )


def _resolve_bar(bar: Bar, default_min_samples: int, margin: float) -> BarRule:
    return BarRule(
        metric=bar.metric,
        metric_index=METRIC_INDEX[bar.metric],
        target=bar.target,
        min_samples=bar.min_samples if bar.min_samples is not None else default_min_samples,
        keep_below=Fraction(str(bar.target)) - Fraction(str(margin)),
    )


def normalise_tiers(tiers: Tiers) -> dict[str, Any]:
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


def normalise_demotion(demotion: Demotion) -> dict[str, Any]:
    """Its parameters, the rule's with their defaults written out."""
    return {
        "margin": demotion.margin,
        "min_samples": demotion.min_samples,
        "cooldown": format_duration(demotion.cooldown),
        "rule": demotion.rule,
        **_parameters(demotion, DEMOTION_PARAMETERS[demotion.rule]),
        "tripwire": demotion.tripwire_in_force,
    }


def _parameters(given: Promotion | Demotion, defaults: dict[str, float]) -> dict[str, float]:
    """A rule's parameters as given, each missing one at its default."""
    return {
        name: default if getattr(given, name) is None else getattr(given, name) for name, default in defaults.items()
    }


def normalise_promotion(promotion: Promotion) -> dict[str, Any]:
    """The rule and its parameters, defaults written out."""
    return {"rule": promotion.rule, **_parameters(promotion, PROMOTION_PARAMETERS[promotion.rule])}


def normalise_outcomes(outcomes: Outcomes) -> dict[str, Any]:
    maturity = outcomes.customer.maturity
    return {"customer": {"maturity": None if maturity is None else format_duration(maturity)}}


def normalise(spec: RulesSpec) -> dict[str, Any]:
    """The rules in the policy's vocabulary: every default written out, durations normalised."""
    return {
        "schema": RULES_SCHEMA,
        "window": format_duration(spec.window),
        "allowed_lateness": format_duration(spec.allowed_lateness),
        "lookback": format_duration(spec.lookback),
        "confidence": spec.confidence,
        "acceptance": spec.acceptance.model_dump(),
        "promotion": normalise_promotion(spec.promotion),
        "demotion": normalise_demotion(spec.demotion),
        "tiers": normalise_tiers(spec.tiers),
        "outcomes": normalise_outcomes(spec.outcomes),
        "max_tier": spec.max_tier,
        "read_only": spec.read_only,
    }
