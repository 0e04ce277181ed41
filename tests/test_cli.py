"""The command line as a user runs it: replay, check-policy and explain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiergate.streams.cli import main

ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden"
POLICY = GOLDEN / "policy.yaml"


def test_replay_runs_as_a_console_script_and_writes_the_tier_map(tmp_path: Path) -> None:
    """`tiergate replay` (a real subprocess) writes the decision log to stdout and the final tier map."""
    tiers = tmp_path / "tiers.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiergate.streams.cli",
            "replay",
            str(GOLDEN / "clean_climb" / "events.jsonl"),
            "--policy",
            str(POLICY),
            "--tiers",
            str(tiers),
        ],
        capture_output=True,
        check=True,
    )
    assert done.stdout == (GOLDEN / "clean_climb" / "expected.jsonl").read_bytes()
    records = {r["action_type"]: r for r in map(json.loads, tiers.read_text().splitlines())}
    assert (records["reply_to_ticket"]["tier"], records["reply_to_ticket"]["version"]) == ("run", 2)
    assert records["lookup_order"]["tier"] == "run" and records["refund_over_50"]["since"] is None
    assert "281 applied" in done.stderr.decode()


def test_bad_lines_are_reported_by_line_number_kept_and_the_replay_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed line and an unknown type are printed with their line, kept in the rejects file; the rest folds."""
    events = tmp_path / "events.jsonl"
    good = (GOLDEN / "clean_climb" / "events.jsonl").read_text().splitlines()
    bad = ['{"type":"action"', '{"type":"tick","event_id":"x","ts":"2026-11-02T00:00:00Z","action_type":"nope"}']
    events.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", str(events), "--policy", str(POLICY), "-o", str(out)]) == 0
    assert out.read_bytes() == (GOLDEN / "clean_climb" / "expected.jsonl").read_bytes()
    kept = [json.loads(line) for line in (tmp_path / "events.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(k["origin"], k["result"]) for k in kept] == [
        ("events.jsonl:4", "rejected"),
        ("events.jsonl:5", "rejected"),
    ]
    assert kept[0]["event"] == bad[0]
    err = capsys.readouterr().err
    assert "events.jsonl:4: rejected: malformed JSON" in err and "unknown action_type 'nope'" in err


def test_a_bad_policy_stops_replay_with_the_loaders_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A policy error exits non-zero and prints file:line: field: problem."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text().replace("lookback: 1d", "lookback: 90m"))
    code = main(["replay", str(GOLDEN / "clean_climb" / "events.jsonl"), "--policy", str(policy)])
    assert code == 2
    assert "policy.yaml:6: lookback: 1h30m is not a whole number of windows" in capsys.readouterr().err


def test_check_policy_prints_the_normalised_policy_and_its_sha(capsys: pytest.CaptureFixture[str]) -> None:
    """check-policy shows what every decision will be stamped with."""
    assert main(["check-policy", str(POLICY)]) == 0
    out = capsys.readouterr().out
    assert '"policy_version": "golden-1"' in out
    sha = json.loads((GOLDEN / "clean_climb" / "expected.jsonl").read_text().splitlines()[0])["policy_sha256"]
    assert f"sha256 {sha}" in out


def test_explain_shows_the_tier_since_and_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    """explain names the tier, when it began, and the figures of the decision behind it."""
    assert main(["explain", "reply_to_ticket", "--log", str(GOLDEN / "clean_climb" / "expected.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "reply_to_ticket is at run since 2026-11-02T09:00:00Z" in out
    assert "customer_success_rate" in out and "0.9630" in out
    assert main(["explain", "no_such_type", "--log", str(GOLDEN / "clean_climb" / "expected.jsonl")]) == 1


def test_replay_writes_through_to_a_device_path_and_leaves_it_a_device(tmp_path: Path) -> None:
    """`-o /dev/null` must not replace the device with a file (the temp-and-rename is for regular files)."""
    assert (
        main(
            [
                "replay",
                str(GOLDEN / "clean_climb" / "events.jsonl"),
                "--policy",
                str(POLICY),
                "-o",
                "/dev/null",
                "--rejects",
                "/dev/null",
            ]
        )
        == 0
    )
    assert Path("/dev/null").is_char_device()


def test_the_progress_bar_never_mixes_into_the_decision_log_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """With the bar forced on, stdout still holds nothing but canonical decision lines."""
    assert main(["replay", str(GOLDEN / "clean_climb" / "events.jsonl"), "--policy", str(POLICY), "--progress"]) == 0
    out = capsys.readouterr().out
    assert out == (GOLDEN / "clean_climb" / "expected.jsonl").read_text()
