"""Golden scenarios: readable event histories whose decision logs were reviewed once and must not drift.

Each folder of tests/golden holds events.jsonl, the expected decision log and what is rejected; the
stories are told in tests/golden/scenarios.py. Besides the byte-for-byte comparison, each scenario's
plot is asserted here in a reader's terms, so a regenerated golden file cannot silently change the story.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tiergate.models.fold import fold
from tiergate.models.wire import TIERS, format_ts
from tiergate.streams.cli import main

from .builders import Log
from .golden.scenarios import OLD_LOGS, SCENARIOS, events_jsonl, golden_policy, healthy_low_volume
from .pure_python import compiled, run_pure

GOLDEN = Path(__file__).parent / "golden"

# scenario -> the moves of its promotion log (kind, action type, from, to, at), initial decisions left out
STORIES = {
    "clean_climb": [
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("promote", "reply_to_ticket", "walk", "run", "2026-11-02T09:00:00Z"),
    ],
    "customer_blocks_run": [("promote", "refund_up_to_50", "crawl", "walk", "2026-11-02T04:00:00Z")],
    "regression_and_cooldown": [
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("demote", "reply_to_ticket", "walk", "crawl", "2026-11-02T05:00:00Z"),
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T11:00:00Z"),  # 09:00 + the 6h cooldown's end
    ],
    "cap_and_pin": [
        ("override", "reply_to_ticket", "crawl", "crawl", "2026-11-02T00:06:00Z"),  # pin
        ("override", "reply_to_ticket", "crawl", "crawl", "2026-11-02T04:12:00Z"),  # unpin
        ("promote", "refund_over_50", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T05:00:00Z"),
        ("override", "refund_over_50", "walk", "crawl", "2026-11-02T09:12:00Z"),  # cap
    ],
    "late_and_out_of_order": [("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T05:00:00Z")],
    "thin_evidence": [],
    "policy_changes": [  # the moves; the activations' `policy` decisions that move nothing are left out here
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("promote", "refund_over_50", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("initial", "escalate_to_human", None, "crawl", None),  # added by golden-2
        ("policy", "refund_over_50", "walk", "crawl", "2026-11-02T04:00:00Z"),  # golden-2 lowers its ceiling
        ("retire", "escalate_to_human", "crawl", None, None),  # golden-3 rolls back to the first document
        ("promote", "reply_to_ticket", "walk", "run", "2026-11-02T09:00:00Z"),  # its streak ran on through both
    ],
    "old_log": [  # the clean climb, folded under --policy: the same moves, initial decisions of the old form
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("promote", "reply_to_ticket", "walk", "run", "2026-11-02T09:00:00Z"),
    ],
    # the sound rules keep a healthy low-volume type that v1 demotes at 09:00 (see the test below)
    "healthy_low_volume": [("promote", "refund_up_to_50", "crawl", "walk", "2026-11-02T04:00:00Z")],
    "tripwire_in_a_window": [
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("demote", "reply_to_ticket", "walk", "crawl", "2026-11-02T05:30:00Z"),  # at the 6th failure, not at 06:00
    ],
    "rule_change_restarts_the_streak": [  # v1 would promote at 04:00; the new rule's streak begins at 04:00
        ("promote", "reply_to_ticket", "crawl", "walk", "2026-11-02T06:00:00Z"),
    ],
}


def replay(folder: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    out, rejected = tmp_path / "decisions.jsonl", tmp_path / "rejected.jsonl"
    code = main(
        [
            "replay",
            str(folder / "events.jsonl"),
            *(["--policy", str(GOLDEN / "policy.yaml")] if folder.name in OLD_LOGS else []),
            "-o",
            str(out),
            "--rejects",
            str(rejected),
        ]
    )
    assert code == 0
    return out.read_bytes(), rejected.read_bytes() if rejected.exists() else b""


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_golden_scenario_replays_to_its_reviewed_decision_log(name: str, tmp_path: Path) -> None:
    """`tiergate replay` reproduces the reviewed decision log and its rejected input."""
    folder = GOLDEN / name
    decisions, rejected = replay(folder, tmp_path)
    assert decisions == (folder / "expected.jsonl").read_bytes()
    expected_rejected = (folder / "expected.rejected.jsonl").read_bytes()
    assert [orjson.loads(k)["reason"] for k in rejected.splitlines()] == [
        orjson.loads(k)["reason"] for k in expected_rejected.splitlines()
    ]


PURE_REPLAY = """
import sys
from pathlib import Path
from tiergate.streams.cli import main

