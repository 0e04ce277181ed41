"""Benchmark: `tiergate backtest` against `tiergate replay` on the same history, and its memory at 1× and 10×.

    python bench/backtest.py                  # 1M events, 60 action types, 90 days (replay's benchmark history)
    python bench/backtest.py --events 200000  # a quick look

A backtest parses each event once and folds it twice (as recorded, and under the candidate), with the
exposure bookkeeping on top; replay parses and folds once, so the backtest's rate can be at most about 0.6
of replay's (parse and fold cost about the same). Reported: events/s of replay and of the backtest with the
candidate from halfway and from the start, in the same run (alternating rounds, the best of each), and
their ratios; the target is at least 0.4. Then peak resident memory of `tiergate backtest` (a child
process) on the history and on ten times the history; the target is within 10%, as for replay: what the
backtest remembers is bounded by the lookback (its action memory is pruned with the fold's ids), not by the
history.

The candidate is the benchmark policy with a shorter Crawl hold (3d) and a stricter Walk keep bar, taking
over halfway through the history, so both folds promote, demote and diverge.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tiergate.models.wire import format_ts
from tiergate.streams.backtest import Question, backtest
from tiergate.streams.codec import iter_lines
from tiergate.streams.policy_file import read_policy

sys.path.insert(0, str(Path(__file__).parent))
from replay import DATA, DAY, START, extend, generate, replay_rate

TARGET_RATIO = 0.4  # two folds where replay has one: (parse + fold) / (parse + 2 folds) is about 0.6 at best


def candidate_policy(policy_path: Path) -> Path:
    """The benchmark policy with a 3d Crawl hold and a Walk keep bar of 0.93 (0.90 in the policy)."""
    raw = yaml.safe_load(policy_path.read_text())
    raw["policy_version"] = "bench-candidate"
    raw["tiers"]["crawl"]["promote"]["hold"] = "3d"
    raw["tiers"]["walk"]["keep"] = [{"metric": "completion_rate", "target": 0.93}]
    path = DATA / f"candidate-{policy_path.stem}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def backtest_rate(path: Path, question: Question) -> tuple[float, dict[str, int]]:
    """Events/s of the whole backtest: parse, both folds, the candidate's decision log written, the report."""
    gc.freeze()  # as the commands do
    started = time.perf_counter()
    with open(path, "rb") as stream, open(os.devnull, "w") as sink:
        report = backtest(
            (line for _, line in iter_lines(stream)), question, path.name, lambda d: sink.write(d.to_json() + "\n")
        )
    elapsed = time.perf_counter() - started
    moves = sum(
        side["promotions"] + side["demotions"] for data in report["types"].values() for side in data["moves"].values()
    )
    exposed = sum(row["actions"] for data in report["types"].values() for row in data["exposure"])
    diverged = sum(data["first_divergence"] is not None for data in report["types"].values())
    counts = {"events": report["events"], "moves": moves, "exposed_actions": exposed, "types_diverged": diverged}
    return report["events"] / elapsed, counts


def peak_rss_mib(path: Path, candidate: Path, policy_path: Path, start: str) -> float:
    """Peak resident memory of `tiergate backtest --json` on a file, in a child process of its own."""
    command = [
        sys.executable,
        "-m",
        "tiergate.streams.cli",
        "backtest",
        str(path),
        "--policy",
        str(candidate),
        "--fallback-policy",
        str(policy_path),
        "--from",
        start,
        "--json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"backtest failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=1_000_000)
    args.add_argument("--types", type=int, default=60)
    args.add_argument("--days", type=int, default=90)
    args.add_argument("--scale", type=int, default=10, help="memory run at this many times the history")
    args.add_argument("--rounds", type=int, default=3, help="alternating replay/backtest rounds; the best counts")
    args.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="the 1×/10× memory runs")
    options = args.parse_args()
    path, policy_path = generate(options.events, options.types, options.days)
    candidate = candidate_policy(policy_path)
    start = START + options.days // 2 * DAY
    halfway = Question(read_policy(candidate), read_policy(policy_path), start)
    from_start = Question(read_policy(candidate), read_policy(policy_path))
    replays, halves, wholes, counts = [], [], [], {}
    for _ in range(options.rounds):
        replays.append(replay_rate(path, policy_path)[0])
        rate, counts = backtest_rate(path, halfway)
        halves.append(rate)
        wholes.append(backtest_rate(path, from_start)[0])
    results = {
        **counts,
        "action_types": options.types,
        "days": options.days,
        "from": format_ts(start),
        "replay_events_per_s": round(max(replays)),
        "backtest_from_halfway_events_per_s": round(max(halves)),
        "backtest_from_start_events_per_s": round(max(wholes)),
        "ratio_from_halfway": round(max(halves) / max(replays), 3),
        "ratio_from_start": round(max(wholes) / max(replays), 3),
        "target_ratio": TARGET_RATIO,
    }
    print(json.dumps(results, indent=2), flush=True)
    if not options.memory:
        return
    longer = extend(path, options.scale, options.days)
    one = peak_rss_mib(path, candidate, policy_path, format_ts(start))
    many = peak_rss_mib(longer, candidate, policy_path, format_ts(start))
    memory = {
        "peak_rss_mib_1x": round(one, 1),
        f"peak_rss_mib_{options.scale}x": round(many, 1),
        "growth": round(many / one - 1, 3),
        "target_growth": 0.10,
    }
    print(json.dumps(memory, indent=2))


if __name__ == "__main__":
    main()
