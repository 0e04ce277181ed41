"""Restart safety: `tiergate serve` killed with SIGKILL mid-stream loses nothing acknowledged and counts
nothing twice; after a restart its state equals a fresh fold of the stored log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson

from tiergate.models import State, fold
from tiergate.models.wire import format_ts
from tiergate.streams.codec import decode
from tiergate.streams.embedded import DB_NAME
from tiergate.streams.store import Store

POLICY = Path(__file__).parent / "golden" / "policy.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data_dir: Path, port: int, policy: Path | None = POLICY) -> subprocess.Popen[bytes]:
    """`tiergate serve` on `data_dir` (without --policy when `policy` is None), once it answers /healthz."""
    given = [] if policy is None else ["--policy", str(policy)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiergate.streams.cli",
            "serve",
            *given,
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not start: {process.stderr.read().decode() if process.stderr else ''}")


def batches(count: int, size: int) -> list[bytes]:
    """Reviews and actions dated in the last minutes (the server rejects the future and ticks the past)."""
    now = int(time.time()) - 120
    out = []
    for b in range(count):
        lines = []
        for i in range(size):
            n = b * size + i
            kind = "reply_to_ticket" if n % 3 else "refund_up_to_50"
            lines.append(
                orjson.dumps(
                    {
                        "type": "outcome",
                        "event_id": f"r{n}",
                        "ts": format_ts(now + n % 60),
                        "action_type": kind,
                        "action_id": f"a{n}",
                        "tier": "crawl",
                        "kind": "review",
                        "result": "accepted" if n % 7 else "rejected",
                    }
                )
            )
        out.append(b"\n".join(lines))
    return out


def post(port: int, body: bytes) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events", data=body, method="POST", headers={"Content-Type": "application/x-ndjson"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # the server died under us: not acknowledged
        return False


def stored_state_equals_a_fresh_fold(data_dir: Path) -> list[bytes]:
    """The stored decisions are a fold of the stored log (which carries its policy), and the stored snapshot
    is the fold of the log up to the position it was taken at."""
    store = Store(data_dir / DB_NAME)
    try:
        log = [raw for _, raw in store.events()]
        snapshot, position = store.snapshot()
        decisions = list(store.all_decisions())
    finally:
        store.close()
    _, folded = fold([decode(raw) for raw in log])
    assert [d.to_json() for d in folded] == decisions
    state, _ = fold([decode(raw) for raw in log[:position]])
    for name, saved in snapshot.items():
        restored = State.from_dict({name: saved}).keys[name]
        assert restored.to_dict() == state.keys[name].to_dict()
    return log


def test_sigkill_mid_stream_then_restart_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """Batches acknowledged before a SIGKILL are all in the log; re-sending every batch after the restart
    is applied once; the stored state always equals a fold of the stored log."""
    data_dir, port = tmp_path / "data", free_port()
    work = batches(60, 50)
    acknowledged: list[int] = []
    server = start(data_dir, port)

    def send() -> None:
        for index, body in enumerate(work):
            if not post(port, body):
                return
            acknowledged.append(index)

    sender = threading.Thread(target=send)
    sender.start()
    while len(acknowledged) < 10:
        time.sleep(0.005)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    sender.join()
    assert 10 <= len(acknowledged) < len(work)
    log = stored_state_equals_a_fresh_fold(data_dir)
    ids = {json.loads(raw)["event_id"] for raw in log}
    assert all(f"r{b * 50 + i}" in ids for b in acknowledged for i in range(50))

    server = start(data_dir, port)  # the producer re-sends everything: at-least-once delivery
    try:
        for body in work:
            assert post(port, body)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    log = stored_state_equals_a_fresh_fold(data_dir)
    applied = [json.loads(raw)["event_id"] for raw in log if b'"type":"outcome"' in raw]
    assert len(set(applied)) == 3000
    store = Store(data_dir / DB_NAME)
    try:
        query = (
            'SELECT result, COUNT(*) FROM events WHERE CAST(raw AS TEXT) LIKE \'%"type":"outcome"%\' GROUP BY result'
        )
        outcomes = dict(store.db.execute(query).fetchall())
    finally:
        store.close()
    assert outcomes["applied"] == 3000  # each review counted once
    assert outcomes.get("duplicate", 0) == len(applied) - 3000  # every re-sent one seen as a duplicate
