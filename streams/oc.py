"""`tiergate oc`: the operating characteristic of a policy, by simulation through the real fold.

For each gate and keep bar of each action type, independent simulated types are given a true success rate
and a volume; their outcome events, drawn from a seeded random generator, are folded by `models.fold.step`
one day at a time, and the first promotion or demotion it decides is read off the decision log. Nothing
here judges a bar itself: what the fold decides under the rules the policy names is what is measured.

How a simulated type reaches the tier under test without first climbing: its history starts with the
activation of its rules and operator `promote` overrides, one per tier, at the start time (a human
promote ignores hold and cooldown). The type then sits at the tier with empty evidence and no pin,
exactly as after an automatic promotion, and only outcomes of the metrics under test follow:
- a **gate** case feeds every bar of the tier's promote gate: the bar under test at its true rate, the
  others at their "good" rate min(t + 0.04, (1 + t)/2), each at the same volume (outcomes an hour per bar);
- a **keep** case feeds only the keep bar's metric, so the tier's other bars stay inconclusive and the type
  can only leave the tier by that bar.

Types whose policy for the tier under test is the same share their cases. Deterministic per seed: each
simulated type draws from its own `random.Random`, seeded by the seed, the case and its number.

The gate-quality targets (docs/gate-quality.md), each a share of the simulated types of one case:
- falsely demoted within 30 days at keep target + 0.02, at 0.5 and at 2 outcomes an hour: ≤ 5%;
- median time to demote at keep target − 2·margin, at 2 an hour: ≤ 1 day;
- falsely promoted within 60 days at promote target − 0.02, at 10 an hour per bar: ≤ 5%;
- promoted within hold + 7 days with every bar of the gate at its good rate, at 10 an hour per bar: ≥ 95%.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tiergate.models.decisions import Decision
from tiergate.models.durations import format_duration, parse_duration
from tiergate.models.fold import Event, step
from tiergate.models.policy import Policy, canonical_json
from tiergate.models.state import State
from tiergate.models.wire import TIERS, Outcome, OutcomeKind, Override, PolicyEvent, Tick, Tier, parse_ts

DAY = 86400
HOUR = 3600
START = parse_ts("2026-01-05T00:00:00Z")  # on a window boundary for any window that divides a day
GATE_HORIZON_DAYS = 60  # false promotion is judged within 60 days
KEEP_HORIZON_DAYS = 30  # false demotion is judged within 30 days
HOLD_GRACE_DAYS = 7  # good types should promote within hold + 7 days

# metric -> (outcome kind, result on success, result on failure)
OUTCOME_OF: dict[str, tuple[OutcomeKind, str, str]] = {
    "acceptance_rate": ("review", "accepted", "rejected"),
    "completion_rate": ("internal", "completed", "failed"),
    "customer_success_rate": ("customer", "success", "failure"),
}

CaseKind = Literal["gate", "keep"]


@dataclass(frozen=True, slots=True)
class Judge:
    """The real fold under a loaded policy: each simulated type's log starts with the activation of its
    rules, as a new log does, and is folded by `tiergate.models.fold.step`."""

    policy: Policy

    @property
    def version(self) -> str:
        return self.policy.version

    def catalog(self) -> list[str]:
        return self.policy.catalog

    def rules(self, name: str) -> dict[str, Any]:
        """The type's complete rules as its activation carries them: types with equal rules for a tier share
        its cases."""
        return dict(self.policy.types[name].mapping)

    def start(self, name: str) -> State:
        """A state holding only `name`, activated at START, before any other event."""
        state = State({})
        step(state, self.activation(name))
        return state

    def activation(self, name: str) -> PolicyEvent:
        return PolicyEvent.model_construct(
            type="policy",
            event_id=f"policy/oc/{name}",
            ts=START,
            action_type=name,
            activation_id="oc",
            parent_sha256=None,
            policy_version=self.policy.version,
            policy_sha256=self.policy.sha256,
            actor="oc",
            reason="oc: the policy under study",
            rules=dict(self.policy.types[name].mapping),
            retired=None,
            operators=[],
        )

    def fold(self, events: list[Event], state: State) -> list[Decision]:
        """Fold `events` onward from `state` (advanced in place); the decisions they caused."""
        decisions: list[Decision] = []
        for event in events:
            decisions.extend(step(state, event).decisions)
        return decisions


def good_rate(target: float) -> float:
    """The rate at which a type should clearly pass a bar: min(t + 0.04, (1 + t)/2)."""
    return round(min(target + 0.04, (1 + target) / 2), 6)


def gate_rates(target: float) -> list[tuple[str, float]]:
    """True rates around a promote target, each with the label the table shows."""
    points = [
        ("t − 0.04", target - 0.04),
        ("t − 0.02", target - 0.02),
        ("t", target),
        ("t + 0.02", target + 0.02),
        ("good", good_rate(target)),
    ]
    return _within_unit(points)


def keep_rates(target: float, margin: float) -> list[tuple[str, float]]:
    """True rates around a keep target, from target − 2·margin (a clear regression) to a healthy rate."""
    points = [
        ("t − 2m", target - 2 * margin),
        ("t − 1.5m", target - 1.5 * margin),
        ("t − m", target - margin),
        ("t − m/2", target - margin / 2),
        ("t", target),
        ("t + 0.02", target + 0.02),
        ("good", good_rate(target)),
    ]
    return _within_unit(points)


def _within_unit(points: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Rounded, inside (0, 1], in rate order, without repeating a rate (a later label on a taken rate is
    dropped)."""
    seen: set[float] = set()
    kept = []
    for label, rate in points:
        rate = round(rate, 6)
        if 0 < rate <= 1 and rate not in seen:
            seen.add(rate)
            kept.append((label, rate))
    return sorted(kept, key=lambda point: point[1])


