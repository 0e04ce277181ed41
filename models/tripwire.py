"""The tripwire: `demotion.tripwire: k` failures in a row on a kept metric demote at once, at
the outcome that completes the run, not at the next close.

A run counts the outcomes of a keep bar's metric that are evidence for the current tier, in log order:
outcomes of actions at the current tier, not late, not duplicates, with `ts` at or after `start(since)`.
A failure adds one, a success ends the run. Under a customer maturity a success is not reported (it is the
absence of a failure by the deadline), so for customer outcomes the fold reads the run from the units
waiting to mature instead: k units in a row that have all failed — consecutive windows of the current
tier's actions whose every unit has a failure — trip it; a window with a unit not (yet) failed ends the run.
Each customer failure is seen at its own `ts`, so a type regressing at Run is demoted before its failures
mature. A pinned type is not moved (its run still counts).
"""

from __future__ import annotations

from . import windows
from .decisions import Decision
from .evidence import tripwire_evidence
from .resolved import METRIC_INDEX, METRIC_OF_KIND
from .sequential import KeepState, tripped
from .state import CellKey, KeyState
from .transition import KeyStep
from .wire import TIER_INDEX, Outcome


def after_outcome(key: KeyState, event: Outcome, success: int, out: list[Decision]) -> None:
    """An outcome counted as it comes, of a kind a keep bar of the current tier watches (the caller checks
    `rules.tripwire_bars`): it extends or ends the run of each keep bar on its metric."""
    tier = key.tier
    if TIER_INDEX[event.tier] != tier or not _since_tier(key, event.ts):
        return
    bars = key.rules.tripwire_bars[tier][event.kind]
    runs, failures = key.sequential.keep, key.rules.tripwire
    for index in bars:
        state = runs[index]
        state.run, fired = tripped(state.run, bool(success), failures)
        if fired and key.pinned is None:
            _demote(KeyStep(key, out), event.ts, index, state)
            return


def after_customer_failure(step: KeyStep, event: Outcome, cell: CellKey) -> None:
    """A customer failure marked its unit's cell (under a maturity): the run is the units in a row, in the
    order of their actions' windows, that have all failed."""
    key = step.key
    if cell[1] != key.tier or not _watched(step, event):
        return
    metric = METRIC_INDEX[METRIC_OF_KIND["customer"]]
    bars = key.rules.keep_bars[key.tier]
    for index, (bar, state) in enumerate(zip(bars, key.sequential.keep, strict=True)):
        if bar.metric_index == metric:
            state.run = failed_in_a_row(step)
            if state.run >= key.rules.tripwire and key.pinned is None:
                _demote(step, event.ts, index, state)
                return


def failed_in_a_row(step: KeyStep) -> int:
    """The most units in a row, over consecutive windows of the current tier's pending actions since
    `start(since)`, of which every one has failed."""
    key, size = step.key, step.rules.window
    first = 0 if key.since is None else windows.window_for(key.since, size)
    cells = sorted((window, cell) for (window, tier), cell in key.cells.items() if tier == key.tier and window >= first)
    best = run = 0
    for _, cell in cells:
        if cell.units == 0:
            continue  # failures reported before their action: it has not been counted yet
        run = run + cell.units if cell.failures >= cell.units else 0
        best = max(best, run)
    return best


def _watched(step: KeyStep, event: Outcome) -> bool:
    """Is the outcome evidence for the current tier that a tripwire watches?"""
    key = step.key
    return step.rules.tripwire > 0 and TIER_INDEX[event.tier] == key.tier and _since_tier(key, event.ts)


def _since_tier(key: KeyState, ts: int) -> bool:
    """Is `ts` in or after the window where the current tier began (its evidence starts there)?"""
    if key.since is None:
        return True
    size = key.rules.window
    return ts >= windows.window_for(key.since, size) * size


def _demote(step: KeyStep, ts: int, index: int, state: KeepState) -> None:
    """One tier down at once, dated like an override: at the outcome, or the end of the last closed window."""
    key = step.key
    assert key.next_close is not None
    at = max(ts, key.next_close * step.rules.window)
    evidence = tripwire_evidence(key, key.rules.keep_bars[key.tier][index], state)
    step.move(
        "demote", key.tier - 1, at, evidence.message("keep"), evidence=(evidence.record(),), window=step.window_of(at)
    )
