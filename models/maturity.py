"""Delayed customer outcomes: with a maturity, customer success is the absence of a failure by
a deadline, and an action counts for the customer only once it is that old and the outcome feed says its
failures are in.

The unit of customer evidence is an action at the tier it ran at: a non-late action at Walk or Run, or at
Crawl an accepted or edited review (a rejected suggestion never reached a customer). Units are counted per
cell — (window of the action's ts, tier) — never per action, so memory follows the windows in flight, not
the volume. A customer failure before its action's maturity marks one unit of its cell failed. A cell
ending at `e` matures at the first close whose window end is ≥ e + maturity and at which the feed's highest
checkpoint is ≥ e + maturity; its units then enter that close's window as customer evidence: successes =
units − failures. A feed that stops leaves cells pending: nothing is presumed a success.
"""

from __future__ import annotations

from . import windows
from .resolved import METRIC_INDEX, METRIC_OF_KIND
from .state import Cell, CellKey, KeyState
from .wire import TIER_INDEX, Outcome, format_ts

CUSTOMER = METRIC_INDEX[METRIC_OF_KIND["customer"]]


def counts_units(key: KeyState, cell: CellKey) -> bool:
    """Does this key count units for `cell`: under a maturity now, or because the cell began under one."""
    return key.rules.maturity is not None or cell in key.cells


def add_unit(key: KeyState, cell: CellKey) -> None:
    if not counts_units(key, cell):
        return
    found = key.cells.get(cell)
    if found is None:
        assert key.rules.maturity is not None
        key.cells[cell] = Cell(1, 0, key.rules.maturity)
    else:
        found.units += 1


def unit_of_review(event: Outcome, size: int) -> CellKey | None:
    """The cell an accepted or edited review is a unit of (the action it judges ran at Crawl)."""
    if event.kind != "review" or event.result == "rejected":
        return None
    return (event.action_ts if event.action_ts is not None else event.ts) // size, TIER_INDEX[event.tier]


def failure_cell(key: KeyState, event: Outcome) -> tuple[CellKey | None, str | None]:
    """For a customer failure under a maturity (or into a pending cell): its cell, or why it cannot count.
    (None, None): no maturity applies — it counts as it comes."""
    if event.action_ts is None:
        if key.rules.maturity is None:
            return None, None
        return None, "action_ts: is required for a customer outcome under a maturity: report it from its receipt"
    cell = (event.action_ts // key.rules.window, TIER_INDEX[event.tier])
    pending = key.cells.get(cell)
    maturity = pending.maturity if pending is not None else key.rules.maturity
    if maturity is None:
        return None, None
    if event.ts >= event.action_ts + maturity:
        return None, (
            f"after maturity: the action of {format_ts(event.action_ts)} was final at "
            f"{format_ts(event.action_ts + maturity)} "
            "(its maturity had passed); a failure this late no longer counts"
        )
    return cell, None


def add_failure(key: KeyState, cell: CellKey, event_id: str) -> None:
    found = key.cells.get(cell)
    if found is None:
        assert key.rules.maturity is not None
        found = key.cells[cell] = Cell(0, 0, key.rules.maturity)
    found.failures += 1
    found.failure_ids.append(event_id)
    key.failure_ids[event_id] = cell


def due(key: KeyState, cell: CellKey, found: Cell, end: int) -> bool:
    """Does the cell mature at the close of a window ending at `end`?"""
    deadline = (cell[0] + 1) * key.rules.window + found.maturity
    return end >= deadline and key.checkpoint is not None and key.checkpoint >= deadline


def mature(key: KeyState, end: int, counters: windows.Counters | None) -> windows.Counters | None:
    """Fold every cell due at this close into its window's counters: n = units, successes = units − failures
    (failures beyond the units — no such action — are counted aside)."""
    ready = [(cell, found) for cell, found in key.cells.items() if due(key, cell, found, end)]
    if not ready:
        return counters
    counters = windows.empty() if counters is None else counters
    for cell, found in ready:
        at = windows.slot(cell[1], CUSTOMER)
        failed = min(found.failures, found.units)
        counters[at] += found.units
        counters[at + 1] += found.units - failed
        key.unmatched += found.failures - failed
        for event_id in found.failure_ids:
            key.failure_ids.pop(event_id, None)
        del key.cells[cell]
    return counters


def next_due(key: KeyState) -> int | None:
    """The index of the first close at which a pending cell can mature (the checkpoint already covers it)."""
    size, checkpoint = key.rules.window, key.checkpoint
    if checkpoint is None:
        return None
    found = [
        -(-((cell[0] + 1) * size + cell_of.maturity) // size) - 1
        for cell, cell_of in key.cells.items()
        if checkpoint >= (cell[0] + 1) * size + cell_of.maturity
    ]
    return min(found, default=None)


def pending(key: KeyState) -> dict[int, int]:
    """Units waiting to mature, per tier."""
    out: dict[int, int] = {}
    for (_, tier), found in key.cells.items():
        out[tier] = out.get(tier, 0) + found.units
    return out
