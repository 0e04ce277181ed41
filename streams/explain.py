"""`tiergate explain ACTION_TYPE`: the tier an action type holds, since when, why it is there, and the
evidence behind it — read from a decision log.

Why a type is where it is has two parts: the decision that put it there (a promotion on its figures, an
operator's move, or the start), and what holds it there now (an operator's pin or cap that is still in
force). Everything printed that came from the log — operators' reasons, actors, agent names — is shown as
plain text: rich markup is escaped and control characters are made visible, never sent to the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tiergate.models.durations import format_duration


class ExplainError(LookupError):
    """The decision log says nothing about the action type asked for."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def plain(value: object) -> Text:
    """A value from the log as inert text: no markup, control characters shown as escapes (\\x1b)."""
    text = _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), str(value))
    return Text(text)


def decisions_for(lines: Iterable[bytes], action_type: str) -> list[dict[str, Any]]:
    """The decisions of one action type, in log order, from canonical decision-log lines."""
    out = []
    for line in lines:
        if line.strip():
            record = orjson.loads(line)
            if record.get("action_type") == action_type:
                out.append(record)
    return out


@dataclass
class Explanation:
    """An action type's standing as its decision log tells it."""

    action_type: str
    current: dict[str, Any]  # the decision that set the current tier
    holds: list[dict[str, Any]] = field(default_factory=list)  # pins and caps still in force
    history: list[dict[str, Any]] = field(default_factory=list)
    now: dict[str, Any] | None = None  # a live server's view at the last close (GET /v1/status), if asked

    @property
    def tier(self) -> str | None:
        """The tier the type holds; None once retired (it left the tier map: agents treat it as crawl)."""
        tier: str | None = self.current["to_tier"]
        return tier

    @property
    def retired(self) -> bool:
        kind: str = self.current["kind"]
        return kind == "retire"

    def why(self) -> str:
        """One sentence: what keeps the type at its tier (or out of the tier map)."""
        current = self.current
        if self.retired:
            return (
                f"retired by policy activation {current.get('activation_id')}{_at(current)}: it left the catalog, "
                "so agents treat it as crawl and its actions and outcomes are rejected until a policy names it again"
            )
        for hold in self.holds:
            if hold["op"] == "pin":
                return f"pinned at {self.tier} by an operator: automatic moves are suspended until an unpin"
        for hold in self.holds:
            if hold["op"] == "cap" and hold.get("tier", hold["to_tier"]) == self.tier:
                return f"held at {self.tier} by an operator's cap: no promotion above it until an uncap"
        moved = {
            "promote": f"promoted{_at(current)}: every promote bar passed for the hold time",
            "demote": f"demoted{_at(current)}: {_fell(current['evidence'])}",
            "override": f"moved by an operator ({current.get('op')}){_at(current)}",
            "policy": f"moved by policy activation {current.get('activation_id')}{_at(current)}",
        }
        return moved.get(current["kind"], str(current["reason"]))

    def record(self) -> dict[str, Any]:
        return {
            "action_type": self.action_type,
            "tier": self.tier,
            "retired": self.retired,
            "since": self.current["at"],
            "version": self.current["version"],
            "why": self.why(),
            "set_by": self.current,
            "held_by": self.holds,
            "history": self.history,
        } | ({"now": self.now} if self.now is not None else {})


def explanation(decisions: list[dict[str, Any]], action_type: str, now: dict[str, Any] | None = None) -> Explanation:
    """Read an action type's decisions (log order) into what set its tier and what holds it there."""
    if not decisions:
        raise ExplainError(f"no decision about {action_type!r} in the log: check the name (it is case-sensitive)")
    current = max(
        (d for d in decisions if d["kind"] != "violation" and d["to_tier"] != d.get("from_tier")),
        key=lambda d: d["version"],
    )
    return Explanation(action_type, current, _holds(decisions), decisions, now)


def _at(decision: dict[str, Any]) -> str:
    """ " at <when>", or nothing for a decision made before any window of the type closed (it has no `at`)."""
    return f" at {decision['at']}" if decision["at"] else ""


def _fell(evidence: list[dict[str, Any]]) -> str:
    """How a keep bar fell, by the rule that judged it."""
    rules = {bar["test"]["rule"] for bar in evidence if "test" in bar and not bar["passed"]}
    if "tripwire" in rules:
        return "its tripwire fired (failures in a row on a kept metric)"
    if "sprt" in rules:
        return "a keep bar's sequential test reached its threshold"
    return "a keep bar fell below target − margin"


