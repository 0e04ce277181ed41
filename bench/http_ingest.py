"""Benchmark: sustained ingest over HTTP into `tiergate serve`, and the share of it spent in the fold.

    python bench/http_ingest.py [--events 200000] [--batch 1000]

A `tiergate serve` subprocess (SQLite in WAL mode with synchronous=FULL: every batch is fsynced before it
is acknowledged) receives bench/replay.py's history as NDJSON batches over loopback from one client, one
batch at a time. In the same run, the same events are folded in this process without HTTP or SQLite (the
fold's own rate). The share of ingest time spent in the fold is ingest rate / fold rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tiergate.streams.policy_file import read_policy
from tiergate.streams.replay import fold_lines

sys.path.insert(0, str(Path(__file__).parent))
from replay import generate

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def post_all(url: str, lines: list[bytes], batch: int) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        for at in range(0, len(lines), batch):
            async with http.post(
                f"{url}/v1/events",
                data=b"\n".join(lines[at : at + batch]),
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                response.raise_for_status()
                await response.read()
    return len(lines) / (time.perf_counter() - started)


def fold_rate(lines: list[bytes], policy_path: Path) -> float:
    policy = read_policy(policy_path)
    started = time.perf_counter()
    fold_lines(enumerate(lines, 1), policy, lambda d: None, lambda k: None)
    return len(lines) / (time.perf_counter() - started)


def run(events: int, batch: int) -> dict[str, Any]:
    history, policy = generate(events, 60, 90)
    lines = history.read_bytes().splitlines()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        # no clock ticks during the run: the history is older than the clock, and a tick would make it late
        env = os.environ | {"TIERGATE_TICK_INTERVAL": "1000000"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiergate.streams.cli",
                "serve",
                "--policy",
                str(policy),
                "--data-dir",
                tmp,
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            ingest = asyncio.run(post_all(f"http://127.0.0.1:{port}", lines, batch))
        finally:
            server.terminate()
            server.wait(timeout=30)
    fold = fold_rate(lines, policy)
    return {
        "events": len(lines),
        "batch": batch,
        "http_ingest_events_per_s": round(ingest),
        "fold_only_events_per_s": round(fold),
        "share_of_ingest_in_fold": round(ingest / fold, 3),
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=200_000)
    args.add_argument("--batch", type=int, default=1000)
    options = args.parse_args()
    print(json.dumps(run(options.events, options.batch), indent=2))


if __name__ == "__main__":
    main()