@dataclass(frozen=True, slots=True)
class Case:
    """One point of the operating characteristic: a bar of a tier, at a true rate and a volume."""

    kind: CaseKind
    tier: int  # the tier under test (the gate leads out of it; the keep bar is kept at it)
    metric: str  # the bar under test
    target: float
    label: str  # where the rate sits relative to the target ("t − 0.02", "good", …)
    rate: float
    volume: float  # outcomes an hour, per fed metric
    feeds: tuple[tuple[str, float], ...]  # (metric, true rate) of every metric fed
    horizon_days: int
    hold_days: float  # the gate's hold (0 for keep cases)
    types: tuple[str, ...]  # the action types whose policy this case measures
    group: str  # the cases of one bar for one set of types share it

    @property
    def name(self) -> str:
        return f"{self.group}/{self.label}/{self.volume:g}"


@dataclass(slots=True)
class CaseResult:
    """What the fold decided for each simulated type of a case: the day of its first move, if any."""

    case: Case
    days: list[float | None] = field(default_factory=list)  # day of the move measured, None = none
    other_moves: int = 0  # types that left the tier the other way (a gate case demoted, a keep case promoted)

    def share(self, within_days: float) -> float:
        return sum(1 for day in self.days if day is not None and day <= within_days) / len(self.days)

    def median_day(self) -> float | None:
        """The median day of the move over all types (None when half or more never moved)."""
        ordered = sorted(math.inf if day is None else day for day in self.days)
        middle = statistics.median(ordered)
        return None if math.isinf(middle) else middle

    @property
    def window_days(self) -> float:
        """The window the headline share is judged in: hold + 7 d for a gate, the horizon for a keep bar."""
        if self.case.kind == "gate":
            return self.case.hold_days + HOLD_GRACE_DAYS
        return float(self.case.horizon_days)

    def record(self) -> dict[str, Any]:
        case = self.case
        return {
            "kind": case.kind,
            "group": case.group,
            "types": list(case.types),
            "tier": TIERS[case.tier],
            "metric": case.metric,
            "target": case.target,
            "label": case.label,
            "rate": case.rate,
            "volume": case.volume,
            "feeds": dict(case.feeds),
            "horizon_days": case.horizon_days,
            "hold_days": case.hold_days,
            "reps": len(self.days),
            "share_within_window": round(self.share(self.window_days), 4),
            "window_days": self.window_days,
            "share_within_horizon": round(self.share(case.horizon_days), 4),
            "median_day": None if (median := self.median_day()) is None else round(median, 3),
            "other_moves": self.other_moves,
            "days": [None if day is None else round(day, 4) for day in self.days],
        }


