"""Benchmark: sustained ingest over HTTP into `tiergate serve`, and the share of it spent in the fold.

    python bench/http_ingest.py [--events 200000] [--batch 1000]
    python bench/http_ingest.py --one-window [--events 1000000] [--types 1]

A `tiergate serve` subprocess (SQLite in WAL mode with synchronous=FULL: every batch is fsynced before it
is acknowledged) receives NDJSON batches over loopback from one client, one batch at a time.

By default the batches are bench/replay.py's history (90 days of a 60-type fleet; the server's bound on
how far in the past a type's first live event may lie is lifted, as the history is older than the
clock). In the same run, the same events are folded in this process without HTTP or SQLite (the fold's
own rate). The share of ingest time spent in the fold is ingest rate / fold rate.

`--one-window` posts suggestions and their accepted reviews whose timestamps all fall inside one window
(the hour before the clock's, left open by the allowed lateness: nothing closes it during the run) of
`--types` action types, every event id unique. The open window, and the ids remembered for it, grow with
every batch. The figure is how the rate holds up as it fills: batch latency p50/p99 and events/s per tenth
of the run, and the ratio of the last tenth's rate to the first's (flat: about 1).
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from tiergate.models.wire import format_ts
from tiergate.streams.policy_file import read_policy
from tiergate.streams.replay import fold_lines

sys.path.insert(0, str(Path(__file__).parent))
from replay import DATA, bench_policy, generate

ROOT = Path(__file__).parent.parent
HOUR = 3600


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(policy: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """A `tiergate serve` subprocess on a fresh data directory: its URL and its pid. No clock ticks during
    the run (`settings` are further TIERGATE_ variables)."""
    port = free_port()
    env = os.environ | {"TIERGATE_TICK_INTERVAL": "1000000"} | {f"TIERGATE_{k.upper()}": v for k, v in settings.items()}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "tiergate.streams.cli", "serve", "--policy", str(policy)]
        server = subprocess.Popen(
            [*command, "--data-dir", tmp, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
            yield url, server.pid
        finally:
            server.terminate()
            server.wait(timeout=60)


def wait_healthy(url: str) -> None:
    for _ in range(400):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"tiergate serve did not answer at {url}/healthz")


def cpu_seconds(pid: int) -> float:
    """The server's CPU time so far, every thread, user and system (/proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The server's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Timing = tuple[float, float, float]  # a batch's start, its seconds, the server's CPU seconds since the last


async def post_all(url: str, bodies: list[bytes], pid: int | None = None) -> tuple[list[Timing], Counter[str]]:
    """Post the batches one after another: the timing of each, and the results the server gave."""
    timings: list[Timing] = []
    results: Counter[str] = Counter()
    cpu = cpu_seconds(pid) if pid is not None else 0.0
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            started = time.perf_counter()
            async with http.post(
                f"{url}/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"}
            ) as response:
                response.raise_for_status()
                answer = orjson.loads(await response.read())
            seconds, before = time.perf_counter() - started, cpu
            cpu = cpu_seconds(pid) if pid is not None else 0.0
            timings.append((started, seconds, cpu - before))
            results.update(answer["counts"])
    return timings, results


def batches(lines: list[bytes], batch: int) -> list[bytes]:
    return [b"\n".join(lines[at : at + batch]) for at in range(0, len(lines), batch)]


def fold_rate(lines: list[bytes], policy_path: Path) -> float:
    policy = read_policy(policy_path)
    started = time.perf_counter()
    fold_lines(enumerate(lines, 1), policy, lambda d: None, lambda k: None)
    return len(lines) / (time.perf_counter() - started)


def run_history(events: int, batch: int) -> dict[str, Any]:
    """The replay generator's history over HTTP, and the same events folded in-process."""
    history, policy = generate(events, 60, 90)
    lines = history.read_bytes().splitlines()
    with serve(policy, max_past=str(10**9)) as (url, _):
        started = time.perf_counter()
        _, results = asyncio.run(post_all(url, batches(lines, batch)))
        ingest = len(lines) / (time.perf_counter() - started)
    fold = fold_rate(lines, policy)
    return {
        "events": len(lines),
        "batch": batch,
        "results": dict(results),
        "http_ingest_events_per_s": round(ingest),
        "fold_only_events_per_s": round(fold),
        "share_of_ingest_in_fold": round(ingest / fold, 3),
    }


