"""`tiergate explain ACTION_TYPE`: the tier an action type holds, since when, and the evidence behind it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


class ExplainError(LookupError):
    """The decision log says nothing about the action type asked for."""


def decisions_for(lines: Iterable[bytes], action_type: str) -> list[dict[str, Any]]:
    """The decisions of one action type, in log order, from canonical decision-log lines."""
    out = []
    for line in lines:
        if line.strip():
            record = orjson.loads(line)
            if record.get("action_type") == action_type:
                out.append(record)
    return out


def explain(decisions: list[dict[str, Any]], action_type: str, console: Console) -> None:
    """Print the current tier, the decision that set it with its evidence, and the history of moves."""
    if not decisions:
        raise ExplainError(f"no decision about {action_type!r} in the log: check the name (it is case-sensitive)")
    current = max(
        (d for d in decisions if d["kind"] != "violation" and d["to_tier"] != d.get("from_tier")),
        key=lambda d: d["version"],
    )
    console.print(
        f"[bold]{action_type}[/] is at [bold]{current['to_tier']}[/] since {current['at'] or 'the start'}"
        f" (version {current['version']}, {current['decision_id']}, policy {current['policy_version']})"
    )
    console.print(f"why: {current['reason']}")
    if current.get("actor"):
        console.print(f"by: {current['actor']} ({current.get('op')})")
    if current["evidence"]:
        console.print(_evidence_table(current["evidence"]))
    if current.get("hold"):
        console.print(f"hold: passing since {current['hold']['passing_since']}, required {current['hold']['required']}")
    history = Table("decision", "kind", "move", "at", "reason", title="history", title_justify="left")
    for d in decisions:
        move = d["to_tier"] if d["from_tier"] in (None, d["to_tier"]) else f"{d['from_tier']} → {d['to_tier']}"
        history.add_row(d["decision_id"], d["kind"], move, d["at"] or "-", d["reason"])
    console.print(history)


def _evidence_table(evidence: list[dict[str, Any]]) -> Table:
    table = Table(
        "metric",
        "n",
        "successes",
        "rate",
        "Wilson bounds",
        "target",
        "min samples",
        "passed",
        title="evidence",
        title_justify="left",
    )
    for bar in evidence:
        rate = "-" if bar["rate"] is None else f"{bar['rate']:.4f}"
        table.add_row(
            bar["metric"],
            str(bar["n"]),
            str(bar["successes"]),
            rate,
            f"[{bar['lower']:.4f}, {bar['upper']:.4f}]",
            f"{bar['target']}",
            str(bar["min_samples"]),
            "yes" if bar["passed"] else "no",
        )
    return table
