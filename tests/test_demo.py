"""`tiergate demo` as a newcomer runs it: the four stories happen, every posted event is accounted for,
none is ahead of the server's clock, and the replay check passes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tiergate.streams.demo import settling_time
from tiergate.streams.simulate import Delivery

from .test_restart import free_port


def test_the_demo_tells_its_four_stories_and_its_log_replays(tmp_path: Path) -> None:
    """One type climbs to Run, one is held at Walk, one is capped by an operator, one is demoted; half way
    an operator activates a changed policy that adds summarize_thread, which starts at Crawl and climbs,
    while the refunds' customer units wait for their 2-day maturity; exit 0 means replaying the exported log
    reproduced the promotion log byte for byte; the summary counts every result the server gave, and no
    event was rejected `future`."""
    data = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", "demo", "--data-dir", str(data), "--seconds", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["replay_matches"] is True
    assert figures["tiers"] == {
        "reply_to_ticket": "run",
        "refund_up_to_50": "walk",
        "refund_over_50": "crawl",
        "escalate_to_human": "crawl",
        "lookup_order": "run",
        "summarize_thread": "run",
    }
    decisions = [json.loads(line) for line in (data / "decisions.jsonl").read_text().splitlines()]
    added = [d for d in decisions if d["action_type"] == "summarize_thread"]
    assert (added[0]["kind"], added[0]["to_tier"], added[0]["policy_version"]) == ("initial", "crawl", "demo-2")
    changed = {d["action_type"] for d in decisions if d["kind"] == "policy"}
    assert changed == set(figures["tiers"]) - {"summarize_thread"}  # every other type kept its tier through it
    assert all(d["from_tier"] == d["to_tier"] for d in decisions if d["kind"] == "policy")
    raws = [bytes(raw) for (raw,) in sqlite3.connect(data / "tiergate.db").execute("SELECT raw FROM events")]
    assert any(b'"type":"checkpoint"' in raw for raw in raws)  # the refunds' customer feed
    assert any(d["kind"] == "override" and d["op"] == "cap" and d["from_tier"] == "walk" for d in decisions)
    assert any(d["kind"] == "demote" and d["action_type"] == "escalate_to_human" for d in decisions)

    store = sqlite3.connect(data / "tiergate.db")
    kept = dict(store.execute("SELECT reason LIKE 'future%', COUNT(*) FROM rejected GROUP BY 1").fetchall())
    assert kept.get(1, 0) == 0  # nothing was ahead of the clock
    events = figures["events"]
    posted = sum(n for result, n in events.items() if result != "posted")
    assert events["posted"] == posted and events["applied"] > 0.95 * posted
    assert 0 < events["late"] < 0.02 * posted  # the fleet's deliberately late 1.2%, no more
    types = [json.loads(raw)["type"] for (raw,) in store.execute("SELECT raw FROM events")]
    logged = sum(kind not in ("tick", "policy") for kind in types)  # the server's clock and the operator's policy
    assert logged == posted - events.get("rejected", 0)  # every accepted post is in the log


def test_the_summary_line_counts_rejections() -> None:
    """The table's and the summary's line name every result, rejected ones included."""
    from collections import Counter

    from tiergate.streams.demo import posted_line

    line = posted_line(Counter({"applied": 1200, "rejected": 38, "late": 4}))
    assert line == "1,242 events posted: 1,200 applied, 38 rejected, 4 late"


def test_the_demo_refuses_a_fleet_that_would_outrun_the_lateness() -> None:
    """Transit delays must be shorter than the allowed lateness, or the demo itself would make events late."""
    assert settling_time(Delivery(jitter_seconds=300), allowed_lateness=600) == 300
    with pytest.raises(ValueError, match="not less than the policy's allowed_lateness of 300s"):
        settling_time(Delivery(jitter_seconds=300), allowed_lateness=300)


def test_the_demo_serves_on_the_port_it_is_given_and_its_tables_fit_a_pipe(tmp_path: Path) -> None:
    """With TIERGATE_PORT the demo's server answers on that port while it runs (and says where); piped, its
    tables are widened rather than cut, so every action type's name is whole; a busy --port is exit 2."""
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "tiergate.streams.cli", "demo", "--days", "4", "--seconds", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=os.environ | {"TIERGATE_PORT": str(port)},
    )
    try:
        assert wait_for_health(f"http://127.0.0.1:{port}", demo)
        out, errors = demo.communicate(timeout=120)
    finally:
        demo.kill()
    assert demo.returncode == 0, errors
    assert f"serving on http://127.0.0.1:{port}" in out
    assert "…" not in out and all(name in out for name in ("escalate_to_human", "refund_up_to_50", "reply_to_ticket"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "tiergate.streams.cli", "demo", "--port", str(busy)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    assert refused.returncode == 2 and f"127.0.0.1:{busy} is already in use" in refused.stderr


def wait_for_health(url: str, process: subprocess.Popen[str]) -> bool:
    """True once `url`/healthz answers 200 while `process` runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.05)
    return False