print(sys.modules["tiergate.models.fold"].__file__)
golden, out, old_logs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for folder in sorted(p for p in golden.iterdir() if (p / "events.jsonl").exists()):
    policy = ["--policy", str(golden / "policy.yaml")] if folder.name in old_logs else []
    target = out / folder.name
    code = main(["replay", str(folder / "events.jsonl"), *policy, "-o", str(target), "--rejects", str(target) + ".rej"])
    assert code == 0, folder
"""


def test_the_pure_python_fold_decides_every_golden_scenario_as_the_compiled_one(tmp_path: Path) -> None:
    """setup.py compiles the fold with mypyc, and the suite tests the compiled modules; the same source run as
    plain Python (an install with TIERGATE_PURE_PYTHON=1) must write the same decision logs, byte for byte."""
    if not compiled():
        pytest.skip("installed with TIERGATE_PURE_PYTHON=1: nothing compiled to compare with")
    out = tmp_path / "out"
    out.mkdir()
    run_pure(tmp_path, PURE_REPLAY, str(GOLDEN), str(out), *OLD_LOGS)
    for name in SCENARIOS:
        assert (out / name).read_bytes() == (GOLDEN / name / "expected.jsonl").read_bytes(), name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_golden_scenario_tells_its_story(name: str) -> None:
    """The expected log has the moves the story describes, and the events file is what the story writes."""
    folder = GOLDEN / name
    records = [orjson.loads(line) for line in (folder / "expected.jsonl").read_bytes().splitlines()]
    moves = [
        (r["kind"], r["action_type"], r["from_tier"], r["to_tier"], r["at"])
        for r in records
        if (r["kind"] != "initial" or r.get("activation_id") not in (None, "golden-1", "golden-sound"))
        and (r["kind"] != "policy" or r["from_tier"] != r["to_tier"])
    ]
    assert moves == STORIES[name]
    assert (folder / "events.jsonl").read_bytes() == events_jsonl(name)


def test_the_healthy_low_volume_type_is_one_v1_demotes() -> None:
    """The same story under the golden policy's v1 rules demotes the type at 09:00 (7 of 10 completed,
    0.7 < 0.75); under the sound rules its sequential test is far below its threshold and it keeps Walk."""
    v1 = [m for m in _moves(healthy_low_volume(golden_policy)) if m[0] != "initial"]
    assert v1 == [
        ("promote", "refund_up_to_50", "crawl", "walk", "2026-11-02T04:00:00Z"),
        ("demote", "refund_up_to_50", "walk", "crawl", "2026-11-02T09:00:00Z"),
    ]
    records = [
        orjson.loads(line) for line in (GOLDEN / "healthy_low_volume" / "expected.jsonl").read_bytes().splitlines()
    ]
    assert not any(r["kind"] == "demote" for r in records)


def test_the_tripwire_demotion_carries_its_figures() -> None:
    """The tripwire's demotion names it in its reason, and its evidence records the run against the tripwire."""
    records = [
        orjson.loads(line) for line in (GOLDEN / "tripwire_in_a_window" / "expected.jsonl").read_bytes().splitlines()
    ]
    demotion = next(r for r in records if r["kind"] == "demote")
    assert "tripwire" in demotion["reason"]
    assert demotion["evidence"][0]["test"] | {"n": 0, "successes": 0} == {
        "rule": "tripwire",
        "statistic": 6.0,
        "threshold": 6.0,
        "n": 0,
        "successes": 0,
    }
    assert demotion["window"] == {"start": "2026-11-02T05:00:00Z", "end": "2026-11-02T06:00:00Z"}


def expected(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (GOLDEN / name / "expected.jsonl").read_bytes().splitlines()]


def _moves(log: Log) -> list[tuple[Any, ...]]:
    decisions = fold(log.models())[1]
    return [(d.kind, d.action_type, _tier(d.from_tier), _tier(d.to_tier), _ts(d.at)) for d in decisions]


def _tier(tier: int | None) -> str | None:
    return None if tier is None else TIERS[tier]


def _ts(at: int | None) -> str | None:
    return None if at is None else format_ts(at)
