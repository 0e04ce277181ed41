"""The policy loader: every rule of the policy enforced at load, with messages that name the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tiergate.models.policy import PolicyError
from tiergate.streams.policy_file import PolicyFileError, policy_from_mapping, read_policy

EXAMPLE = Path(__file__).parent.parent / "examples" / "policy.yaml"


def example() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


def problems(raw: Any) -> str:
    with pytest.raises(PolicyError) as caught:
        policy_from_mapping(raw)
    return str(caught.value)


def test_the_example_policy_loads_with_defaults_and_per_type_merges() -> None:
    """escalate_to_human's 2d crawl hold deep-merges over the global gate; its bars are kept."""
    policy = policy_from_mapping(example())
    escalate = policy.types["escalate_to_human"]
    assert escalate.hold[0] == 2 * 86400 and escalate.promote_bars[0][0].metric == "acceptance_rate"
    assert policy.types["reply_to_ticket"].hold[0] == 7 * 86400
    assert policy.types["refund_over_50"].max_tier == 1 and policy.types["lookup_order"].read_only
    assert abs(policy.types["reply_to_ticket"].z - 1.959964) < 1e-6


def test_the_sha256_depends_on_meaning_not_spelling() -> None:
    """168h and 7d are the same lookback; key order does not matter; a changed target changes the sha."""
    a, b = example(), example()
    b["lookback"] = "168h"
    b = dict(reversed(list(b.items())))
    assert policy_from_mapping(a).sha256 == policy_from_mapping(b).sha256
    b["tiers"]["crawl"]["promote"]["bars"][0]["target"] = 0.91
    assert policy_from_mapping(a).sha256 != policy_from_mapping(b).sha256


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda p: p["tiers"]["walk"]["promote"].update(
                bars=[{"metric": "completion_rate", "target": 0.95, "min_samples": 100}]
            ),
            "tiers.walk.promote.bars: tiers.walk.promote must include a customer metric (customer_success_rate)",
        ),
        (
            lambda p: p.update(lookback="90m"),
            "lookback: 1h30m is not a whole number of windows (1h): use a multiple of 1h",
        ),
        (
            lambda p: p["tiers"]["run"]["keep"][0].update(target=0.99),
            "tiers.run.keep.0.target: keep target 0.99 is above the customer_success_rate target 0.97 "
            "of the gate into run",
        ),
        (lambda p: p["tiers"]["run"]["keep"][0].update(metric="nps"), "tiers.run.keep.0.metric: unknown metric 'nps'"),
        (lambda p: p.update(window="1 hour"), "window: '1 hour' is not a duration"),
        (
            lambda p: p["tiers"]["crawl"]["promote"]["bars"][0].pop("min_samples"),
            "tiers.crawl.promote.bars.0.min_samples: every promote bar states its min_samples",
        ),
        (
            lambda p: p["tiers"]["run"].update(
                promote={"hold": "1d", "bars": [{"metric": "customer_success_rate", "target": 0.9, "min_samples": 1}]}
            ),
            "tiers.run.promote: run is the top tier",
        ),
        (
            lambda p: p["tiers"]["walk"]["keep"].append({"metric": "acceptance_rate", "target": 0.5}),
            "tiers.walk.keep.1.metric: acceptance_rate cannot be observed at walk",
        ),
        (
            lambda p: p["tiers"]["crawl"]["promote"].update(
                bars=[{"metric": "customer_success_rate", "target": 0.9, "min_samples": 5}]
            ),
            "Crawl→Walk is judged on human acceptance",
        ),
        (lambda p: p["action_types"].update(x={"read_only": True, "max_tier": "walk"}), "action_types.x.max_tier"),
        (
            lambda p: p["action_types"].update(
                y={
                    "tiers": {
                        "walk": {"promote": {"bars": [{"metric": "completion_rate", "target": 0.9, "min_samples": 5}]}}
                    }
                }
            ),
            "action_types.y.tiers.walk.promote.bars: tiers.walk.promote must include a customer metric",
        ),
        (lambda p: p.update(confidence=1.5), "confidence: Input should be less than 1"),
        (lambda p: p.update(colour="blue"), "colour: is not a policy field"),
        (lambda p: p.pop("policy_version"), "policy_version: is required"),
        (lambda p: p.update(action_types={}), "action_types"),
        (lambda p: p["promotion"].update(rule="bayes"), "promotion.rule: unknown rule 'bayes': use mixture or wilson"),
        (lambda p: p["demotion"].update(rule="cusum"), "demotion.rule: unknown rule 'cusum': use sprt or point"),
        (
            lambda p: p["promotion"].update(rule="wilson"),
            "promotion.alpha: applies only to promotion.rule mixture, not wilson: remove it",
        ),
        (
            lambda p: p["demotion"].update(rule="point"),
            "demotion.threshold: applies only to demotion.rule sprt, not point: remove it",
        ),
        (lambda p: p["promotion"].update(alpha=1.5), "promotion.alpha: Input should be less than 1"),
        (lambda p: p["demotion"].update(floor=1), "demotion.floor: Input should be less than or equal to 0"),
        (lambda p: p["demotion"].update(threshold=0), "demotion.threshold: Input should be greater than 0"),
        (lambda p: p["demotion"].update(tripwire=-1), "demotion.tripwire: Input should be greater than or equal to 0"),
        (lambda p: p["demotion"].update(tripwire=2.5), "demotion.tripwire: Input should be a valid integer"),
        (
            lambda p: p["tiers"]["crawl"]["promote"]["bars"][0].update(target=1.0),
            "tiers.crawl.promote.bars.0.target: a target of 1 can never be shown by promotion.rule mixture: "
            "lower it below 1, or use promotion.rule wilson",
        ),
        (
            lambda p: p["demotion"].update(margin=0.46),
            "tiers.walk.keep.0.target: demotion.rule sprt tests target − 2·margin, 0.9 − 2·0.46 ≤ 0: raise the "
            "target, lower demotion.margin, or use rule point",
        ),
        (
            lambda p: p["demotion"].update(margin=0),
            "demotion.margin: demotion.rule sprt tests target − 2·margin: give a margin above 0",
        ),
        (
            lambda p: p["action_types"].update(z={"promotion": {"rule": "wilson"}}),
            "action_types.z.promotion.alpha: applies only to promotion.rule mixture, not wilson: remove it",
        ),
        (
            lambda p: p["action_types"].update(z="walk"),
            "action_types.z: must be a mapping (e.g. {} or {max_tier: walk})",
        ),
        (lambda p: p["tiers"].update(crawl=5), "tiers.crawl: must be a mapping of its fields"),
        (lambda p: p.update(promotion="mixture"), "promotion: must be a mapping of its fields"),
    ],
)
def test_a_broken_rule_is_reported_with_its_field_and_fix(change: Any, expected: str) -> None:
    """Each rule of the method, broken once, stops the load with a message that says where and what to do
    (never a class name of the loader's)."""
    raw = example()
    change(raw)
    assert expected in problems(raw) and "instance of" not in problems(raw)


