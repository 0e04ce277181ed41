"""The simulated fleet's imperfect delivery, as the benchmarks and the demo rely on it."""

from __future__ import annotations

from pathlib import Path

from tiergate.models.fold import DUPLICATE, initial_state, step
from tiergate.models.wire import event_from_dict, parse_ts
from tiergate.streams.policy_file import read_policy
from tiergate.streams.simulate import HOUR, Delivery, Fleet, Profile, history

POLICY = Path(__file__).parent.parent / "examples" / "policy.yaml"
START = parse_ts("2026-01-05T00:00:00Z")


def test_a_re_reported_outcome_comes_later_under_its_first_id_and_counts_once() -> None:
    """With `rereport`, some outcomes arrive again an hour to two days after the first report, with the same
    event_id and a later ts, after the first report's window has closed; the fold counts each as a duplicate."""
    policy = read_policy(POLICY)
    fleet = Fleet(
        {"reply_to_ticket": Profile(20.0), "refund_up_to_50": Profile(20.0)},
        seed=3,
        delivery=Delivery(late=0.0, duplicate=0.0, rereport=0.05),
    )
    events = list(history(fleet, policy, START, 72))
    first: dict[str, int] = {}
    again: list[dict[str, object]] = []
    for event in events:
        ts = parse_ts(event["ts"])
        if event["event_id"] in first:
            assert ts >= first[event["event_id"]] + HOUR  # a re-report, not a duplicate delivery
            again.append(event)
        else:
            first[event["event_id"]] = ts
    assert again and all(e["type"] == "outcome" for e in again)
    state = initial_state(policy)
    results = {id(e): step(state, event_from_dict(e)).result for e in events}
    assert all(results[id(e)] == DUPLICATE for e in again)
