"""`tiergate backtest --png`: both tier timelines of each action type, one panel a type (matplotlib).

Drawn from the report itself, so the picture shows exactly what the table and the JSON say: the recorded
tier in black, the candidate's dashed on top, the stretches where they differ shaded (no outcome was
evidence for the candidate's tier there), and `--from` as a vertical line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiergate.models.wire import TIER_INDEX, parse_ts

from .timeline import Segment, aligned

DAY = 86400
OUT_LEVEL = -1  # where "out of the catalog" is drawn, below crawl


def segments(records: list[dict[str, Any]]) -> list[Segment]:
    """A timeline of the report back as segments."""
    return [
        Segment(parse_ts(r["from"]), parse_ts(r["to"]), None if r["tier"] is None else TIER_INDEX[r["tier"]], None)
        for r in records
    ]


def _steps(line: list[Segment]) -> tuple[list[float], list[int]]:
    """x (matplotlib date numbers: days since 1970) and y for a post-step line, the last point repeated."""
    xs = [s.start / DAY for s in line] + [line[-1].end / DAY]
    ys = [OUT_LEVEL if s.tier is None else s.tier for s in line]
    return xs, [*ys, ys[-1]]


def render(report: dict[str, Any], output: Path) -> None:
    """One panel per reported type; deterministic bytes for one report (no timestamp in the file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(report["types"])
    if not names:
        raise ValueError("no action type to draw")
    figure, axes = plt.subplots(len(names), 1, figsize=(12, 1.9 * len(names) + 0.8), sharex=True, squeeze=False)
    start = report["from"]
    for row, name in enumerate(names):
        _panel(axes[row][0], name, report["types"][name], None if start is None else parse_ts(start))
    axes[0][0].legend(loc="upper left", fontsize=8, ncols=4)
    figure.autofmt_xdate()  # slanted dates: they never run into each other
    candidate = report["candidate"]
    figure.suptitle(f"backtest of {report['log']}: candidate {candidate['policy_version']} against the record")
    figure.tight_layout()
    figure.savefig(output, dpi=90, metadata={"Software": None})
    plt.close(figure)


def _panel(axis: Any, name: str, data: dict[str, Any], start: int | None) -> None:
    recorded, candidate = segments(data["timelines"]["recorded"]), segments(data["timelines"]["candidate"])
    for begin, end, mine, theirs in aligned(recorded, candidate):
        if mine.tier != theirs.tier:
            axis.axvspan(begin / DAY, end / DAY, color="tab:orange", alpha=0.15, linewidth=0)
    axis.step(*_steps(recorded), where="post", color="black", linewidth=2.2, label="recorded")
    axis.step(*_steps(candidate), where="post", color="tab:orange", linestyle="--", linewidth=1.6, label="candidate")
    axis.plot([], [], color="tab:orange", alpha=0.3, linewidth=8, label="tiers differ")
    if start is not None:
        axis.axvline(start / DAY, color="tab:blue", linewidth=0.8, linestyle=":", label="--from")
    axis.set_yticks([OUT_LEVEL, 0, 1, 2], ["out", "crawl", "walk", "run"])
    axis.set_ylim(OUT_LEVEL - 0.3, 2.3)
    axis.set_title(name, loc="left", fontweight="bold", fontsize=10)
    axis.xaxis_date()
