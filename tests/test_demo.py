"""`tiergate demo` as a newcomer runs it: the four stories happen and the replay check passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_demo_tells_its_four_stories_and_its_log_replays(tmp_path: Path) -> None:
    """One type climbs to Run, one is held at Walk, one is capped by an operator, one is demoted; exit 0
    means replaying the exported log reproduced the promotion log byte for byte."""
    data = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", "demo", "--data-dir", str(data), "--seconds", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "reproduces the promotion log byte for byte: yes" in done.stdout
    decisions = [json.loads(line) for line in (data / "decisions.jsonl").read_text().splitlines()]
    final = {d["action_type"]: d["to_tier"] for d in decisions if d["kind"] != "violation"}
    assert final == {
        "reply_to_ticket": "run",
        "refund_up_to_50": "walk",
        "refund_over_50": "crawl",
        "escalate_to_human": "crawl",
        "lookup_order": "run",
    }
    assert any(d["kind"] == "override" and d["op"] == "cap" and d["from_tier"] == "walk" for d in decisions)
    assert any(d["kind"] == "demote" and d["action_type"] == "escalate_to_human" for d in decisions)
    assert (data / "tiergate.db").exists() and (data / "events.jsonl").exists()
