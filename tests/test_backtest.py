"""Given/when/then for `tiergate backtest`: a candidate policy folded over a recorded history, against the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.models import Decision, fold
from tiergate.models.wire import event_from_dict, parse_ts
from tiergate.streams.backtest import BacktestError, Question, backtest

from .builders import BASE_POLICY, HOUR, T0, Log, at, climb_to_walk, end_of_hour, policy, policy_without
from .test_cli import CLIMB, OLD_CLIMB, refused, tiergate
from .test_cli import POLICY as GOLDEN_POLICY
from .test_maturity import acting, walking
from .test_properties import POLICY as PROPERTY_POLICY
from .test_properties import logs

V1 = policy()
CRAWL_BAR = {"metric": "acceptance_rate", "target": 0.5, "min_samples": 10}


def crawl_gate(hold: str = "2h", min_samples: int = 10, version: str = "candidate-1") -> Any:
    """The test policy with another Crawl → Walk gate (the Walk and Run rules unchanged)."""
    bar = {**CRAWL_BAR, "min_samples": min_samples}
    return policy(policy_version=version, tiers={"crawl": {"promote": {"hold": hold, "bars": [bar]}}})


def suggestions(log: Log, hour: float, accepted: int, rejected: int = 0, prefix: str = "s") -> Log:
    """Actions the agent suggested at Crawl, each with its review: `accepted` accepted, `rejected` rejected."""
    for n in range(accepted + rejected):
        action_id = f"{prefix}{hour}-{n}"
        log.add(type="action", ts=at(hour), tier="crawl", action_id=action_id)
        result = "accepted" if n < accepted else "rejected"
        log.add(type="outcome", ts=at(hour + 0.05), tier="crawl", action_id=action_id, kind="review", result=result)
    return log


def acted(log: Log, hour: float, action_id: str, tier: str = "walk", result: str = "completed") -> Log:
    """One action at `tier` and its internal outcome (the staff's verdict)."""
    log.add(type="action", ts=at(hour), tier=tier, action_id=action_id)
    return log.add(type="outcome", ts=at(hour + 0.05), tier=tier, action_id=action_id, kind="internal", result=result)


def climbed(log: Log) -> Log:
    """`log` with ten accepted reviews an hour until the Crawl hold is met (Walk at 03:00 under the test policy)."""
    climb_to_walk(log)
    return log


def lines(log: Log) -> list[bytes]:
    return [orjson.dumps(event) for event in log.events]


def run(log: Log, question: Question) -> tuple[dict[str, Any], list[Decision]]:
    """The report on `t`'s log and the candidate's decision log."""
    decisions: list[Decision] = []
    report = backtest(lines(log), question, "test.jsonl", decisions.append)
    return report, decisions


def timeline(report: dict[str, Any], side: str, name: str = "t") -> list[tuple[str, str | None]]:
    """(from, tier) of each segment of one side's timeline."""
    return [(s["from"], s["tier"]) for s in report["types"][name]["timelines"][side]]


def test_a_stricter_candidate_delays_the_promotion() -> None:
    """Given a log that climbed to Walk at 03:00 under a gate of 10 reviews, when a candidate asks for 20, then
    it promotes an hour later (04:00), the timelines first differ at 03:00 (the record moved), the candidate
    spent that hour at a tier no action ran at, and the Walk actions of that hour are its exposure."""
    log = Log().activate(0, V1, "a1")
    for hour in range(3):
        log.reviews(hour + 0.5, accepted=10)
    acted(log, 3.5, "w1").add(type="outcome", ts=at(3.6), tier="walk", action_id="w0", kind="internal", result="failed")
    log.tick(5.1)
    report, decisions = run(log, Question(crawl_gate(min_samples=20)))
    t = report["types"]["t"]
    assert timeline(report, "recorded") == [(at(0.5), "crawl"), (end_of_hour(2), "walk")]
    assert timeline(report, "candidate") == [(at(0.5), "crawl"), (end_of_hour(3), "walk")]
    divergence = t["first_divergence"]
    assert (divergence["at"], divergence["recorded"], divergence["candidate"]) == (end_of_hour(2), "walk", "crawl")
    assert divergence["moved"] == "recorded" and divergence["recorded_decision"]["kind"] == "promote"
    assert t["moves"]["candidate"]["promotions"] == t["moves"]["recorded"]["promotions"] == 1
    assert t["without_evidence"] == HOUR
    assert t["exposure"] == [
        {
            "ran_at": "walk",
            "recorded": "walk",
            "candidate": "crawl",
            "actions": 1,
            "outcomes": {"internal completed": 1, "internal failed": 1},
            "outcomes_without_action": 1,  # w0's action is not in the log: judged where its outcome came
        }
    ]
    assert not [d for d in decisions if d.kind == "violation"]  # a Walk action is no violation of the candidate


def test_the_same_action_under_an_activation_in_the_log_is_a_violation() -> None:
    """The control for the test above: had the candidate really been in force, the Walk action of 03:30 would
    have been a violation, so it is the backtest that keeps violations out."""
    log = Log().activate(0, crawl_gate(min_samples=20), "a1")
    for hour in range(3):
        log.reviews(hour + 0.5, accepted=10)
    acted(log, 3.5, "w1")
    _, decisions = fold(log.models())
    assert [d.kind for d in decisions if d.kind == "violation"] == ["violation"]


def test_a_looser_candidate_promotes_earlier_and_its_exposure_is_counted_with_the_actions_outcomes() -> None:
    """Given suggestions that climbed to Walk at 03:00 under a 2h hold, when a candidate holds for 1h, then it
    promotes at 02:00, and the hour-2 suggestions (made at Crawl while it held Walk) are its exposure, each
    outcome counted with its action even when it arrives after the candidate moved on."""
    log = Log().activate(0, V1, "a1")
    suggestions(log, 0.5, accepted=10)
    suggestions(log, 1.5, accepted=10)
    suggestions(log, 2.5, accepted=9, rejected=1)
    log.add(type="action", ts=at(2.6), tier="crawl", action_id="late-review")
    log.tick(3.1)
    log.add(type="outcome", ts=at(3.5), tier="crawl", action_id="late-review", kind="review", result="edited")
    report, _ = run(log, Question(crawl_gate(hold="1h")))
    t = report["types"]["t"]
    assert timeline(report, "candidate") == [(at(0.5), "crawl"), (end_of_hour(1), "walk")]
    assert timeline(report, "recorded") == [(at(0.5), "crawl"), (end_of_hour(2), "walk")]
    assert t["first_divergence"]["moved"] == "candidate"
    assert t["exposure"] == [
        {
            "ran_at": "crawl",
            "recorded": "crawl",
            "candidate": "walk",
            "actions": 11,
            "outcomes": {"review accepted": 9, "review edited": 1, "review rejected": 1},
            "outcomes_without_action": 0,
        }
    ]


@pytest.mark.parametrize(("ran_at", "demoted"), [("crawl", False), ("walk", True)])
def test_the_candidate_is_judged_only_on_outcomes_of_actions_at_the_tier_it_holds(ran_at: str, demoted: bool) -> None:
    """Given a candidate that promotes at 02:00 while the record stays at Crawl, when staff fail 10 of the
    suggestions the agent made at Crawl, then the candidate (at Walk, whose keep bar is completion) is not
    demoted on them; the same failures of actions that ran at Walk demote it."""
    log = Log().activate(0, V1, "a1")
    for hour in range(2):
        log.reviews(hour + 0.5, accepted=10)
    for n in range(10):
        acted(log, 2.5, f"f{n}", tier=ran_at, result="failed")
    log.tick(3.1)
    report, _ = run(log, Question(crawl_gate(hold="1h")))
    moves = [(m["kind"], m["to"]) for m in report["types"]["t"]["moves"]["candidate"]["changes"]]
    assert moves == [("promote", "walk")] + ([("demote", "crawl")] if demoted else [])


def test_under_a_maturity_the_candidate_counts_the_customer_units_of_the_actions_at_its_tier() -> None:
    """Given Walk actions whose customer outcomes mature after 3h (units counted from the actions themselves),
    when a candidate that differs only in its version takes over from the start, then it promotes to Run when
    the record did: the actions reach its fold as actions, units and all, not only as time."""
    log = walking()
    for hour in range(6):
        acting(log, hour + 0.5, 10)
    for hour in range(4, 10):
        log.checkpoint(hour + 0.2, through=hour).tick(hour + 0.3)
    report, _ = run(log, Question(policy(outcomes={"customer": {"maturity": "3h"}}, policy_version="same-rules")))
    changes = report["types"]["t"]["moves"]
    assert [(c["to"], c["at"]) for c in changes["recorded"]["changes"]] == [("walk", at(0.1)), ("run", end_of_hour(7))]
    assert [(c["to"], c["at"]) for c in changes["candidate"]["changes"]] == [("walk", at(0.1)), ("run", end_of_hour(7))]


def test_an_override_the_candidate_cannot_take_is_rejected_and_reported() -> None:
    """Given an operator's promote and pin at Walk, both applied in the record, when the candidate caps the type
    at Crawl (max_tier), then both are rejected with the fold's reason, reported beside the recorded result,
    and the candidate keeps the type at Crawl."""
    log = Log().activate(0, V1, "a1")
    log.override(0.2, "promote").override(0.3, "pin", tier="walk").tick(1.1)
    capped = policy(policy_version="capped", action_types={**BASE_POLICY["action_types"], "t": {"max_tier": "crawl"}})
    report, _ = run(log, Question(capped))
    rejected = report["types"]["t"]["rejected_overrides"]
    assert [(r["op"], r["tier"], r["recorded"]) for r in rejected] == [
        ("promote", None, "applied"),
        ("pin", "walk", "applied"),
    ]
    assert rejected[0]["reason"].startswith("override promote rejected: already at the ceiling crawl")
    assert rejected[1]["reason"].startswith("override pin rejected: pin walk is above the ceiling crawl")
    assert report["types"]["t"]["tier"] == {"recorded": "walk", "candidate": "crawl"}


def test_from_in_the_middle_keeps_the_recorded_decisions_before_it_byte_for_byte() -> None:
    """Given a log whose 03:00 close promoted (decided only when an event of 04:12 came) and an activation of
    05:00, when a stricter candidate takes over at 03:30, then the candidate's decision log begins with every
    recorded decision dated before 03:30 (but the activation of 05:00's, which date themselves at the last
    close), byte for byte, the later activation is replaced, and from there the candidate's rules decide."""
    log = Log().activate(0, V1, "a1")
    for hour in range(3):
        log.reviews(hour + 0.5, accepted=10)
    for when in (4.2, 5.5, 6.5):
        log.internal(when, completed=10).customer(when, success=10)
    log.apply(5.0, policy(policy_version="test-2"), "a2")
    log.tick(8.1)
    start = T0 + round(3.5 * HOUR)
    question = Question(crawl_gate(min_samples=40), start=start)
    report, decisions = run(log, question)
    made_before = [d for d in fold(log.models())[1] if d.details.get("activation_id") == "a1"]  # a2 came at 05:00
    recorded = [d.to_json() for d in made_before if d.at is None or d.at < start]
    taken_over = next(i for i, d in enumerate(decisions) if d.details.get("activation_id") == question.activation_id)
    assert [d.to_json() for d in decisions[:taken_over]] == recorded
    assert any(d.kind == "promote" and d.at == T0 + 3 * HOUR for d in decisions[:taken_over])
    assert report["types"]["t"]["replaced_activations"] == 1
    later = [d for d in decisions[taken_over:] if d.action_type == "t"]
    assert later and all(d.policy_version == "candidate-1" for d in later)


def test_a_close_after_from_is_the_candidates_to_judge() -> None:
    """The control for the test above: with --from at 02:42, before the 03:00 close, the candidate (40 reviews)
    judges that close and does not promote: the recorded promotion above is kept because it came before --from."""
    log = Log().activate(0, V1, "a1")
    for hour in range(3):
        log.reviews(hour + 0.5, accepted=10)
    log.internal(4.2, completed=10).tick(5.1)
    report, _ = run(log, Question(crawl_gate(min_samples=40), start=T0 + round(2.7 * HOUR)))
    assert report["types"]["t"]["moves"]["candidate"]["promotions"] == 0
    assert report["types"]["t"]["moves"]["recorded"]["promotions"] == 1


def test_an_old_log_folds_under_the_fallback_and_the_candidate_takes_over_its_catalog() -> None:
    """Given a log from before activations and its policy as the fallback, when the candidate leaves `capped`
    out, then `capped` is retired (out of the catalog) in the candidate, `t` climbs in both, and the decision
    log begins with the fallback's initial decisions."""
    log = Log()
    climbed(log)
    candidate = policy_without("capped", policy_version="no-capped")
    report, decisions = run(log, Question(candidate, fallback=V1))
    assert [d.kind for d in decisions[:3]] == ["initial"] * 3
    assert report["types"]["capped"]["tier"] == {"recorded": "crawl", "candidate": None}
    assert report["types"]["t"]["tier"] == {"recorded": "walk", "candidate": "walk"}
    assert report["types"]["t"]["first_divergence"] is None


def test_an_old_log_without_a_fallback_and_a_fallback_for_a_log_with_its_own_policy_are_refused() -> None:
    """The same mistakes `replay` refuses: an old log needs the policy it ran under; a log that carries its own
    policy takes none."""
    old = climbed(Log())
    with pytest.raises(BacktestError, match=r"--fallback-policy POLICY\.yaml"):
        run(old, Question(V1))
    with pytest.raises(BacktestError, match="drop --fallback-policy"):
        run(climbed(Log().activate(0, V1, "a1")), Question(V1, fallback=V1))


def test_a_candidate_that_redraws_windows_in_the_middle_is_refused_naming_the_type() -> None:
    """A candidate with another window cannot take over a type whose windows are drawn: the fold's refusal,
    with the type and the moment."""
    log = climbed(Log().activate(0, V1, "a1")).reviews(4.5, accepted=1, tier="walk")
    with pytest.raises(BacktestError, match=r"^t: the candidate cannot take over at .*refused: window cannot change"):
        run(log, Question(policy(window="2h", lookback="2d"), start=T0 + 4 * HOUR))


def test_a_type_only_the_candidate_names_starts_at_crawl_with_no_evidence() -> None:
    """A type new in the candidate is introduced at Crawl and reported, although the log never names it."""
    grown = policy(policy_version="grown", action_types={**BASE_POLICY["action_types"], "new_type": {}})
    report, _ = run(climbed(Log().activate(0, V1, "a1")), Question(grown))
    assert report["types"]["new_type"]["tier"] == {"recorded": None, "candidate": "crawl"}


def test_reporting_one_type_reports_it_as_the_whole_backtest_does() -> None:
    """--type folds only the named types; each type folds alone, so its report is the same as in a backtest of
    every type (the span included: it runs over the whole log)."""
    log = climbed(Log().activate(0, V1, "a1")).tick(6.5)  # t's log runs on after capped's
    log.events += [{**event, "event_id": f"capped-{event['event_id']}"} for event in climbed(Log("capped")).events]
    whole, _ = run(log, Question(crawl_gate(hold="1h")))
    alone, _ = run(log, Question(crawl_gate(hold="1h"), types=frozenset({"capped"})))
    assert list(alone["types"]) == ["capped"]
    assert alone["types"]["capped"] == whole["types"]["capped"] and alone["span"] == whole["span"]
    assert whole["types"]["capped"]["first_divergence"] is not None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=logs, cut=st.floats(0, 1))
