"""Golden scenarios: readable event histories whose decision logs were reviewed once and must not drift.

Each folder of tests/golden holds events.jsonl, the expected decision log and what is rejected; the
stories are told in tests/golden/scenarios.py. Besides the byte-for-byte comparison, each scenario's
plot is asserted here in a reader's terms, so a regenerated golden file cannot silently change the story.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tiergate.streams.cli import main

from .golden.scenarios import OLD_LOGS, SCENARIOS, events_jsonl

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


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_golden_scenario_tells_its_story(name: str) -> None:
    """The expected log has the moves the story describes, and the events file is what the story writes."""
    folder = GOLDEN / name
    records = [orjson.loads(line) for line in (folder / "expected.jsonl").read_bytes().splitlines()]
    moves = [
        (r["kind"], r["action_type"], r["from_tier"], r["to_tier"], r["at"])
        for r in records
        if (r["kind"] != "initial" or r.get("activation_id") not in (None, "golden-1"))
        and (r["kind"] != "policy" or r["from_tier"] != r["to_tier"])
    ]
    assert moves == STORIES[name]
    assert (folder / "events.jsonl").read_bytes() == events_jsonl(name)
