"""`tiergate oc`: the operating characteristic is measured through the real fold, deterministically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tiergate.streams import oc
from tiergate.streams.cli import main
from tiergate.streams.policy_file import policy_from_mapping, read_policy

from .builders import BASE_POLICY, policy

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "policy.yaml"


def judge(**changes: Any) -> oc.Judge:
    return oc.Judge(policy(**changes))


def case(cases: list[oc.Case], label: str, volume: float, metric: str | None = None) -> oc.Case:
    return next(c for c in cases if c.label == label and c.volume == volume and metric in (None, c.metric))


# -- the cases ---------------------------------------------------------------------------------------------


def test_rates_around_a_target_are_labelled_sorted_and_inside_the_unit_interval() -> None:
    """A promote bar at 0.97 is swept 0.93…0.99 with its good rate 0.985; a keep bar at 0.97 never above 1."""
    assert oc.gate_rates(0.97) == [
        ("t − 0.04", 0.93),
        ("t − 0.02", 0.95),
        ("t", 0.97),
        ("good", 0.985),
        ("t + 0.02", 0.99),
    ]
    rates = oc.keep_rates(0.97, 0.05)
    assert rates[0] == ("t − 2m", 0.87)
    assert all(0 < rate <= 1 for _, rate in rates)
    assert oc.good_rate(0.9) == 0.94 and oc.good_rate(0.99) == 0.995


def test_types_with_the_same_rules_for_a_tier_share_its_cases() -> None:
    """On the example policy: one crawl gate for three types and one for escalate_to_human (hold 2d); no case
    for the read-only type, none above refund_over_50's max_tier."""
    evaluator = oc.Judge(read_policy(EXAMPLE))
    groups = {c.group for c in oc.gate_cases(evaluator, evaluator.catalog(), [10.0])}
    assert groups == {
        "escalate_to_human: crawl gate acceptance_rate",
        "refund_over_50/refund_up_to_50/reply_to_ticket: crawl gate acceptance_rate",
        "escalate_to_human/refund_up_to_50/reply_to_ticket: walk gate completion_rate",
        "escalate_to_human/refund_up_to_50/reply_to_ticket: walk gate customer_success_rate",
    }
    keep_groups = {c.group for c in oc.keep_cases(evaluator, evaluator.catalog(), [2.0])}
    assert "refund_over_50: walk keep completion_rate" in keep_groups
    assert not any("refund_over_50" in g and "run keep" in g for g in keep_groups)
    assert not any("lookup_order" in g for g in groups | keep_groups)


def test_a_gate_case_feeds_the_other_bars_of_the_gate_at_their_good_rate() -> None:
    """Sweeping the walk gate's completion bar, its customer bar is fed at its good rate, at the same volume."""
    cases = oc.gate_cases(judge(), ["t"], [4.0])
    walk = case([c for c in cases if c.tier == 1], "t − 0.02", 4.0, "completion_rate")
    assert walk.feeds == (("completion_rate", 0.48), ("customer_success_rate", 0.54))
    assert walk.hold_days == pytest.approx(2 / 24)


# -- through the fold ----------------------------------------------------------------------------------------


def test_every_type_that_always_fails_its_keep_bar_is_demoted_by_the_fold_on_its_first_day() -> None:
    """At rate 0 and 10 outcomes an hour the keep bar (min_samples 10) demotes every type within hours."""
    evaluator = judge()
    keep = oc.keep_cases(evaluator, ["t"], [10.0])
    zero = next(c for c in keep if c.tier == 1 and c.rate == 0.4)  # t − 2m at target 0.5: a clear regression
    result = oc.run_case(zero, 3, seed=1, judge=evaluator)
    assert all(day is not None and day < 1 for day in result.days)


def test_what_oc_measures_is_what_the_policy_decides() -> None:
    """The same case under a policy whose keep bar needs 100 000 samples and that has no tripwire: the fold
    demotes no one."""
    regression = next(c for c in oc.keep_cases(judge(), ["t"], [10.0]) if c.tier == 1 and c.label == "t − 2m")
    thin = judge(demotion={"min_samples": 100_000, "tripwire": 0})
    assert oc.run_case(regression, 2, seed=1, judge=thin).days == [None, None]


def test_a_perfect_type_is_promoted_only_once_its_hold_has_passed() -> None:
    """At rate 1 every type promotes out of crawl, never before the 2h hold, well within hold + 7 d."""
    evaluator = judge()
    crawl = oc.gate_cases(evaluator, ["t"], [10.0])
    perfect = case([c for c in crawl if c.tier == 0], "good", 10.0)
    perfect = oc.Case(**{**_fields(perfect), "rate": 1.0, "feeds": (("acceptance_rate", 1.0),)})
    result = oc.run_case(perfect, 3, seed=1, judge=evaluator)
    assert all(day is not None and perfect.hold_days <= day < 1 for day in result.days)
    assert result.share(result.window_days) == 1.0


def _fields(value: oc.Case) -> dict[str, Any]:
    return {name: getattr(value, name) for name in oc.Case.__slots__}


