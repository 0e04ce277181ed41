"""Benchmark: `tiergate replay` against the rate of replay's own parse path, and memory at 1×, 10× history
and 10× volume.

    python bench/replay.py                 # 1M events, 60 action types, 90 days (the issue's target)
    python bench/replay.py --events 200000 # a quick look
    python bench/replay.py --maturity 2d   # customer outcomes mature in 2 days (a feed with checkpoints)

Reports events/s of the full replay (parse + fold + decision log written) and, in the same run, of
the parse path alone (the file's lines decoded into the event models); the target is a ratio of at
least 0.5. Then peak resident memory of `tiergate replay` (a child process) on the history, on ten
times the history (the same fleet carried on for ten times as long) and on ten times the volume (the
same fleet and days, ten times the events an hour); the target for history is within 10%.

The history has late events, duplicates, outcomes reported again a day or two later (the same event id,
a later ts: §6.6's re-reports) and operator overrides. With `--maturity`, the policy's
`outcomes.customer.maturity` is set for every type, customer outcomes are failures only (success is
their absence), each carrying its action's ts, and a customer feed posts an hourly checkpoint per type,
two hours behind. Generated histories are cached under bench/.data/.

The fold is compiled with mypyc when installed (setup.py); `--pure` runs the same benchmark on a copy of the
sources without their extensions (plain Python), to compare. The report says which it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from tiergate.models.durations import parse_duration
from tiergate.models.wire import format_ts, parse_ts
from tiergate.streams.codec import decode, iter_lines
from tiergate.streams.compiled import fold_build
from tiergate.streams.policy_file import policy_from_mapping
from tiergate.streams.replay import replay_file
from tiergate.streams.simulate import HOUR, Delivery, Fleet, Profile, Quality, history, override

ROOT = Path(__file__).parent.parent
DATA = ROOT / "bench" / ".data"
START = parse_ts("2026-01-01T00:00:00Z")
DAY = 24 * HOUR


REREPORT = 0.002  # share of outcomes reported again later


def bench_policy(types: int, maturity: str | None = None) -> dict[str, Any]:
    """The example policy's tiers (1h windows, 7d lookback) over a catalog of `types` action types, with a
    customer maturity for every type when one is given."""
    policy = yaml.safe_load((ROOT / "examples" / "policy.yaml").read_text())
    catalog: dict[str, Any] = {f"action_{i:03d}": {} for i in range(types)}
    catalog["action_000"] = {"read_only": True}
    for i in range(1, types, 10):
        catalog[f"action_{i:03d}"] = {"max_tier": "walk"}
    policy["action_types"] = catalog
    if maturity is not None:
        policy["outcomes"] = {"customer": {"maturity": maturity}}
    return policy


def bench_fleet(names: list[str], events: int, days: int, seed: int = 11, maturity: int | None = None) -> Fleet:
    """A varied fleet sized to produce about `events` events in `days`, with some operator overrides; under a
    maturity, every evaluated type's customer failures come late and its feed posts checkpoints."""
    import random

    rng = random.Random(seed)
    per_hour = events / (len(names) * days * 24) / 2.15  # an action brings ~1.2 outcomes on average
    grades = (Quality(), Quality(0.95, 0.97, 0.985), Quality(0.85, 0.9, 0.95))
    profiles = {n: Profile(per_hour * rng.uniform(0.5, 1.5), rng.choice(grades)) for n in names}
    overrides = [
        override(START + rng.randrange(days * DAY), rng.choice(names[1:]), op, "bench", tier=tier)
        for op, tier in (("cap", "crawl"), ("uncap", None), ("promote", None), ("pin", "walk"), ("demote", None))
        for _ in range(6)
    ]
    delivery = Delivery(late=0.012, duplicate=0.002, rereport=REREPORT)
    matures = {} if maturity is None else {n: maturity for n in names[1:]}  # names[0] is read-only
    return Fleet(profiles, seed=seed, delivery=delivery, overrides=overrides, maturity=matures)


def generate(events: int, types: int, days: int, maturity: str | None = None) -> tuple[Path, Path]:
    """The history file and its policy, generated once per size (and maturity) and cached."""
    DATA.mkdir(parents=True, exist_ok=True)
    tag = f"-m{maturity}" if maturity is not None else ""
    path = DATA / f"history-{events}-{types}-{days}{tag}-rr.jsonl"
    policy_path = DATA / f"policy-{types}{tag}.yaml"
    raw = bench_policy(types, maturity)
    policy_path.write_text(yaml.safe_dump(raw))
    if not path.exists():
        policy = policy_from_mapping(raw)
        seconds = None if maturity is None else parse_duration(maturity)
        fleet = bench_fleet(sorted(raw["action_types"]), events, days, maturity=seconds)
        started = time.perf_counter()
        count = 0
        with open(path.with_suffix(".tmp"), "wb") as out:
            for event in history(fleet, policy, START, days * 24):
                out.write(orjson.dumps(event) + b"\n")
                count += 1
        os.replace(path.with_suffix(".tmp"), path)
        print(f"generated {count:,} events in {time.perf_counter() - started:.0f}s: {path}", file=sys.stderr)
    return path, policy_path


def shifted(event: dict[str, Any], copy: int, shift: int) -> dict[str, Any]:
    """An event of the history's `copy`-th repetition: every time in it moved on by `shift`, ids made its own."""
    for name in ("ts", "action_ts", "through"):
        if name in event:
            event[name] = format_ts(parse_ts(event[name]) + shift)
    event["event_id"] += f"~{copy}"
    if "action_id" in event:
        event["action_id"] += f"~{copy}"
    return event


