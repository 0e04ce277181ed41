"""The embedded runtime: the fold over a SQLite-backed log on one machine (DESIGN §8).

`EmbeddedRuntime.ingest` is the one write path, for HTTP posts, clock ticks and `tiergate import` alike:
the ingest pipeline folds a batch into the state and its store sink commits the batch's events,
decisions and rejected input in one transaction before anyone is told. If anything fails before that
commit, the state is rebuilt from the store (snapshot + the log after it), so it always equals a fold of
the stored log. One thread at a time may call it (the HTTP server runs it on a single writer thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.durations import format_duration
from tiergate.models.fold import initial_decisions, initial_state, tier_records
from tiergate.models.policy import Policy
from tiergate.models.state import KeyState, State, StateSchemaError
from tiergate.models.ticks import due_ticks
from tiergate.models.wire import format_ts

from .clock import Clock
from .codec import encode
from .pipeline import Admit, Counting, Handled, Input, Pipeline, Tallies, named_action_type
from .store import Appended, Store, StoreError

DB_NAME = "tiergate.db"
WRITABLE = "give a writable --data-dir (or TIERGATE_DATA_DIR)"
SNAPSHOT_EVERY = 10_000  # events between snapshots of the state at least (more when the state is large)


@dataclass(frozen=True, slots=True)
class EventResult:
    """What became of one posted event: applied, duplicate, late or rejected (with the reason)."""

    index: int
    event_id: str | None
    result: str
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "event_id": self.event_id, "result": self.result}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(slots=True)
class Ingested:
    """The effect of one batch: per-event results, the decisions made and the tier records that changed."""

    results: list[EventResult] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    tier_changes: list[TierRecord] = field(default_factory=list)


class StoreSink:
    """The pipeline's sink for the embedded runtime: a batch, committed in one transaction (with a
    snapshot of the state when one is due)."""

    def __init__(self, store: Store, snapshot: Callable[[], Iterable[KeyState]] | None) -> None:
        self.store, self.snapshot = store, snapshot
        self.items: list[Handled] = []

    def handled(self, item: Handled) -> None:
        self.items.append(item)

    def commit(self) -> None:
        logged = [i for i in self.items if i.logged]
        with self.store.transaction():
            self.store.append(
                (Appended(i.action_type, i.result, i.input.raw, i.input.principal) for i in logged),
                (d for i in logged for d in i.decisions),
                (r for i in self.items if (r := i.rejection) is not None),
            )
            if self.snapshot is not None:
                self.store.save_snapshot(self.snapshot())


def past_and_future(now: int, max_skew: int, max_past: int) -> Admit:
    """The live server's clock checks. An event dated beyond the clock plus the allowed skew would close
    every window up to it; the first event of a type dated far in the past would start its windows there,
    and every later event would close them window by window. History goes in with `tiergate import`."""

    def admit(item: Input, event: Any, state: State) -> str | None:
        if event.ts > now + max_skew:
            return (
                f"future: ts {format_ts(event.ts)} is more than {format_duration(max_skew)} ahead of the server "
                f"clock ({format_ts(now)}); fix the producer's clock"
            )
        key = state.keys.get(event.action_type)
        if key is not None and key.max_ts is None and event.ts < now - max_past:
            return (
                f"past: ts {format_ts(event.ts)} is more than {format_duration(max_past)} before the server clock "
                f"({format_ts(now)}) and would start {event.action_type}'s windows there; post history with "
                "`tiergate import` (server stopped), or fix the producer's clock"
            )
        return None

    return admit


class DataDirLock:
    """One process at a time owns a data directory (the server, or an import)."""

    def __init__(self, data_dir: Path) -> None:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{data_dir}: cannot use this data directory ({error.strerror}); {WRITABLE}") from None
        self.path = data_dir / "lock"
        self.lock = FileLock(self.path)

    def acquire(self) -> None:
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise StoreError(
                f"{self.path.parent} is in use by another tiergate process (a server or an import): "
                "stop it first, or use another --data-dir"
            ) from None
        except OSError as error:
            raise StoreError(
                f"{self.path.parent}: cannot use this data directory ({error.strerror}); {WRITABLE}"
            ) from None

    def release(self) -> None:
        self.lock.release()


class EmbeddedRuntime:
    """The fold, its state and its store, for one data directory and one policy."""

    def __init__(
        self, policy: Policy, data_dir: Path, clock: Clock, max_skew: int = 300, max_past: int = 86400
    ) -> None:
        self.policy, self.clock, self.max_skew, self.max_past = policy, clock, max_skew, max_past
        self.lock = DataDirLock(data_dir)
        self.lock.acquire()
        try:
            self.store = Store(data_dir / DB_NAME)
            self._start()
            self.state = self._restore()
        except BaseException:
            self.lock.release()
            raise
        self.tiers: dict[str, TierRecord] = {r.action_type: r for r in tier_records(self.state)}
        self.tallies = Tallies.empty()
        self._count_history()
        self.since_snapshot = 0

    def close(self) -> None:
        self.store.close()
        self.lock.release()

    # -- start-up ------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Bind a new store to the policy and record the initial decision of every catalog type."""
        new = self.store.last_seq() == 0 and not self.store.decisions(limit=1)
        self.store.claim_policy(self.policy.version, self.policy.sha256)
        if new:
            with self.store.transaction():
                self.store.append((), initial_decisions(self.policy), ())

    def _restore(self) -> State:
        """The saved snapshot, then a fold of the log after it: the state equals a fold of the stored log."""
        snapshot, position = self.store.snapshot()
        state = initial_state(self.policy)
        try:
            restored = {name: KeyState.from_dict(saved) for name, saved in snapshot.items()}
        except StateSchemaError:
            restored, position = {}, 0  # saved by another tiergate: refold the whole log
        state.keys.update((name, key) for name, key in restored.items() if name in state.keys)
        tail = (Input("log", seq, raw) for seq, raw in self.store.events(after=position))
        Pipeline(self.policy).run(tail, state, _Discard())
        return state

    def _count_history(self) -> None:
        events, decisions = self.tallies
        for action_type, result, n in self.store.db.execute(
            "SELECT action_type, result, COUNT(*) FROM events GROUP BY 1, 2"
        ):
            events[action_type if action_type in self.state.keys else "", result] += n
        for action_type, kind, n in self.store.db.execute(
            "SELECT action_type, kind, COUNT(*) FROM decisions GROUP BY 1, 2"
        ):
            decisions[action_type, kind] += n
        refused = self.store.db.execute(  # rejected input that never entered the log: bad input, clock checks
            "SELECT COUNT(*) FROM rejected WHERE result = 'rejected'"
        ).fetchone()[0] - self.store.counts().get("rejected", 0)
        events["", "rejected"] += refused

    # -- the write path ------------------------------------------------------------------------------

    def ingest(self, raws: Iterable[bytes], source: str, live: bool = True, principal: str | None = None) -> Ingested:
        """Fold a batch and commit it in one transaction. `live`: the clock checks apply (`future`,
        `past`); an import of older history and the server's own ticks are not live. `principal`: the
        credential that posted the batch, kept beside each event and named in the decisions of overrides."""
        inputs = [Input(source, index, raw, principal=principal) for index, raw in enumerate(raws)]
        self.since_snapshot += len(inputs)
        sink = StoreSink(self.store, self._snapshot if self._snapshot_due() else None)
        try:
            self._pipeline(live).run(inputs, self.state, Counting(sink, self.tallies, self.state))
        except BaseException:
            self.state = self._restore()  # the batch never happened: forget what the fold did with it
            raise
        return self._published(sink.items)

    def dry_run(self, raws: Iterable[bytes], source: str, principal: str | None = None) -> Ingested:
        """What `ingest` would answer for a live batch, folded on a copy of the state of the types it names:
        nothing is stored, counted or published."""
        inputs = [Input(source, index, raw, principal=principal) for index, raw in enumerate(raws)]
        named = {name for item in inputs if (name := named_action_type(item.raw)) in self.state.keys}
        copy = State({name: KeyState.from_dict(self.state.keys[name].to_dict()) for name in named})
        sink = _Kept()
        self._pipeline(live=True).run(inputs, copy, sink)
        return results_of(sink.items)

    def _pipeline(self, live: bool) -> Pipeline:
        admit = past_and_future(self.clock.now(), self.max_skew, self.max_past) if live else None
        return Pipeline(self.policy, admit)

    def _snapshot_due(self) -> bool:
        """Often enough that a restart folds little of the log; seldom enough that writing a large state
        (ids remembered for the lookback) costs O(1) per event."""
        remembered = sum(len(key.seen) for key in self.state.keys.values())
        return self.since_snapshot >= max(SNAPSHOT_EVERY, remembered)

    def _snapshot(self) -> Iterable[KeyState]:
        self.since_snapshot = 0
        return self.state.keys.values()

    def _published(self, items: list[Handled]) -> Ingested:
        out = results_of(items)
        self.tiers = self.tiers | {r.action_type: r for r in out.tier_changes}  # readers see whole records
        return out

    # -- the clock -------------------------------------------------------------------------------------

    def due_ticks(self) -> list[bytes]:
        """The ticks the clock owes now (models.ticks.due_ticks: the one rule both live runtimes use)."""
        return [encode(tick) for tick in due_ticks(self.state, self.clock.now())]

    def tick(self) -> Ingested | None:
        ticks = self.due_ticks()
        return self.ingest(ticks, "clock", live=False) if ticks else None

    # -- reading ---------------------------------------------------------------------------------------

    def tier_map(self) -> list[TierRecord]:
        """The published tier map (records replaced whole after each commit: safe to read from any thread)."""
        return [self.tiers[name] for name in sorted(self.tiers)]


def results_of(items: list[Handled]) -> Ingested:
    """A batch's per-event results, its decisions and the tier records they change."""
    out = Ingested()
    for item in items:
        event_id = None if item.event is None else item.event.event_id
        out.results.append(EventResult(item.input.position, event_id, item.result, item.reason))
        out.decisions.extend(item.decisions)
    out.tier_changes = [TierRecord.from_decision(d) for d in out.decisions if d.moves]
    return out


class _Kept:
    """A sink that only keeps what it was handed (a dry run)."""

    def __init__(self) -> None:
        self.items: list[Handled] = []

    def handled(self, item: Handled) -> None:
        self.items.append(item)

    def commit(self) -> None:
        pass


class _Discard:
    """A sink for refolding what is already stored."""

    def handled(self, item: Handled) -> None:
        pass

    def commit(self) -> None:
        pass