# -- the cases of a policy ------------------------------------------------------------------------------


def _shared_types(judge: Judge, names: Sequence[str], tier: int, kind: CaseKind) -> dict[str, list[str]]:
    """Types grouped by what decides the case: the tier's own rules, the demotion rules, and whether
    the type may leave the tier upward at all."""
    groups: dict[str, list[str]] = {}
    for name in names:
        rules = judge.rules(name)
        if rules.get("read_only"):
            continue
        tier_rules = rules["tiers"][TIERS[tier]]
        ceiling = TIERS.index(rules["max_tier"])
        if tier > ceiling or (kind == "gate" and ("promote" not in tier_rules or tier + 1 > ceiling)):
            continue
        if kind == "keep" and not tier_rules.get("keep"):
            continue
        others = {k: v for k, v in rules.items() if k not in ("tiers", "max_tier", "read_only")}
        signature = canonical_json([tier, tier_rules, others, tier < ceiling])
        groups.setdefault(signature, []).append(name)
    return groups


def gate_cases(judge: Judge, names: Sequence[str], volumes: Sequence[float]) -> list[Case]:
    """For every promote gate: each bar swept over rates around its target, the others at their good rate."""
    cases = []
    for tier in range(len(TIERS) - 1):
        for types in _shared_types(judge, names, tier, "gate").values():
            gate = judge.rules(types[0])["tiers"][TIERS[tier]]["promote"]
            hold_days = _duration_days(gate["hold"])
            for bar in gate["bars"]:
                group = f"{'/'.join(types)}: {TIERS[tier]} gate {bar['metric']}"
                for label, rate in gate_rates(bar["target"]):
                    feeds = tuple(
                        (other["metric"], rate if other is bar else good_rate(other["target"]))
                        for other in gate["bars"]
                    )
                    for volume in volumes:
                        cases.append(
                            Case(
                                "gate",
                                tier,
                                bar["metric"],
                                bar["target"],
                                label,
                                rate,
                                volume,
                                feeds,
                                GATE_HORIZON_DAYS,
                                hold_days,
                                tuple(types),
                                group,
                            )
                        )
    return cases


def keep_cases(judge: Judge, names: Sequence[str], volumes: Sequence[float]) -> list[Case]:
    """For every keep bar: its metric alone, swept from target − 2·margin to a healthy rate."""
    cases = []
    for tier in range(1, len(TIERS)):
        for types in _shared_types(judge, names, tier, "keep").values():
            rules = judge.rules(types[0])
            margin = rules["demotion"]["margin"]
            for bar in rules["tiers"][TIERS[tier]]["keep"]:
                group = f"{'/'.join(types)}: {TIERS[tier]} keep {bar['metric']}"
                for label, rate in keep_rates(bar["target"], margin):
                    for volume in volumes:
                        cases.append(
                            Case(
                                "keep",
                                tier,
                                bar["metric"],
                                bar["target"],
                                label,
                                rate,
                                volume,
                                ((bar["metric"], rate),),
                                KEEP_HORIZON_DAYS,
                                0.0,
                                tuple(types),
                                group,
                            )
                        )
    return cases


def _duration_days(text: str) -> float:
    return parse_duration(text) / DAY


