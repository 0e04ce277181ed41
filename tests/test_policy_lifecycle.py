"""Changing the policy of a running `tiergate serve` with `tiergate policy`: a real server subprocess, the
real CLI, and the log that replays what was decided under each activation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tiergate.models.wire import format_ts
from tiergate.streams.cli import main

from .test_restart import POLICY, batches, free_port, post, start

ROOT = Path(__file__).parent.parent


def tiergate(*argv: str, server: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, pointed at `server`."""
    return subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "TIERGATE_SERVER": server},
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A `tiergate serve --policy golden` subprocess with some traffic, its URL, port and data dir."""
    data, port = tmp_path / "data", free_port()
    process = start(data, port)
    try:
        for body in batches(4, 25):
            assert post(port, body)
        yield f"http://127.0.0.1:{port}", port, data
    finally:
        process.terminate()
        process.wait(timeout=20)


def edited(tmp_path: Path, *changes: tuple[str, str]) -> Path:
    text = POLICY.read_text()
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"edited-{len(list(tmp_path.glob('edited-*')))}.yaml"
    path.write_text(text)
    return path


def test_diff_names_what_changes_per_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`policy diff` lists the added type, and the changed bar of every type in the policy's words; a
    read-only type's change to a bar it never reads is marked as having no effect."""
    new = edited(
        tmp_path,
        ("target: 0.85", "target: 0.8"),
        ("  lookup_order: {read_only: true}", "  lookup_order: {read_only: true}\n  escalate: {}"),
    )
    assert main(["policy", "diff", str(POLICY), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "+ escalate (new action type: starts at crawl)" in out
    bar = "{metric: customer_success_rate, target: %s}"
    assert f"~ reply_to_ticket: tiers.run.keep: [{bar % 0.85}] → [{bar % 0.8}]" in out
    assert f"~ lookup_order: tiers.run.keep: [{bar % 0.85}] → [{bar % 0.8}] (no effect: read-only)" in out
    assert not [line for line in out if "read-only" in line and not line.startswith("~ lookup_order:")]


def test_apply_dry_run_apply_history_and_rollback_on_a_running_server(
    served: tuple[str, int, Path], tmp_path: Path
) -> None:
    """A dry run writes nothing; an apply adds a type and lowers a ceiling (the capped type moves at once),
    keeping every other type's tier and evidence; applying it again writes nothing; history lists who did
    what; a rollback activates the first document again; the exported log replays to the stored decisions
    byte for byte."""
    server, _, data = served
    status = httpx.get(f"{server}/v1/status").json()["action_types"]
    evidence_before = {s["action_type"]: s["promote"] for s in status}
    new = edited(
        tmp_path,
        ("  refund_over_50: {max_tier: walk}", "  refund_over_50: {max_tier: crawl}\n  escalate: {}"),
    )
    dry = tiergate("policy", "apply", str(new), "--actor", "ops", "--reason", "try it", "--dry-run", server=server)
    assert dry.returncode == 0, dry.stderr
    assert "would activate" in dry.stderr and "+ escalate" in dry.stdout
    assert dry.stderr.splitlines()[-1] == "dry run: nothing was written; nothing moves at once"
    assert len(httpx.get(f"{server}/v1/policy/history").json()["activations"]) == 1  # nothing written

    done = tiergate("policy", "apply", str(new), "--actor", "ops", "--reason", "finance review", server=server)
    assert done.returncode == 0, done.stderr
    assert "activated golden-1 as activation" in done.stderr
    tiers = {r["action_type"]: r for r in httpx.get(f"{server}/v1/tiers").json()["tiers"]}
    assert tiers["escalate"]["tier"] == "crawl" and tiers["escalate"]["version"] == 0
    status = {s["action_type"]: s for s in httpx.get(f"{server}/v1/status").json()["action_types"]}
    assert status["reply_to_ticket"]["promote"] == evidence_before["reply_to_ticket"]  # evidence kept

    again = tiergate("policy", "apply", str(new), "--actor", "ops", "--reason", "twice", server=server)
    assert again.returncode == 0 and "is already in force as activation" in again.stderr, again.stderr
    history = tiergate("policy", "history", "--json", server=server)
    rows = json.loads(history.stdout)
    assert [(r["source"], r["actor"], r["reason"]) for r in rows][1:] == [("api", "ops", "finance review")]

    back = tiergate("policy", "rollback", "--actor", "ops", "--reason", "undo", server=server)
    assert back.returncode == 0, back.stderr
    assert "Types a lowered ceiling dropped stay where they are" in back.stderr
    current = httpx.get(f"{server}/v1/policy").json()
    assert current["policy_sha256"] == rows[0]["policy_sha256"]  # the first document, activated again
    assert "escalate" not in {r["action_type"] for r in httpx.get(f"{server}/v1/tiers").json()["tiers"]}

    exported, stored, replayed = tmp_path / "log.jsonl", tmp_path / "stored.jsonl", tmp_path / "replayed.jsonl"
    assert main(["export", "--data-dir", str(data), "-o", str(exported), "--decisions", str(stored)]) == 0
    assert main(["replay", str(exported), "-o", str(replayed)]) == 0  # the log carries its policies
    assert replayed.read_bytes() == stored.read_bytes()
    kinds = [(d["action_type"], d["kind"]) for d in map(json.loads, stored.read_text().splitlines())]
    assert ("escalate", "retire") in kinds and ("refund_over_50", "policy") in kinds


def test_a_retired_type_is_marked_retired_in_status_and_explain(served: tuple[str, int, Path], tmp_path: Path) -> None:
    """A type the new policy leaves out is retired: /v1/status marks it so and gives it no tier, bars or hold
    (as the tier map, which answers 404, and the console do); explain says it is retired, by which
    activation, with no pin left in force, and its JSON has a null tier, never the string "None"."""
    server, _, _ = served
    pinned = tiergate(
        "override", "pin", "refund_up_to_50", "--tier", "crawl", "--actor", "ops", "--reason", "hold", server=server
    )
    assert pinned.returncode == 0, pinned.stderr
    retiring = edited(tmp_path, ("  refund_up_to_50: {}\n", ""))
    done = tiergate("policy", "apply", str(retiring), "--actor", "ops", "--reason", "no more refunds", server=server)
    assert done.returncode == 0, done.stderr

    status = {s["action_type"]: s for s in httpx.get(f"{server}/v1/status").json()["action_types"]}
    retired = status["refund_up_to_50"]
    assert (retired["retired"], retired["tier"], retired["promote"], retired["keep"]) == (True, None, [], [])
    assert retired["hold"]["required"] is None and retired["since"] is not None
    assert status["reply_to_ticket"]["retired"] is False and status["reply_to_ticket"]["tier"] == "crawl"
    assert httpx.get(f"{server}/v1/tiers/refund_up_to_50").status_code == 404

    told = tiergate("explain", "refund_up_to_50", server=server)
    assert told.returncode == 0, told.stderr
    assert told.stdout.startswith(f"refund_up_to_50 is retired since {retired['since']} (version ")
    assert "why: retired by policy activation " in told.stdout and "pinned" not in told.stdout
    assert "now: retired, out of the tier map" in told.stdout and "crawl → retired" in told.stdout
    assert "None" not in told.stdout
    record = json.loads(tiergate("explain", "refund_up_to_50", "--json", server=server).stdout)
    assert (record["tier"], record["retired"], record["since"], record["held_by"]) == (None, True, retired["since"], [])
    activation = httpx.get(f"{server}/v1/policy").json()["activation_id"]
    assert record["why"].startswith(f"retired by policy activation {activation} at {retired['since']}: ")


def test_a_stale_apply_is_refused_whole(served: tuple[str, int, Path], tmp_path: Path) -> None:
    """An apply made against a policy that is no longer in force (If-Match) is refused: 412, nothing written."""
    server, _, _ = served
    body = {"policy": edited(tmp_path, ("golden-1", "golden-2")).read_text(), "actor": "ops", "reason": "r"}
    refused = httpx.post(f"{server}/v1/policy", json=body, headers={"If-Match": '"' + "0" * 64 + '"'})
    assert refused.status_code == 412 and "not the policy in force" in refused.json()["error"]
    assert len(httpx.get(f"{server}/v1/policy/history").json()["activations"]) == 1


def test_a_policy_posted_as_raw_yaml_is_told_the_endpoint_takes_json(served: tuple[str, int, Path]) -> None:
    """POST /v1/policy with the YAML file as the body (not JSON) is 422 saying the body must be JSON, and how
    to send a YAML policy (tiergate policy apply, or jq wrapping it); nothing is written."""
    server, _, _ = served
    refused = httpx.post(f"{server}/v1/policy", content=POLICY.read_bytes())
    assert refused.status_code == 422
    answer = refused.json()
    assert answer["error"].startswith("the body is not JSON (")
    assert "POST /v1/policy takes a JSON object whose `policy` is the YAML text" in answer["error"]
    assert "tiergate policy apply FILE" in answer["fix"] and "jq -Rs" in answer["fix"]
    assert len(httpx.get(f"{server}/v1/policy/history").json()["activations"]) == 1


def test_a_window_change_is_refused_before_anything_is_written(served: tuple[str, int, Path], tmp_path: Path) -> None:
    """A changed window cannot apply to existing types: 409 with the reason, the history unchanged."""
    server, _, _ = served
    body = {
        "policy": edited(tmp_path, ("window: 1h", "window: 2h"), ("lookback: 1d", "lookback: 2d")).read_text(),
        "actor": "ops",
        "reason": "r",
    }
    refused = httpx.post(f"{server}/v1/policy", json=body)
    assert refused.status_code == 409 and "window cannot change" in refused.json()["error"]
    assert len(httpx.get(f"{server}/v1/policy/history").json()["activations"]) == 1


def test_a_maturity_keeps_customer_units_pending_and_a_reporter_checkpoints_over_the_cli(tmp_path: Path) -> None:
    """Under a 1h maturity, accepted reviews are customer units waiting (shown per tier in /v1/status and by
    `tiergate explain --server`, or TIERGATE_SERVER without a flag); `tiergate checkpoint` records how far the
    feed is complete."""
    policy = edited(tmp_path, ("confidence: 0.95", "confidence: 0.95\noutcomes: {customer: {maturity: 1h}}"))
    data, port = tmp_path / "data", free_port()
    process = start(data, port, policy)
    server = f"http://127.0.0.1:{port}"
    try:
        now = int(time.time()) - 100
        reviews = [
            {
                "type": "outcome",
                "event_id": f"r{i}/review",
                "ts": format_ts(now),
                "action_type": "reply_to_ticket",
                "action_id": f"r{i}",
                "tier": "crawl",
                "kind": "review",
                "result": "accepted",
                "action_ts": format_ts(now - 60),
            }
            for i in range(5)
        ]
        assert post(port, b"\n".join(orjson.dumps(r) for r in reviews))
        status = {s["action_type"]: s for s in httpx.get(f"{server}/v1/status").json()["action_types"]}
        customer = status["reply_to_ticket"]["customer"]
        assert customer["maturity"] == 3600 and customer["pending"] == {"crawl": 5} and customer["checkpoint"] is None
        explained = tiergate("explain", "reply_to_ticket", "--server", server, server=server)
        assert explained.returncode == 0, explained.stderr
        assert "customer outcomes mature after 1h: pending 5 at crawl; the feed's checkpoint not yet sent" in (
            explained.stdout
        )
        done = tiergate("checkpoint", "reply_to_ticket", "--through", format_ts(now), server=server)
        assert done.returncode == 0 and "applied" in done.stderr, done.stderr
        status = {s["action_type"]: s for s in httpx.get(f"{server}/v1/status").json()["action_types"]}
        assert status["reply_to_ticket"]["customer"]["checkpoint"] == format_ts(now)
        explained = tiergate("explain", "reply_to_ticket", "--json", server=server)  # TIERGATE_SERVER
        assert orjson.loads(explained.stdout)["now"]["customer"]["checkpoint"] == format_ts(now)
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_with_a_policy_the_log_cannot_take_says_so_and_keeps_the_policy_in_force(tmp_path: Path) -> None:
    """A data dir made under one window, restarted with a file that redraws it: the banner names the policy in
    force (not the file's), a warning says why the file was not applied, and /healthz is degraded."""
    data, port = tmp_path / "data", free_port()
    first = start(data, port)
    first.terminate()
    first.wait(timeout=20)
    redrawn = edited(tmp_path, ("window: 1h", "window: 2h"), ("lookback: 1d", "lookback: 2d"), ("golden-1", "other"))
    second = start(data, port, redrawn)
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert health["status"] == "degraded" and "window cannot change" in " ".join(health["problems"])
    finally:
        second.terminate()
        second.wait(timeout=20)
    assert second.stderr is not None
    said = second.stderr.read().decode()
    assert "tiergate serve: policy golden-1 (" in said, said
    assert "warning:" in said and "not applied" in said and "degraded" in said


def test_serve_without_a_policy_file_serves_the_policy_its_log_carries(tmp_path: Path) -> None:
    """A data dir whose log carries a policy needs no --policy: the server folds under the policy in force and
    publishes the same tier map. A data dir without a log says to give one, and creates nothing."""
    data, port = tmp_path / "data", free_port()
    empty = subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", "serve", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "TIERGATE_POLICY"},
    )
    assert empty.returncode == 2 and "holds no log yet: give --policy" in empty.stderr, empty.stderr
    assert not (tmp_path / "none").exists()
    first = start(data, port)
    try:
        for batch in batches(3, 20):
            assert post(port, batch)
        before = httpx.get(f"http://127.0.0.1:{port}/v1/tiers").json()
    finally:
        first.terminate()
        first.wait(timeout=20)
    second = start(data, port, None)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/tiers").json() == before
    finally:
        second.terminate()
        second.wait(timeout=20)
    assert second.stderr is not None
    assert "tiergate serve: policy golden-1 (" in second.stderr.read().decode()


def test_the_diff_says_a_new_read_only_type_starts_at_run() -> None:
    """A read-only type starts at Run (never evaluated), and the diff of the activation that adds it says so."""
    from tiergate.streams.activation import Diff, diff
    from tiergate.streams.policy_file import read_policy

    added = diff({}, read_policy(POLICY))
    assert "+ lookup_order (new action type: read-only, starts at run)" in added.lines()
    assert "+ reply_to_ticket (new action type: starts at crawl)" in added.lines()
    assert Diff(**added.record()) == added  # as the server answers it, read back by the CLI
