"""The golden scenarios, written as stories. `python -m tests.golden.scenarios` rewrites each scenario's
events.jsonl from these stories and its expected decision log from a fold (review the diff before
committing: the expected log is the reviewed record of what the policy decides).

All times are hours from 2026-11-02T00:00Z; `end_of_hour(h)` is where the close of hour h is dated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.builders import Log
from tiergate.models.fold import fold
from tiergate.models.policy import Policy
from tiergate.streams.activation import Catalog

HERE = Path(__file__).parent


def climb_to_walk(log: Log, per_hour: int = 10) -> None:
    """Reviews for hours 0-3: inconclusive at 01:00 (n=10), passing from 02:00 (n=20), promoted at 04:00."""
    for hour in range(4):
        log.reviews(hour + 0.5, accepted=per_hour)


def clean_climb() -> Log:
    """reply_to_ticket climbs Crawl → Walk at 04:00 and Walk → Run at 09:00, then keeps Run."""
    log = Log("reply_to_ticket")
    climb_to_walk(log)
    for hour in range(4, 9):  # at walk: perfect internal and customer outcomes, 20 of each an hour
        log.internal(hour + 0.5, completed=20).customer(hour + 0.5, success=20)
    for hour in range(9, 11):  # at run: customers keep succeeding
        log.customer(hour + 0.5, success=20, tier="run")
    return log.tick(11.25)


def customer_blocks_run() -> Log:
    """refund_up_to_50 reaches Walk; staff complete all of it but 4 in 20 refunds fail for the customer,
    so the Walk → Run gate (customer_success_rate ≥ 0.9) never passes and it stays at Walk."""
    log = Log("refund_up_to_50")
    climb_to_walk(log)
    for hour in range(4, 11):
        log.internal(hour + 0.5, completed=20).customer(hour + 0.5, success=16, failure=4)
    return log.tick(11.25)


def regression_and_cooldown() -> Log:
    """reply_to_ticket reaches Walk at 04:00, regresses (12 of 20 completed: 0.6 < 0.8 − 0.05) and is
    demoted at 05:00. Its reviews pass again from 07:00 and the hold is met at 09:00, but the 6h
    cooldown holds the climb until 11:00."""
    log = Log("reply_to_ticket")
    climb_to_walk(log)
    log.internal(4.5, completed=12, failed=8).tick(5.25)
    for hour in range(5, 11):
        log.reviews(hour + 0.5, accepted=10)
    return log.tick(11.25)


def cap_and_pin() -> Log:
    """An operator pins reply_to_ticket at Crawl: its evidence passes but it stays until unpinned at 04:12,
    then climbs at the next close (05:00). refund_over_50 reaches Walk and stops there (max_tier walk);
    finance caps it at Crawl at 09:12 (a demotion at once) and a human promote after that is rejected."""
    log = Log("reply_to_ticket").override(0.1, "pin", tier="crawl")
    climb_to_walk(log)
    log.override(4.2, "unpin").tick(5.25)
    capped = Log("refund_over_50")
    climb_to_walk(capped)
    for hour in range(4, 9):
        capped.internal(hour + 0.5, completed=20).customer(hour + 0.5, success=20)
    capped.tick(9.25).override(9.2, "cap", tier="crawl").override(9.3, "promote")
    return _interleave(log, capped)


def late_and_out_of_order() -> Log:
    """With 10m allowed lateness, a review of 01:58 that arrives after one of 02:05 still counts; a review
    of 00:30 that arrives at 01:20 is late (rejected), and a redelivered review is a duplicate. Hour 0
    has 9 timely reviews, so 02:00 is inconclusive (n=19 < 20): the streak starts at 03:00 and the climb
    comes at 05:00, an hour later than the clean climb."""
    log = Log("reply_to_ticket").reviews(0.5, accepted=9)
    log.reviews(1 + 20 / 60, accepted=1).outcome(0.5, "review", "accepted")  # arrives at 01:20: late
    log.reviews(1.5, accepted=8).reviews(2 + 5 / 60, accepted=1).reviews(1 + 58 / 60, accepted=1)  # out of order
    log.reviews(2.5, accepted=9)
    log.events.append(log.events[-1])  # redelivered
    log.reviews(3.5, accepted=10).reviews(4.5, accepted=10)
    return log.tick(5.25)


def thin_evidence() -> Log:
    """refund_up_to_50 gets three perfect reviews an hour: after six hours n=18 < min_samples 20, so its
    bars stay inconclusive and it stays at Crawl, however good the rate looks."""
    log = Log("refund_up_to_50")
    for hour in range(6):
        log.reviews(hour + 0.5, accepted=3)
    return log.tick(6.25)


def policy_changes() -> Log:
    """The policy changes under a running log. reply_to_ticket and refund_over_50 both reach Walk at 04:00.
    At 05:12 finance lowers refund_over_50's ceiling to Crawl and adds escalate_to_human (golden-2):
    refund_over_50 drops at once (dated its last close, 04:00), escalate_to_human starts at Crawl, and
    reply_to_ticket keeps its tier, streak and evidence. An apply at 05:30 made against golden-1 is stale and
    refused for every type; one at 05:45 that redraws the windows (2h) is refused too. At 06:12 the operator
    rolls back to the first document (golden-3): escalate_to_human is retired, refund_over_50 does not climb
    back by itself, and reply_to_ticket, whose rules never changed, is promoted at 09:00 on the streak it
    started at 06:00 under golden-2."""
    golden = golden_policy()
    log = Log("reply_to_ticket").activate(0, golden, "golden-1", reason="the golden scenarios' policy")
    for name in ("reply_to_ticket", "refund_over_50"):
        for hour in range(4):
            log.reviews(hour + 0.5, accepted=10, action_type=name)
    log.tick(4.1, action_type="refund_over_50")
    stale_catalog = Catalog.of(fold(log.models())[0])
    lowered = changed_policy(
        ("refund_over_50: {max_tier: walk}", "refund_over_50: {max_tier: crawl}\n  escalate_to_human: {}")
    )
    for hour in range(4, 10):
        if hour == 5:
            log.tick(5.1, action_type="refund_over_50")
            log.apply(5.2, lowered, "golden-2", reason="finance review: refunds over $50 back to suggestions")
            log.activate(
                5.5, changed_policy(("golden-1", "golden-1b")), "golden-1b", stale_catalog, "made before golden-2"
            )
            wider = changed_policy(
                ("window: 1h", "window: 2h"),
                ("lookback: 1d", "lookback: 2d"),
                ("refund_over_50: {max_tier: walk}", "refund_over_50: {max_tier: crawl}\n  escalate_to_human: {}"),
            )
            log.apply(5.75, wider, "golden-2w", reason="wider windows")
        if hour == 6:
            log.apply(6.2, golden, "golden-3", reason="roll back to the first document")
        log.internal(hour + 0.5, completed=20).customer(hour + 0.5, success=20)
    return log.tick(10.25)


def healthy_low_volume(rules: Callable[[], Policy] | None = None) -> Log:
    """Under the sound rules (`golden-sound`), refund_up_to_50 reaches Walk at 04:00 and then sees two
    completion outcomes an hour at a healthy rate. Three of its first ten fail: a point rate of 0.7 < 0.8 − 0.05
    on min_samples 10, which v1 would demote at 09:00 (`tests/test_golden.py` folds the same story under
    v1). The sequential test stands at 0.28 against its threshold 2 (a failure adds ln(0.3/0.2), a success
    ln(0.7/0.8)), so the type keeps Walk, and the later successes take the statistic down to its floor."""
    log = Log("refund_up_to_50").activate(0, (rules or sound_policy)(), "golden-sound", reason="the sound rules")
    climb_to_walk(log)
    failed_at = {5, 7, 8}  # one failure in each of these hours, the other outcome completed
    for hour in range(4, 14):
        failures = int(hour in failed_at)
        log.internal(hour + 0.25, completed=1 - failures, failed=failures).internal(hour + 0.75, completed=1)
    return log.tick(14.25)


def tripwire_in_a_window() -> Log:
    """Under the sound rules, reply_to_ticket reaches Walk at 04:00 and completes its first 20 internal tasks.
    From 05:05 six tasks fail in a row, five minutes apart: the tripwire (6 failures in a row) demotes it at
    05:30, at the sixth failure, inside the window — the close at 06:00 would not have (the sequential test
    stands at −0.24, far below its threshold 2)."""
    log = Log("reply_to_ticket").activate(0, sound_policy(), "golden-sound", reason="the sound rules")
    climb_to_walk(log)
    log.internal(4.5, completed=20)
    for minute in range(5, 35, 5):
        log.internal(5 + minute / 60, completed=0, failed=1)
    return log.tick(6.25)


def rule_change_restarts_the_streak() -> Log:
    """reply_to_ticket passes its Crawl gate under v1 from 02:00 and would be promoted at 04:00, but at 03:12
    an activation (golden-m) names the sound promote rule. A changed rule restarts the hold streak and the
    statistics: the e-value counts only the windows closed after the activation (the watermark then stood
    in hour 2), is inconclusive at 03:00 (n=10 < 20), reaches 1/alpha at 04:00 (n=20, ln E 2.71 ≥ ln 5), and
    the type is promoted when that new streak has held 2h, at 06:00."""
    log = Log("reply_to_ticket").activate(0, golden_policy(), "golden-1", reason="the golden scenarios' policy")
    mixture = changed_policy(("golden-1", "golden-m"), ("rule: wilson", "rule: mixture"))
    for hour in range(7):
        if hour == 3:
            log.apply(3.2, mixture, "golden-m", reason="the sound promote rule")
        log.reviews(hour + 0.5, accepted=10)
    return log.tick(7.25)


def sound_policy() -> Policy:
    """The golden policy naming the sound rules in place of v1, each with its defaults."""
    return changed_policy(
        ('"golden-1"', '"golden-sound"'), ("rule: wilson", "rule: mixture"), ("rule: point, tripwire: 0", "rule: sprt")
    )


def changed_policy(*changes: tuple[str, str]) -> Policy:
    """The golden policy with text replaced (each change must apply)."""
    from tiergate.streams.policy_file import parse_policy

    text = (HERE / "policy.yaml").read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    return parse_policy(text, "policy.yaml (changed)")


def _interleave(*logs: Log) -> Log:
    """Several action types' logs as one, ordered by event time (each key's own order is kept)."""
    merged = Log()
    merged.events = sorted((e for log in logs for e in log.events), key=lambda e: e["ts"])
    for n, event in enumerate(merged.events):
        event["event_id"] = f"{event['action_type']}-{n}" if event["type"] != "outcome" else event["event_id"]
    return merged


def golden_policy() -> Policy:
    from tiergate.streams.policy_file import read_policy

    return read_policy(HERE / "policy.yaml")


def activation() -> list[dict[str, Any]]:
    """Every scenario's log starts with the activation of the golden policy: the log carries its policy."""
    return Log().activate(0, golden_policy(), "golden-1", reason="the golden scenarios' policy").events