# -- one simulated type ---------------------------------------------------------------------------------


def arrivals(rng: random.Random, feeds: tuple[tuple[str, float], ...], volume: float) -> Iterator[tuple[int, int]]:
    """(ts, feed index) of every outcome, in time order: one Poisson process per fed metric."""
    per_second = volume / HOUR
    pending = [(START + rng.expovariate(per_second), i) for i in range(len(feeds))]
    heapq.heapify(pending)
    while True:
        moment, i = pending[0]
        yield int(moment), i
        heapq.heapreplace(pending, (moment + rng.expovariate(per_second), i))


def _climb(name: str, tier: int) -> list[Event]:
    """Operator promotes from crawl up to `tier`, all at the start."""
    return [
        Override.model_construct(
            type="override",
            event_id=f"oc/promote/{step}",
            ts=START,
            action_type=name,
            op="promote",
            actor="oc",
            reason=f"oc: start the simulated type at {TIERS[tier]}",
        )
        for step in range(1, tier + 1)
    ]


def simulate(case: Case, rep: int, seed: int, judge: Judge) -> tuple[str | None, float | None]:
    """Fold one simulated type's history day by day until the fold promotes or demotes it, or the horizon.
    Returns (kind of the first automatic move, its day after the start) or (None, None)."""
    rng = random.Random(f"{seed}/{case.name}/{rep}")  # str seeds are hashed (sha512): stable across runs
    name = case.types[0]
    state = judge.start(name)
    lateness = parse_duration(judge.rules(name)["allowed_lateness"])
    feeds = [(_templates(name, TIERS[case.tier], metric), rate) for metric, rate in case.feeds]
    stream = arrivals(rng, case.feeds, case.volume)
    pending: list[Event] = _climb(name, case.tier)
    ts, feed = next(stream)
    count = 0
    for day in range(1, case.horizon_days + 1):
        end = START + day * DAY
        while ts < end:
            (success, failure), rate = feeds[feed]
            count += 1
            template = success if rng.random() < rate else failure
            pending.append(template.model_copy(update={"event_id": f"o{count}", "ts": ts, "action_id": f"a{count}"}))
            ts, feed = next(stream)
        pending.append(Tick.model_construct(type="tick", event_id=f"tick/{day}", ts=end + lateness, action_type=name))
        for decision in judge.fold(pending, state):
            if decision.kind in ("promote", "demote"):
                return decision.kind, ((decision.at or START) - START) / DAY
        pending = []
    return None, None


def _templates(name: str, tier: Tier, metric: str) -> tuple[Outcome, Outcome]:
    """A success and a failure outcome of `metric` at `tier`; each simulated outcome is a copy with its own
    id and time (copying costs less than building a model, and more than the fold's step would allow)."""
    kind, good, bad = OUTCOME_OF[metric]
    made = [
        Outcome.model_construct(
            type="outcome", event_id="-", ts=START, action_type=name, action_id="-", tier=tier, kind=kind, result=result
        )
        for result in (good, bad)
    ]
    return made[0], made[1]


def run_case(case: Case, reps: int, seed: int, judge: Judge, advance: Callable[[], object] | None = None) -> CaseResult:
    """Simulate `reps` independent types of one case."""
    result = CaseResult(case)
    wanted = "promote" if case.kind == "gate" else "demote"
    for rep in range(reps):
        kind, day = simulate(case, rep, seed, judge)
        result.days.append(day if kind == wanted else None)
        result.other_moves += kind is not None and kind != wanted
        if advance is not None:
            advance()
    return result


# -- the gate-quality targets (docs/gate-quality.md) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One gate-quality target checked against the result of the case that measures it."""

    what: str
    group: str
    volume: float
    figure: str  # the measured figure, as shown
    met: bool

    def record(self) -> dict[str, Any]:
        return {"what": self.what, "group": self.group, "volume": self.volume, "figure": self.figure, "met": self.met}