def extend(path: Path, times: int, days: int) -> Path:
    """The same fleet carried on: the history repeated `times` times, each copy shifted by its span."""
    longer = path.with_name(path.stem + f"-x{times}.jsonl")
    if longer.exists():
        return longer
    with open(longer.with_suffix(".tmp"), "wb") as out:
        for copy in range(times):
            with open(path, "rb") as source:
                for _, line in iter_lines(source):
                    out.write(orjson.dumps(shifted(orjson.loads(line), copy, copy * days * DAY)) + b"\n")
    os.replace(longer.with_suffix(".tmp"), longer)
    return longer


def rerun_as_plain_python() -> None:
    """Run this benchmark again, without `--pure`, on the sources with no extensions: its report is this one."""
    pure = DATA / "pure"
    shutil.rmtree(pure, ignore_errors=True)
    for package in ("models", "streams"):
        ignore = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(ROOT / package, pure / "tiergate" / package, ignore=ignore)
    argv = [arg for arg in sys.argv if arg != "--pure"]
    raise SystemExit(subprocess.run([sys.executable, *argv], env={**os.environ, "PYTHONPATH": str(pure)}).returncode)


def parse_rate(path: Path) -> tuple[float, int]:
    """Events/s of replay's parse path alone: read the lines, decode each into its model."""
    started, count = time.perf_counter(), 0
    gc.freeze()  # as the replay command does
    with open(path, "rb") as stream:
        for _, line in iter_lines(stream):
            try:  # noqa: SIM105 - try/except costs less than contextlib.suppress in this loop
                decode(line)
            except ValueError:
                pass
            count += 1
    return count / (time.perf_counter() - started), count


def replay_rate(path: Path, policy_path: Path) -> tuple[float, dict[str, int]]:
    """Events/s of the full replay: parse, fold, and the decision log and kept events written to files;
    the counts of results and decisions, and what the state holds at the end."""
    from tiergate.streams.policy_file import read_policy

    policy = read_policy(policy_path)
    gc.freeze()  # as the replay command does
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        result = replay_file(
            path,
            policy,
            lambda d: sink.write(d.to_json() + "\n"),
            lambda k: sink.write(k.to_json().decode() + "\n"),
            progress=False,
        )
    elapsed = time.perf_counter() - started
    keys = result.state.keys.values()
    held = {
        "remembered_ids": sum(len(k.live_ids()) for k in keys),
        "pending_cells": sum(len(k.cells) for k in keys),
        "pending_units": sum(c.units for k in keys for c in k.cells.values()),
        "pending_failure_ids": sum(len(k.failure_ids) for k in keys),
    }
    counts = dict(result.results) | {"decisions": result.decisions} | held
    return sum(result.results.values()) / elapsed, counts


def peak_rss_mib(path: Path, policy_path: Path) -> float:
    """Peak resident memory of `tiergate replay` on a file, in a child process of its own."""
    command = [
        sys.executable,
        "-m",
        "tiergate.streams.cli",
        "replay",
        str(path),
        "--policy",
        str(policy_path),
        "-o",
        os.devnull,
        "--rejects",
        os.devnull,
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"replay failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024


def memory(path: Path, policy_path: Path, options: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of `tiergate replay` on the history, on `--scale` times the history and on `--volume` times
    the volume (each skipped at 1)."""
    one = peak_rss_mib(path, policy_path)
    out: dict[str, Any] = {"peak_rss_mib_1x": round(one, 1)}
    if options.scale > 1:
        many = peak_rss_mib(extend(path, options.scale, options.days), policy_path)
        out |= {f"peak_rss_mib_{options.scale}x_history": round(many, 1), "history_growth": round(many / one - 1, 3)}
    if options.volume > 1:
        busier, _ = generate(options.events * options.volume, options.types, options.days, options.maturity)
        dense = peak_rss_mib(busier, policy_path)
        out |= {f"peak_rss_mib_{options.volume}x_volume": round(dense, 1), "volume_growth": round(dense / one - 1, 3)}
    return out | {"target_history_growth": 0.10}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=1_000_000)
    args.add_argument("--types", type=int, default=60)
    args.add_argument("--days", type=int, default=90)
    args.add_argument("--maturity", default=None, help="outcomes.customer.maturity for every type, e.g. 2d")
    args.add_argument("--scale", type=int, default=10, help="memory run at this many times the history")
    args.add_argument("--volume", type=int, default=10, help="memory run at this many times the events an hour")
    args.add_argument("--rounds", type=int, default=3, help="alternating parse/replay rounds; the best of each counts")
    args.add_argument("--pure", action="store_true", help="measure the fold as plain Python (not compiled)")
    options = args.parse_args()
    if options.pure:
        rerun_as_plain_python()
    path, policy_path = generate(options.events, options.types, options.days, options.maturity)
    parses, replays, counts = [], [], {}
    for _ in range(options.rounds):
        parses.append(parse_rate(path)[0])
        rate, counts = replay_rate(path, policy_path)
        replays.append(rate)
    held = {k: counts.pop(k) for k in ("remembered_ids", "pending_cells", "pending_units", "pending_failure_ids")}
    total = sum(v for k, v in counts.items() if k != "decisions")
    results = {
        "fold": fold_build(),
        "events": total,
        "action_types": options.types,
        "days": options.days,
        "maturity": options.maturity,
        "late_share": round(counts.get("late", 0) / total, 4),
        "duplicate_share": round(counts.get("duplicate", 0) / total, 4),
        "decisions": counts["decisions"],
        "held_at_the_end": held,
        "parse_events_per_s": round(max(parses)),
        "replay_events_per_s": round(max(replays)),
        "ratio": round(max(replays) / max(parses), 3),
        "target_ratio": 0.5,
    }
    print(json.dumps(results, indent=2), flush=True)
    print(json.dumps(memory(path, policy_path, options), indent=2))


if __name__ == "__main__":
    main()