SCENARIOS: dict[str, Callable[[], Log]] = {
    "clean_climb": clean_climb,
    "customer_blocks_run": customer_blocks_run,
    "regression_and_cooldown": regression_and_cooldown,
    "cap_and_pin": cap_and_pin,
    "late_and_out_of_order": late_and_out_of_order,
    "thin_evidence": thin_evidence,
    "old_log": clean_climb,
    "policy_changes": policy_changes,
    "healthy_low_volume": healthy_low_volume,
    "tripwire_in_a_window": tripwire_in_a_window,
    "rule_change_restarts_the_streak": rule_change_restarts_the_streak,
}
OLD_LOGS = {"old_log"}  # made before policies lived in the log: no activation, replayed with --policy policy.yaml
# stories that write their policy's activations themselves
OWN_ACTIVATIONS = {"policy_changes", "healthy_low_volume", "tripwire_in_a_window", "rule_change_restarts_the_streak"}


def events_jsonl(name: str) -> bytes:
    """The scenario's events file: the policy's activation (unless it is an old log), then the story."""
    head = [] if name in OLD_LOGS | OWN_ACTIVATIONS else activation()
    return b"".join(orjson.dumps(event) + b"\n" for event in head + SCENARIOS[name]().events)


def main() -> None:
    from tiergate.streams.replay import fold_lines

    for name in SCENARIOS:
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        data = events_jsonl(name)
        (folder / "events.jsonl").write_bytes(data)
        lines = list(enumerate(data.splitlines(), 1))
        decisions: list[str] = []
        rejected: list[bytes] = []
        fold_lines(
            lines,
            golden_policy() if name in OLD_LOGS else None,
            lambda d, out=decisions: out.append(d.to_json() + "\n"),  # type: ignore[misc]
            lambda r, out=rejected: out.append(r.to_json() + b"\n"),  # type: ignore[misc]
            source="events.jsonl",
        )
        (folder / "expected.jsonl").write_text("".join(decisions))
        (folder / "expected.rejected.jsonl").write_bytes(b"".join(rejected))
        print(f"{name}: {len(lines)} events, {len(decisions)} decisions, {len(rejected)} rejected")


if __name__ == "__main__":
    main()
