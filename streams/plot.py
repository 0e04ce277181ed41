"""`tiergate plot`: each action type's bars, sample sizes and tier over time, as a PNG (matplotlib).

For people who would rather look than read, where Grafana is not at hand: the history is folded once,
and after every event that closed windows the key's view (models/views.py) is sampled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tiergate.models.fold import initial_state, step
from tiergate.models.policy import Policy
from tiergate.models.views import KeyView, key_view
from tiergate.models.wire import TIER_INDEX

from .codec import EventError, decode

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass
class Timeline:
    """One action type's views at its closes, oldest first."""

    action_type: str
    views: list[KeyView] = field(default_factory=list)


def timelines(lines: Iterable[bytes], policy: Policy | None) -> dict[str, Timeline]:
    """Fold the lines (under `policy`, or the policy activations the log carries); after each event that
    closed a window of its key, keep that key's view."""
    state = initial_state(policy)
    out: dict[str, Timeline] = defaultdict(lambda: Timeline(""))
    for raw in lines:
        try:
            event = decode(raw)
        except EventError:
            continue
        key = state.keys.get(event.action_type)
        before = None if key is None else key.next_close
        step(state, event)
        if key is not None and not key.read_only and key.next_close != before and before is not None:
            line = out[key.action_type]
            line.action_type = key.action_type
            line.views.append(key_view(key))
    return dict(out)


def render(lines: dict[str, Timeline], output: Path, title: str) -> None:
    """Three panels a type: rates against bars (with the keep margin band), sample sizes, tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(lines)
    if not names:
        raise ValueError("no window closed in this history: nothing to plot")
    figure, axes = plt.subplots(
        len(names) * 3,
        1,
        figsize=(13, 3.1 * len(names) * 1.6),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1.6, 1] * len(names)},
        squeeze=False,
    )
    for row, name in enumerate(names):
        views = lines[name].views
        when = [(v.last_close or 0) / 86400 for v in views]  # matplotlib's date numbers: days since 1970
        rates, samples, tiers = axes[row * 3][0], axes[row * 3 + 1][0], axes[row * 3 + 2][0]
        _bars(rates, samples, views, when)
        tiers.step(when, [TIER_INDEX[v.tier] for v in views], where="post", color="black")
        tiers.set_yticks([0, 1, 2], ["crawl", "walk", "run"])
        tiers.set_ylim(-0.3, 2.3)
        rates.set_title(name, loc="left", fontweight="bold")
        rates.set_ylabel("rate")
        samples.set_ylabel("samples")
        tiers.set_ylabel("tier")
        for axis in (rates, samples, tiers):
            axis.xaxis_date()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    plt.close(figure)


def _bars(rates: Axes, samples: Axes, views: list[KeyView], when: list[float]) -> None:
    """Each bar's series, as judged at the tier of the moment (bars change when the tier does); NaN where
    a bar does not apply, so its line breaks there."""
    nan = float("nan")
    series: dict[tuple[str, str], dict[str, list[float]]] = {}
    for i, view in enumerate(views):
        for rule, judged in (("promote", view.promote), ("keep", view.keep)):
            for e in judged:
                s = series.setdefault((rule, e.bar.metric), defaultdict(lambda: [nan] * len(views)))
                s["rate"][i] = nan if e.rate is None else e.rate
                s["lower"][i] = e.lower if e.n else nan
                s["n"][i] = e.n
                s["target"][i] = e.bar.target
                s["threshold"][i] = float(e.bar.keep_below) if rule == "keep" else nan
                s["min"][i] = e.bar.min_samples
    for (rule, metric), s in sorted(series.items()):
        label = f"{rule} {metric}"
        if rule == "promote":
            line = rates.plot(when, s["lower"], label=f"{label}: Wilson lower")[0]
        else:
            line = rates.plot(when, s["rate"], label=f"{label}: rate")[0]
            rates.fill_between(
                when,
                s["threshold"],
                s["target"],
                color=line.get_color(),
                alpha=0.15,
                step="post",
                label=f"{label}: margin band",
            )
        rates.step(when, s["target"], where="post", linestyle="--", color=line.get_color(), linewidth=0.8)
        samples.plot(when, s["n"], color=line.get_color(), label=label)
        samples.step(when, s["min"], where="post", linestyle=":", color=line.get_color(), linewidth=0.8)
    shown = [x for s in series.values() for key in ("lower", "rate", "threshold") for x in s[key] if x == x]
    rates.set_ylim(max(0.0, min(shown, default=0.5) - 0.05), 1.01)
    rates.legend(loc="lower left", fontsize=7, ncols=3)