def test_backtesting_the_logs_own_policy_changes_no_decision(events: list[dict[str, Any]], cut: float) -> None:
    """For any old log and any --from (or none), a candidate equal to the log's policy makes the same
    decisions per type as the record (its own activation and the record's violations aside), so the
    timelines never diverge, no time is without evidence, and every exposed action was exposed under the
    record too."""
    last = max((parse_ts(e["ts"]) for e in events), default=T0)
    start = None if cut < 0.2 else int(T0 + cut * (last - T0))
    same = PROPERTY_POLICY.before_activations  # the rules the old log was decided by: its unnamed rules are v1
    question = Question(same, fallback=PROPERTY_POLICY, start=start)
    decisions: list[Decision] = []
    report = backtest([orjson.dumps(e) for e in events], question, "law", decisions.append)
    recorded = fold([event_from_dict(e) for e in events], PROPERTY_POLICY)[1]
    for name, data in report["types"].items():
        assert _facts(decisions, name) == _facts(recorded, name)
        assert data["first_divergence"] is None and data["without_evidence"] == 0
        assert all(row["recorded"] == row["candidate"] for row in data["exposure"])


def _facts(decisions: list[Decision], name: str) -> list[tuple[Any, ...]]:
    """What a type's decisions say, without their numbering, the activation that is the candidate's own, and
    violations (which the candidate never emits)."""
    return [
        (d.kind, d.from_tier, d.to_tier, d.at, d.reason, d.evidence)
        for d in decisions
        if d.action_type == name and d.kind not in ("policy", "violation")
    ]


