"""Writes examples/events.jsonl: 35 days of the story fleet (streams/simulate.py) under examples/policy.yaml.

python examples/make_history.py && tiergate replay examples/events.jsonl --policy examples/policy.yaml
"""

from __future__ import annotations

from pathlib import Path

import orjson

from tiergate.models.wire import parse_ts
from tiergate.streams.policy_file import read_policy
from tiergate.streams.simulate import history, story_fleet

HERE = Path(__file__).parent
START, DAYS = parse_ts("2026-10-01T00:00:00Z"), 35


def main() -> None:
    policy = read_policy(HERE / "policy.yaml")
    events = history(story_fleet(START, seed=3, days=DAYS, scale=0.4), policy, START, DAYS * 24)
    (HERE / "events.jsonl").write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))


if __name__ == "__main__":
    main()
