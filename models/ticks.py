"""The one rule for clock ticks: when a live runtime's clock must enter a key's log.

A runtime reads its clock and appends what this returns to the log, so replay sees the same time. A key
gets a tick once the clock, less its allowed lateness, has passed the end of its oldest open window: its
windows close and its holds complete while no traffic arrives. A key that has seen no event gets none
(it has no evidence to judge, and starting its windows at the clock would make a backlog posted later
late). Tick ids name the window boundary reached, so two runtimes — or a restarted one — asking at
different moments of the same window write the same id, and the second is a duplicate.
"""

from __future__ import annotations

from .state import State
from .wire import Tick, format_ts


def due_ticks(state: State, now: int) -> list[Tick]:
    """The ticks the clock reading `now` owes, in action type order."""
    ticks = []
    for name, key in sorted(state.keys.items()):
        if key.next_close is None or key.retired or key.halted is not None:
            continue
        size = key.rules.window
        boundary = (now - key.rules.allowed_lateness) // size * size
        if boundary >= (key.next_close + 1) * size:
            tick_id = f"tick/{name}/{format_ts(boundary)}"
            ticks.append(Tick.model_construct(type="tick", event_id=tick_id, ts=now, action_type=name))
    return ticks