# -- the command ------------------------------------------------------------------------------------------


def strict_candidate(tmp_path: Path) -> Path:
    """The golden policy with a Crawl gate of 30 reviews instead of 20."""
    text = GOLDEN_POLICY.read_text().replace("min_samples: 20}]}", "min_samples: 30}]}", 1)
    path = tmp_path / "candidate.yaml"
    path.write_text(text.replace('policy_version: "golden-1"', 'policy_version: "golden-strict"'))
    return path


def test_the_command_writes_the_report_the_picture_and_the_decisions_the_same_bytes_every_run(tmp_path: Path) -> None:
    """`tiergate backtest` (a real subprocess) exits 0, prints JSON that parses, writes a PNG and the candidate's
    decision log, and a second run writes the same bytes of all three."""
    candidate = strict_candidate(tmp_path)
    outputs = []
    for run_number in (1, 2):
        png, log = tmp_path / f"b{run_number}.png", tmp_path / f"d{run_number}.jsonl"
        done = tiergate(
            "backtest", str(CLIMB), "--policy", str(candidate), "--json", "--png", str(png), "--decisions", str(log)
        )
        assert done.returncode == 0, done.stderr
        outputs.append((done.stdout, png.read_bytes(), log.read_bytes()))
    report = json.loads(outputs[0][0])
    assert report["candidate"]["policy_version"] == "golden-strict"
    assert report["types"]["reply_to_ticket"]["first_divergence"]["candidate"] == "crawl"
    assert outputs[0][1].startswith(b"\x89PNG\r\n\x1a\n")
    assert outputs[0][2].count(b"\n") > 4
    assert outputs[0] == outputs[1]