def _holds(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pin and the cap in force at the end of the log: the last of each not lifted since (a retirement
    lifts both)."""
    held: dict[str, dict[str, Any] | None] = {"pin": None, "cap": None}
    lifts = {"unpin": "pin", "uncap": "cap"}
    for decision in decisions:
        if decision["kind"] == "retire":
            held = {"pin": None, "cap": None}
        op = decision.get("op") if decision["kind"] == "override" else None
        if op in held:
            held[op] = decision
        elif op in lifts:
            held[lifts[op]] = None
    return [decision for decision in held.values() if decision is not None]


def explain(
    decisions: list[dict[str, Any]], action_type: str, console: Console, now: dict[str, Any] | None = None
) -> None:
    """Print the current tier, why it is there, the decision that set it with its evidence, the live view
    when there is one, and the history."""
    told = explanation(decisions, action_type, now)
    current = told.current
    if told.tier is None:
        since = f" since {current['at']}" if current["at"] else ""
        heading = Text.assemble((action_type, "bold"), " is ", ("retired", "bold"), since)
    else:
        heading = Text.assemble(
            (action_type, "bold"), " is at ", (told.tier, "bold"), f" since {current['at'] or 'the start'}"
        )
    heading.append(f" (version {current['version']}, {current['decision_id']}, policy ")
    heading.append_text(plain(current["policy_version"]))
    console.print(heading.append(")"))
    console.print(Text("why: ").append_text(plain(told.why())))
    for hold in told.holds:
        console.print(_hold_line(hold))
    console.print(_set_by_line(current))
    if current["evidence"]:
        console.print(_evidence_table(current["evidence"]))
    if current.get("hold"):
        console.print(f"hold: passing since {current['hold']['passing_since']}, required {current['hold']['required']}")
    if now is not None:
        _print_now(now, console)
    console.print(_history(decisions))


def _print_now(now: dict[str, Any], console: Console) -> None:
    """What the evaluator sees at the type's last close: the gate out of its tier, the keep bars, the hold
    streak, and customer units still waiting to mature (of a retired type: nothing, it is not evaluated)."""
    if now.get("retired"):
        console.print("now: retired, out of the tier map; nothing is evaluated until a policy names it again")
        return
    watermark = now["watermark"] or "none yet"
    console.print(f"now (as of the last close, {now['last_close'] or 'none yet'}; watermark {watermark})")
    if now["promote"]:
        console.print(_evidence_table(now["promote"], "promote bars now"))
        hold = now["hold"]
        passing = f"passing since {hold['passing_since']}" if hold["passing_since"] else "not passing"
        console.print(f"hold: {passing}; {hold['progress']:.0%} of {format_duration(hold['required'] or 0)} held")
    if now["keep"]:
        console.print(_evidence_table(now["keep"], "keep bars now"))
    customer = now["customer"]
    if customer["maturity"] is not None:
        pending = ", ".join(f"{n} at {tier}" for tier, n in customer["pending"].items()) or "none"
        console.print(
            f"customer outcomes mature after {format_duration(customer['maturity'])}: pending {pending}; "
            f"the feed's checkpoint {customer['checkpoint'] or 'not yet sent'}"
        )


def _hold_line(hold: dict[str, Any]) -> Text:
    line = Text(f"{hold['op']} by ").append_text(plain(hold["actor"]))
    return line.append(f" at {hold['at']} ({hold['decision_id']}): ").append_text(plain(hold["reason"]))


def _set_by_line(decision: dict[str, Any]) -> Text:
    line = Text(f"set by {decision['decision_id']} ({decision['kind']}")
    if decision.get("op"):
        line.append(f" {decision['op']}")
    if decision.get("activation_id"):
        line.append(" of activation ").append_text(plain(decision["activation_id"]))
    if decision.get("actor"):
        line.append(" by ").append_text(plain(decision["actor"]))
    return line.append("): ").append_text(plain(decision["reason"]))


def _history(decisions: list[dict[str, Any]]) -> Table:
    history = Table("decision", "kind", "move", "at", "by", "reason", title="history", title_justify="left")
    for d in decisions:
        to = d["to_tier"] or "retired"  # a retirement has no tier to move to
        move = to if d["from_tier"] in (None, d["to_tier"]) else f"{d['from_tier']} → {to}"
        kind = f"{d['kind']} {d['op']}" if d.get("op") else d["kind"]
        by = d.get("actor") or d.get("agent") or ""
        history.add_row(d["decision_id"], kind, move, d["at"] or "-", plain(by), plain(d["reason"]))
    return history


TEST_COLUMNS = ("rule", "statistic", "threshold", "n since the test began")


def _evidence_table(evidence: list[dict[str, Any]], title: str = "evidence") -> Table:
    """Each bar's lookback figures; for a bar judged by a sequential rule or the tripwire, also the rule's
    statistic against its threshold, on the outcomes since its test began."""
    tested = any("test" in bar for bar in evidence)
    columns = ["metric", "n", "successes", "rate", "Wilson bounds", "target", "min samples", "passed"]
    table = Table(*columns, *(TEST_COLUMNS if tested else ()), title=title, title_justify="left")
    for bar in evidence:
        rate = "-" if bar["rate"] is None else f"{bar['rate']:.4f}"
        row: list[Text | str] = [
            plain(bar["metric"]),
            str(bar["n"]),
            str(bar["successes"]),
            rate,
            f"[{bar['lower']:.4f}, {bar['upper']:.4f}]",
            f"{bar['target']}",
            str(bar["min_samples"]),
            "yes" if bar["passed"] else "no",
        ]
        if tested:
            row += _test_cells(bar.get("test"))
        table.add_row(*row)
    return table


def _test_cells(test: dict[str, Any] | None) -> list[Text | str]:
    if test is None:
        return ["v1", "-", "-", "-"]
    return [plain(test["rule"]), f"{test['statistic']:g}", f"{test['threshold']:g}", str(test["n"])]