# -- one window -------------------------------------------------------------------------------------------


def one_window_policy(types: int) -> tuple[Path, list[str]]:
    """The replay benchmark's policy (1 h windows, 10 min lateness) and the `types` names posted to."""
    raw = bench_policy(types + 1)
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"policy-one-window-{types}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, [n for n in sorted(raw["action_types"]) if not raw["action_types"][n].get("read_only")][:types]


def one_window_lines(events: int, names: list[str], window_start: int) -> list[bytes]:
    """`events` events in [window_start, window_start + 1 h): per action, its suggestion at Crawl and the
    review that accepts it, the types taking turns; timestamps rise through the hour; ids unique."""
    lines: list[bytes] = []
    for i in range(events // 2):
        name = names[i % len(names)]
        ts = format_ts(window_start + i * 2 * (HOUR - 1) // events)
        base = {"ts": ts, "action_type": name, "action_id": f"a{i}", "tier": "crawl"}
        review = {"kind": "review", "result": "accepted"}
        lines.append(orjson.dumps({"type": "action", "event_id": f"a{i}/action", **base, "agent": "bench"}))
        lines.append(orjson.dumps({"type": "outcome", "event_id": f"a{i}/review", **base, **review}))
    return lines


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def deciles(timings: list[Timing], batch: int) -> list[dict[str, float]]:
    """Per tenth of the batches: latency p50 and p99 (ms), events/s over the tenth's wall time, and the
    server's CPU time per event (µs: what the machine's load does not move much)."""
    tenth = max(1, len(timings) // 10)
    out = []
    for at in range(0, tenth * 10, tenth):
        part = timings[at : at + tenth]
        latencies = [seconds for _, seconds, _ in part]
        wall = part[-1][0] + part[-1][1] - part[0][0]
        cpu = sum(used for _, _, used in part)
        out.append(
            {
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                "events_per_s": round(len(part) * batch / wall),
                "server_cpu_us_per_event": round(cpu / (len(part) * batch) * 1e6, 1),
            }
        )
    return out


def run_one_window(events: int, batch: int, types: int) -> dict[str, Any]:
    policy, names = one_window_policy(types)
    window_start = (int(time.time()) // HOUR - 1) * HOUR
    bodies = batches(one_window_lines(events, names, window_start), batch)
    with serve(policy) as (url, pid):
        timings, results = asyncio.run(post_all(url, bodies, pid))
        rss = peak_rss_mib(pid)
    tenths = deciles(timings, batch)
    return {
        "events": sum(results.values()),
        "batch": batch,
        "action_types": types,
        "window": f"{format_ts(window_start)} + 1h",
        "results": dict(results),
        "server_peak_rss_mib": round(rss, 1),
        "deciles": tenths,
        "last_over_first_events_per_s": round(tenths[-1]["events_per_s"] / tenths[0]["events_per_s"], 3),
        "first_over_last_server_cpu": round(
            tenths[0]["server_cpu_us_per_event"] / tenths[-1]["server_cpu_us_per_event"], 3
        ),
        "target": "flat: about 1 (at least 0.8)",
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=None, help="200,000 (history) or 1,000,000 (--one-window)")
    args.add_argument("--batch", type=int, default=1000)
    args.add_argument("--one-window", action="store_true", help="every event in one open window")
    args.add_argument("--types", type=int, default=1, help="--one-window: action types taking turns")
    options = args.parse_args()
    if options.one_window:
        result = run_one_window(options.events or 1_000_000, options.batch, options.types)
    else:
        result = run_history(options.events or 200_000, options.batch)
    tenths = result.pop("deciles", None)
    print(json.dumps(result, indent=2))
    for number, tenth in enumerate(tenths or (), 1):
        print(f"tenth {number:2d}: " + json.dumps(tenth))


if __name__ == "__main__":
    main()