def test_a_policy_that_names_no_rule_gets_the_sound_rules_written_out() -> None:
    """Unnamed bar rules are the sound ones, every parameter written out (so the sha covers them); an old log
    reads the same document with the v1 rules, and a document that names its rules reads the same both ways."""
    raw = example()
    del raw["promotion"]
    raw["demotion"] = {"margin": 0.05, "min_samples": 20, "cooldown": "3d"}
    policy = policy_from_mapping(raw)
    rules = policy.types["reply_to_ticket"].mapping
    assert rules["promotion"] == {"rule": "mixture", "alpha": 0.2, "floor": -10.0}
    assert rules["demotion"] == {
        "margin": 0.05,
        "min_samples": 20,
        "cooldown": "3d",
        "rule": "sprt",
        "threshold": 2.0,
        "floor": -4.0,
        "tripwire": 6,
    }
    old = policy.before_activations.types["reply_to_ticket"].mapping
    assert old["promotion"] == {"rule": "wilson"}
    assert old["demotion"] == {"margin": 0.05, "min_samples": 20, "cooldown": "3d", "rule": "point", "tripwire": 0}
    assert policy.before_activations.sha256 != policy.sha256
    named = policy_from_mapping(example())
    assert named.before_activations is named and named.types == policy.types


def test_a_type_may_name_its_own_rules() -> None:
    """Per action type, promotion and demotion deep-merge over the globals like the rest of the policy; null
    takes back a parameter the globals give, so a type can use a rule without it."""
    raw = example()
    raw["action_types"]["refund_over_50"] = {
        "max_tier": "walk",
        "promotion": {"alpha": 0.1},
        "demotion": {"rule": "point", "tripwire": 3, "threshold": None, "floor": None},
    }
    rules = policy_from_mapping(raw).types["refund_over_50"]
    assert rules.mapping["promotion"] == {"rule": "mixture", "alpha": 0.1, "floor": -10.0}
    assert (rules.demotion_rule, rules.tripwire, rules.keep_tests) == ("point", 3, ((), (), ()))
    assert policy_from_mapping(raw).types["reply_to_ticket"].tripwire == 6


