"""Event time moving on: the watermark rises, windows close, and at each close the bars are judged.
Demotion is checked before promotion; a promotion needs every promote bar passing
at every close of a streak at least `hold` long, the cooldown over, no pin and room under the ceiling.
"""

from __future__ import annotations

from . import maturity, windows
from .durations import format_duration
from .evidence import keep_evidence, promote_evidence
from .stats import Verdict, falls, passes
from .transition import KeyStep
from .wire import format_ts

NEVER = 1 << 62  # a window index no close reaches


def advance(step: KeyStep, ts: int) -> None:
    """Raise the watermark to `ts − allowed_lateness` and close every window it reaches.

    Windows close one by one, but a run of closes at which nothing can happen (no evidence enters or
    leaves, no hold or cooldown ends) is passed over at once: a key idle for years costs O(1)."""
    key, rules = step.key, step.rules
    if key.max_ts is not None and ts <= key.max_ts:
        return
    key.max_ts = ts
    reached = windows.window_for(ts - rules.allowed_lateness, rules.window)  # windows below it close
    if key.next_close is None:
        key.next_close = reached
        key.lookback.advance(reached)
    while key.next_close < reached:
        close(step, key.next_close)
        quiet = min(next_event(step), reached)
        if quiet > key.next_close:
            key.next_close = quiet
            key.lookback.advance(quiet)


def close(step: KeyStep, index: int) -> None:
    """Close window `index`: its outcomes enter the lookback (and the bars' figures), the bars are judged.
    It runs at every window of every type that holds anything, so it calls out only where work is due."""
    key, rules = step.key, step.rules
    size = rules.window
    counters = key.open.pop(index, None)
    if key.cells:
        counters = maturity.mature(key, (index + 1) * size, counters)
    if counters is not None and key.since is not None and index < key.since // size:
        counters = None  # before the window holding `since`: no evidence for the current tier
    if counters is not None and not rules.read_only:
        observe(step, counters)
    key.lookback.push(index, counters)
    key.next_close = index + 1
    if len(key.seen) > key.sweep_at:
        key.forget()
    if not rules.read_only:
        decide(step, (index + 1) * size)


def next_event(step: KeyStep) -> int:
    """The first window from `next_close` whose close can change anything: one that holds outcomes,
    one at which evidence leaves the lookback, or one at whose end a passing streak may promote.
    Closes before it repeat the last close's verdicts, which have already acted."""
    key, rules = step.key, step.rules
    start = key.next_close
    assert start is not None
    due = NEVER
    for index in key.open:
        if start <= index < due:
            due = index
    held = key.lookback.windows
    if held:
        due = min(due, held[0][0] + key.lookback.length)  # the oldest window held leaves the lookback
    if key.cells:
        ripe = maturity.next_due(key)
        if ripe is not None:
            due = min(due, ripe)
    if key.passing_since is not None and key.pinned is None and key.tier + 1 <= key.ceiling:
        promotable = key.passing_since + rules.hold[key.tier]
        if key.last_demotion is not None:
            promotable = max(promotable, key.last_demotion + rules.cooldown)
        due = min(due, -(-promotable // rules.window) - 1)  # the first window whose end reaches it
    return due if due == NEVER else max(due, start)


def observe(step: KeyStep, counters: windows.Counters) -> None:
    """A closed window's outcomes of the current tier enter the bars' sequential figures (under a maturity,
    customer units enter when they mature: `counters` holds them by then). The tests, their slots and their
    states are parallel, one per bar (indexed, not zipped: this runs at every close)."""
    key, rules = step.key, step.rules
    tier = key.tier
    if rules.sequential_demotion:
        keep, slots = key.sequential.keep, rules.keep_slots[tier]
        for i, test in enumerate(rules.keep_tests[tier]):
            at = slots[i]
            test.observe(keep[i], counters[at], counters[at + 1])
    if rules.sequential_promotion:
        promote, slots = key.sequential.promote, rules.promote_slots[tier]
        for i, ptest in enumerate(rules.promote_tests[tier]):
            at = slots[i]
            ptest.observe(promote[i], counters[at], counters[at + 1])


def verdicts(step: KeyStep) -> tuple[bool, bool]:
    """(a keep bar of the current tier falls, every promote bar passes), judged again only when the
    evidence or the tier changed since the last close: most closes see the same totals (the sequential
    figures change only with the evidence too)."""
    key = step.key
    lookback, tier = key.lookback, key.tier
    cached = key.verdicts
    if cached is not None and cached[0] == lookback.revision and cached[1] == tier:
        return cached[2], cached[3]
    falling, passing = keep_falls(step), gate_passes(step)
    key.verdicts = (lookback.revision, tier, falling, passing)
    return falling, passing


def keep_falls(step: KeyStep) -> bool:
    """Does a keep bar of the current tier fall, by the demotion rule? (Loops, not generators: this runs at
    nearly every close.)"""
    key, rules = step.key, step.rules
    tier = key.tier
    if rules.sequential_demotion:
        keep = key.sequential.keep
        for i, test in enumerate(rules.keep_tests[tier]):  # noqa: SIM110 - no generator at every close
            if test.falls(keep[i]):
                return True
        return False
    totals = key.lookback.totals
    for bar in rules.keep_bars[tier]:
        at = windows.slot(tier, bar.metric_index)
        if falls(bar, totals[at + 1], totals[at]):
            return True
    return False


def gate_passes(step: KeyStep) -> bool:
    """Does every promote bar of the current tier pass, by the promotion rule? (No gate: never.)"""
    key, rules = step.key, step.rules
    tier = key.tier
    if not rules.promote_bars[tier]:
        return False
    if rules.sequential_promotion:
        for state in key.sequential.promote:  # noqa: SIM110 - no generator at every close
            if not state.passing:
                return False
        return True
    totals = key.lookback.totals
    for bar in rules.promote_bars[tier]:
        at = windows.slot(tier, bar.metric_index)
        if not passes(bar, totals[at + 1], totals[at], rules.z):
            return False
    return True


def decide(step: KeyStep, end: int) -> None:
    """At the close of the window ending at `end`: demotion first, then the promote streak and hold."""
    key, rules = step.key, step.rules
    falling, passing = verdicts(step)
    if falling and key.pinned is None:
        kept = keep_evidence(key)
        reason = "; ".join(e.message("keep") for e in kept if e.verdict is Verdict.FAIL)
        step.move("demote", key.tier - 1, end, reason, evidence=tuple(e.record() for e in kept))
        return
    if not passing:
        key.passing_since = None
        return
    if key.passing_since is None:
        key.passing_since = end
    if may_promote(step, end):
        judged = promote_evidence(key)
        hold = {"passing_since": format_ts(key.passing_since), "required": format_duration(rules.hold[key.tier])}
        reason = "; ".join(e.message("promote") for e in judged)
        reason += f"; held {format_duration(end - key.passing_since)} (hold {hold['required']})"
        step.move("promote", key.tier + 1, end, reason, evidence=tuple(e.record() for e in judged), hold=hold)


def may_promote(step: KeyStep, end: int) -> bool:
    key, rules = step.key, step.rules
    assert key.passing_since is not None
    return (
        end - key.passing_since >= rules.hold[key.tier]
        and (key.last_demotion is None or end >= key.last_demotion + rules.cooldown)
        and key.pinned is None
        and key.tier + 1 <= key.ceiling
    )


def late_reason(step: KeyStep, index: int) -> str:
    key, size = step.key, step.rules.window
    assert key.watermark is not None
    return f"window ending {format_ts((index + 1) * size)} closed at watermark {format_ts(key.watermark)}"