FALSE_DEMOTION_VOLUMES = (0.5, 2.0)
DEMOTION_SPEED_VOLUME = 2.0
GATE_VOLUME = 10.0


def target_of(case: Case) -> str | None:
    """Which gate-quality target a case measures, if any (cases at other rates or volumes measure none)."""
    if case.kind == "keep" and case.label == "t + 0.02" and case.volume in FALSE_DEMOTION_VOLUMES:
        return "false demotion"
    if case.kind == "keep" and case.label == "t − 2m" and case.volume == DEMOTION_SPEED_VOLUME:
        return "time to demote"
    if case.kind == "gate" and case.label == "t − 0.02" and case.volume == GATE_VOLUME:
        return "false promotion"
    if case.kind == "gate" and case.label == "good" and case.volume == GATE_VOLUME:
        return "promotion"
    return None


def _false_demotion(result: CaseResult) -> Target:
    case, share = result.case, result.share(result.case.horizon_days)
    what = f"falsely demoted within {case.horizon_days} d at keep target + 0.02 ({case.rate:g})"
    return Target(what, case.group, case.volume, f"{share:.1%}", share <= 0.05)


def _time_to_demote(result: CaseResult) -> Target:
    case, median = result.case, result.median_day()
    shown = "never" if median is None else f"{median:.2f} d ({result.share(case.horizon_days):.0%} demoted)"
    what = f"median time to demote at target − 2·margin ({case.rate:g})"
    return Target(what, case.group, case.volume, shown, median is not None and median <= 1)


def _false_promotion(result: CaseResult) -> Target:
    case, share = result.case, result.share(result.case.horizon_days)
    what = f"falsely promoted within {case.horizon_days} d at target − 0.02 ({case.rate:g})"
    return Target(what, case.group, case.volume, f"{share:.1%}", share <= 0.05)


def _promotion(result: CaseResult) -> Target:
    case, share, median = result.case, result.share(result.window_days), result.median_day()
    when = "" if median is None else f" (median day {median:.1f})"
    rates = ", ".join(f"{metric} {rate:g}" for metric, rate in case.feeds)
    what = f"promoted within hold + {HOLD_GRACE_DAYS} d ({_days(result.window_days)}) at {rates}"
    return Target(what, case.group, case.volume, f"{share:.1%}{when}", share >= 0.95)


def _days(days: float) -> str:
    """`21 d` for whole days, else the duration (`170h`)."""
    return f"{days:.0f} d" if days == int(days) else format_duration(round(days * DAY))


CHECKS: dict[str, Callable[[CaseResult], Target]] = {
    "false demotion": _false_demotion,
    "time to demote": _time_to_demote,
    "false promotion": _false_promotion,
    "promotion": _promotion,
}


def targets(results: Sequence[CaseResult]) -> list[Target]:
    """The gate-quality targets, checked on every case that measures one."""
    return [CHECKS[kind](result) for result in results if (kind := target_of(result.case)) is not None]


# -- the whole characteristic ---------------------------------------------------------------------------


@dataclass(slots=True)
class Characteristic:
    """Every case's result and the gate-quality targets they meet or miss."""

    policy_version: str
    seed: int
    reps: int
    results: list[CaseResult]

    @property
    def targets(self) -> list[Target]:
        return targets(self.results)

    def record(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "seed": self.seed,
            "reps": self.reps,
            "targets": [target.record() for target in self.targets],
            "cases": [result.record() for result in self.results],
        }


def cases(
    judge: Judge,
    names: Sequence[str],
    keep_volumes: Sequence[float],
    gate_volumes: Sequence[float],
    only_targets: bool = False,
) -> list[Case]:
    """Every case of the named types (or only those that measure a gate-quality target), gates first."""
    every = gate_cases(judge, names, gate_volumes) + keep_cases(judge, names, keep_volumes)
    return [case for case in every if not only_targets or target_of(case) is not None]


