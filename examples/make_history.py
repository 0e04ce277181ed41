"""Writes examples/events.jsonl: the activation of examples/policy.yaml, then 35 days of the story fleet
(streams/simulate.py) under it. The log carries its policy, so it replays without one:

python examples/make_history.py && tiergate replay examples/events.jsonl
"""

from __future__ import annotations

from pathlib import Path

import orjson

from tiergate.models.wire import parse_ts
from tiergate.streams.activation import Catalog, policy_events
from tiergate.streams.policy_file import read_policy
from tiergate.streams.simulate import history, story_fleet

HERE = Path(__file__).parent
START, DAYS = parse_ts("2026-10-01T00:00:00Z"), 35


def main() -> None:
    policy = read_policy(HERE / "policy.yaml")
    activation = policy_events(policy, Catalog(), "example-1", "ops@example.com", "the example policy", START)
    events = history(story_fleet(START, seed=3, days=DAYS, scale=0.4), None, START, DAYS * 24, activation)
    lines = (orjson.dumps(event) + b"\n" for event in [*activation, *events])
    (HERE / "events.jsonl").write_bytes(b"".join(lines))


if __name__ == "__main__":
    main()