def test_a_case_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    """Deterministic per seed: each simulated type draws from its own generator seeded by seed, case and number."""
    evaluator = judge()
    borderline = case([c for c in oc.keep_cases(evaluator, ["t"], [2.0]) if c.tier == 1], "t − m/2", 2.0)
    first = oc.run_case(borderline, 6, seed=3, judge=evaluator).days
    assert oc.run_case(borderline, 6, seed=3, judge=evaluator).days == first
    assert oc.run_case(borderline, 6, seed=4, judge=evaluator).days != first


# -- targets and output ---------------------------------------------------------------------------------------


def _result(kind: oc.CaseKind, label: str, volume: float, days: list[float | None]) -> oc.CaseResult:
    horizon = oc.GATE_HORIZON_DAYS if kind == "gate" else oc.KEEP_HORIZON_DAYS
    made = oc.Case(kind, 1, "completion_rate", 0.9, label, 0.92, volume, (), horizon, 14.0, ("t",), "g")
    return oc.CaseResult(made, days)


def test_targets_are_checked_on_the_cases_that_measure_them() -> None:
    """3 of 40 falsely demoted misses ≤ 5%; 2 of 40 meets it; a median of 1.2 d misses ≤ 1 d; other volumes
    measure no target."""
    three = _result("keep", "t + 0.02", 2.0, [1.0, 2.0, 3.0] + [None] * 37)
    two = _result("keep", "t + 0.02", 0.5, [1.0, 2.0] + [None] * 38)
    slow = _result("keep", "t − 2m", 2.0, [1.2] * 40)
    elsewhere = _result("keep", "t + 0.02", 10.0, [1.0] * 40)
    checked = oc.targets([three, two, slow, elsewhere])
    assert [(t.volume, t.figure, t.met) for t in checked] == [
        (2.0, "7.5%", False),
        (0.5, "5.0%", True),
        (2.0, "1.20 d (100% demoted)", False),
    ]


def test_promotion_targets_count_within_hold_plus_seven_days_and_sixty_days() -> None:
    """Good types count within hold + 7 d (21 d for a 14 d hold); false promotions within 60 d."""
    good = _result("gate", "good", 10.0, [20.0] * 38 + [22.0, None])
    false = _result("gate", "t − 0.02", 10.0, [59.0, 61.0] + [None] * 38)
    assert good.window_days == 21.0
    checked = oc.targets([good, false])
    assert [(t.figure, t.met) for t in checked] == [("95.0% (median day 20.0)", True), ("2.5%", True)]


def test_the_command_prints_json_and_draws_the_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tiergate oc` at low volume: valid JSON with every case, a PNG, and an exit code that says whether
    every target measured was met."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(BASE_POLICY))
    png = tmp_path / "oc.png"
    argv = ["oc", str(path), "--type", "t", "--reps", "1", "--volumes", "0.5", "--gate-volumes", "0.5"]
    code = main([*argv, "--json", "--png", str(png)])
    report = json.loads(capsys.readouterr().out)
    assert {c["kind"] for c in report["cases"]} == {"gate", "keep"}
    assert code == (0 if all(t["met"] for t in report["targets"]) else 1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, "--json"]) == code
    assert json.loads(capsys.readouterr().out) == report


def test_an_unknown_type_is_an_error_naming_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    """`--type nope` fails with exit code 2 and lists the action types there are."""
    assert main(["oc", str(EXAMPLE), "--type", "nope"]) == 2
    assert "reply_to_ticket" in capsys.readouterr().err


def _example(**rules: Any) -> oc.Judge:
    """examples/policy.yaml with its bar rules replaced."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(rules)
    return oc.Judge(policy_from_mapping(raw))


def test_the_sound_rules_falsely_demote_fewer_low_volume_types_than_v1_on_the_same_seeds() -> None:
    """On the example's Walk keep bar at keep target + 0.02 and half an outcome an hour, the same 20 simulated
    histories demote fewer types within 30 days under the example's (sound) rules than under v1 named, and
    the sound rules still demote every type of a clear regression (target − 2·margin, 2 an hour)."""
    sound = _example()
    v1 = _example(
        promotion={"rule": "wilson"},
        demotion={"margin": 0.05, "min_samples": 20, "cooldown": "3d", "rule": "point", "tripwire": 0},
    )
    assert sound.rules("reply_to_ticket")["demotion"]["rule"] == "sprt"
    keep = [c for c in oc.keep_cases(sound, ["reply_to_ticket"], [0.5, 2.0]) if c.metric == "completion_rate"]
    healthy, regressed = case(keep, "t + 0.02", 0.5), case(keep, "t − 2m", 2.0)
    falsely = [oc.run_case(healthy, 20, seed=1, judge=judge).share(30) for judge in (sound, v1)]
    assert falsely[0] < falsely[1]
    assert oc.run_case(regressed, 5, seed=1, judge=sound).share(30) == 1.0


def test_only_the_target_cases_print_as_markdown_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """`--targets --markdown`: the cases that measure a target, as Markdown tables a document can carry."""
    argv = ["oc", str(ROOT / "tests" / "golden" / "policy.yaml"), "--type", "reply_to_ticket", "--reps", "1"]
    main([*argv, "--targets", "--markdown"])
    out = capsys.readouterr().out
    assert "| falsely demoted within 30 d at keep target + 0.02" in out.replace("  ", " ")
    assert "t − 0.04" not in out  # a rate no target names is not simulated
