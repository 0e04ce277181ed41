"""The policy loader: every rule of DESIGN.md §1/§5 enforced at load, with messages that name the field and the fix."""

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
    ],
)
def test_a_broken_rule_is_reported_with_its_field_and_fix(change: Any, expected: str) -> None:
    """Each rule of the method, broken once, stops the load with a message that says where and what to do."""
    raw = example()
    change(raw)
    assert expected in problems(raw)


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