def test_errors_in_a_file_carry_line_numbers(tmp_path: Path) -> None:
    """The YAML reader points each problem at the line of the field."""
    text = (
        EXAMPLE.read_text()
        .replace("lookback: 7d", "lookback: 90m")
        .replace("metric: customer_success_rate, target: 0.97}]", "metric: nps, target: 0.97}]")
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        read_policy(path)
    lines = text.splitlines()
    lookback_line = next(i for i, line in enumerate(lines, 1) if line.startswith("lookback:"))
    assert f"policy.yaml:{lookback_line}: lookback: 1h30m is not a whole number" in str(caught.value)
    nps_line = next(i for i, line in enumerate(lines, 1) if "metric: nps" in line)
    assert f"policy.yaml:{nps_line}: tiers.run.keep.0.metric: unknown metric 'nps'" in str(caught.value)


def test_unreadable_and_malformed_files_say_so(tmp_path: Path) -> None:
    """A missing file and bad YAML are errors with the path (and line), not tracebacks."""
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        read_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: 1h\ntiers: [unclosed\n")
    with pytest.raises(PolicyFileError, match=r"bad.yaml:\d+: not valid YAML"):
        read_policy(bad)


def test_two_operator_keys_with_one_key_id_are_refused_where_the_second_is_given(tmp_path: Path) -> None:
    """A signed event names only its key_id: two `operators` entries sharing one (different actors here) are
    refused at the second, naming the first; a document the log already holds still reads (its successor
    must be appliable)."""
    key = "tr8g/v9wHmiMvSapvCsMa+Tg+AWIRhBNhxiDPBpKla4="
    text = EXAMPLE.read_text() + (
        "operators:\n"
        f"  - {{key_id: ops-2026, public_key: {key}, actor: ops@example.com}}\n"
        f"  - {{key_id: ops-2026, public_key: {key}, actor: oncall@example.com}}\n"
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        read_policy(path)
    second = len(text.splitlines())
    assert str(caught.value) == (
        f"{path}:{second}: operators.1.key_id: 'ops-2026' is already the key_id of operators.0 (ops@example.com): "
        "give each key its own key_id (`tiergate keys new --key-id NEW_ID --actor …` makes a new key) or remove "
        "the repeated entry"
    )
    recorded = policy_from_mapping(yaml.safe_load(text), recorded=True)
    assert [operator["actor"] for operator in recorded.operators] == ["ops@example.com", "oncall@example.com"]