def characteristic(
    judge: Judge,
    chosen: Sequence[Case],
    reps: int,
    seed: int,
    advance: Callable[[], object] | None = None,
) -> Characteristic:
    """Simulate `reps` types of every chosen case."""
    results = [run_case(case, reps, seed, judge, advance) for case in chosen]
    return Characteristic(judge.version, seed, reps, results)


# -- output -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grid:
    """One table of the report, before it is drawn (rich on a terminal, Markdown for a document)."""

    title: str
    headers: list[str]
    rows: list[list[str]]

    def rich(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", title_style="bold")
        for header in self.headers:
            table.add_column(header, justify="left" if header in ("types and bar", "case") else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def grids(result: Characteristic) -> list[Grid]:
    """The targets, then each bar's characteristic: share and median day by rate and volume."""
    rows = [
        [target.group, f"{target.volume:g}", target.what, target.figure, "yes" if target.met else "NO"]
        for target in result.targets
    ]
    title = f"gate-quality targets ({result.reps} simulated types per case, seed {result.seed})"
    out = [Grid(title, ["types and bar", "per hour", "case", "measured", "target met"], rows)]
    groups: dict[str, list[CaseResult]] = {}
    for case_result in result.results:
        groups.setdefault(case_result.case.group, []).append(case_result)
    for group, members in groups.items():
        out.append(_group_grid(group, members))
    return out


def _group_grid(group: str, members: list[CaseResult]) -> Grid:
    rates = dict(sorted({m.case.label: m.case.rate for m in members}.items(), key=lambda item: item[1]))
    rows = []
    for volume in sorted({m.case.volume for m in members}):
        row = [f"{volume:g}"]
        for label in rates:
            match = next((m for m in members if m.case.label == label and m.case.volume == volume), None)
            row.append("" if match is None else _cell(match))
        rows.append(row)
    headers = ["per hour"] + [f"{label} ({rate:g})" for label, rate in rates.items()]
    return Grid(_group_title(group, members[0]), headers, rows)


def _group_title(group: str, first: CaseResult) -> str:
    case = first.case
    if case.kind == "keep":
        return f"{group} {case.target:g}: share demoted within {case.horizon_days} d and median day"
    window = format_duration(round(first.window_days * DAY))
    return (
        f"{group} ≥ {case.target:g}: share promoted within hold + {HOLD_GRACE_DAYS} d ({window}), "
        f"in brackets within {case.horizon_days} d, and median day"
    )


def _cell(result: CaseResult) -> str:
    median = result.median_day()
    text = f"{result.share(result.window_days):.0%}"
    if result.case.kind == "gate":
        text += f" ({result.share(result.case.horizon_days):.0%})"
    return text + ("" if median is None else f" {median:.1f}d")


def render_png(result: Characteristic, output: Path) -> None:
    """Share vs true rate, one panel per bar, one curve per volume (matplotlib, the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[CaseResult]] = {}
    for case_result in result.results:
        groups.setdefault(case_result.case.group, []).append(case_result)
    columns = 2
    rows = max(1, math.ceil(len(groups) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False)
    for ax, (group, members) in zip(axes.flat, groups.items(), strict=False):
        first = members[0].case
        for volume in dict.fromkeys(m.case.volume for m in members):
            points = sorted((m.case.rate, m.share(m.window_days)) for m in members if m.case.volume == volume)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{volume:g}/h")
        ax.axvline(first.target, color="grey", linestyle="--", linewidth=1)
        what = f"promoted within hold + {HOLD_GRACE_DAYS} d" if first.kind == "gate" else "demoted within 30 d"
        ax.set_title(textwrap.fill(f"{group} (target {first.target:g})", 70), fontsize=8)
        ax.set_xlabel("true rate")
        ax.set_ylabel(f"share {what}", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    figure.suptitle(f"operating characteristic of policy {result.policy_version}: {result.reps} types per point")
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)