def test_the_text_report_names_each_type_and_the_exposure(tmp_path: Path) -> None:
    """Without --json the report is tables on stdout: each type, its first divergence, and the exposure."""
    done = tiergate("backtest", str(CLIMB), "--policy", str(strict_candidate(tmp_path)), "--type", "reply_to_ticket")
    assert done.returncode == 0, done.stderr
    assert "reply_to_ticket" in done.stdout and "refund_up_to_50" not in done.stdout
    assert "2026-11-02T04:00:00Z" in done.stdout and "walk vs crawl (recorded promote)" in done.stdout
    assert "exposure: recorded actions that ran at another tier" in done.stdout


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["no-such.jsonl", "--policy", str(GOLDEN_POLICY)], ["no-such.jsonl: no such file"]),
        ([str(CLIMB), "--policy", str(GOLDEN_POLICY), "--from", "yesterday"], ["--from: 'yesterday' is not RFC 3339"]),
        ([str(OLD_CLIMB), "--policy", str(GOLDEN_POLICY)], ["--fallback-policy POLICY.yaml"]),
        ([str(CLIMB), "--policy", str(GOLDEN_POLICY), "--type", "nope"], ["no action type nope"]),
    ],
)
def test_mistakes_are_one_line_and_exit_2(argv: list[str], fragments: list[str]) -> None:
    """A missing log, an unreadable --from, an old log without its policy and an unknown --type: exit 2, no
    traceback, nothing on stdout, the fix named."""
    refused(tiergate("backtest", *argv), 2, *fragments)
