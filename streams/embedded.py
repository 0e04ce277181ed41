"""The embedded evaluator: the fold over a SQLite-backed log on one machine (DESIGN.md §8).

`Evaluator.ingest` is the one write path, for HTTP posts, clock ticks and `tiergate import` alike: it
decodes a batch, folds it, and commits the events, decisions, set-aside events and new key states in one
transaction before anyone is told. One thread at a time may call it (the HTTP server runs it on a
single writer thread).
"""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.evaluator import KeyState, Result, State, initial_decisions, initial_state, step, tier_records
from tiergate.models.policy import Policy
from tiergate.models.wire import Tick, format_ts

from .clock import Clock
from .codec import EventError, decode, encode
from .metrics import catalog_label
from .store import Appended, Store, StoreError

DB_NAME = "tiergate.db"


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


class DataDirLock:
    """One process at a time owns a data directory (the server, or an import)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "lock"
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        self.file = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise StoreError(
                f"{self.path.parent} is in use by another tiergate process (a server or an import): "
                "stop it first, or use another --data-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Evaluator:
    """The fold, its state and its store, for one data directory and one policy."""

    def __init__(self, policy: Policy, data_dir: Path, clock: Clock, max_skew: int = 300) -> None:
        self.policy, self.clock, self.max_skew = policy, clock, max_skew
        self.lock = DataDirLock(data_dir)
        self.lock.acquire()
        try:
            self.store = Store(data_dir / DB_NAME)
            self._start()
        except BaseException:
            self.lock.release()
            raise
        self.state = self._restore()
        self.tiers: dict[str, TierRecord] = {r.action_type: r for r in tier_records(self.state, self.policy)}
        self.event_counts: Counter[tuple[str, str]] = Counter()
        self.decision_counts: Counter[tuple[str, str]] = Counter()
        self._count_history()

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
                self.store.append((), initial_decisions(self.policy), (), ())

    def _restore(self) -> State:
        """The saved state (it always matches the log: both commit together); never-touched keys start fresh."""
        snapshot, _ = self.store.snapshot()
        state = initial_state(self.policy)
        for name, saved in snapshot.items():
            if name in state.keys:
                state.keys[name] = KeyState.from_dict(saved)
        return state

    def _count_history(self) -> None:
        for action_type, result, n in self.store.db.execute(
            "SELECT action_type, result, COUNT(*) FROM events GROUP BY 1, 2"
        ):
            self.event_counts[catalog_label(self.policy, action_type or ""), result] += n
        for action_type, kind, n in self.store.db.execute(
            "SELECT action_type, kind, COUNT(*) FROM decisions GROUP BY 1, 2"
        ):
            self.decision_counts[action_type, kind] += n
        counts = self.store.counts()  # kept events that never entered the log: bad input and `future`
        self.event_counts["", Result.REJECTED] += (
            counts["kept"] - counts.get(Result.LATE, 0) - counts.get(Result.REJECTED, 0)
        )

    # -- the write path ------------------------------------------------------------------------------

    def ingest(self, raws: Iterable[bytes], origin: str, live: bool = True) -> Ingested:
        """Fold a batch and commit it in one transaction. `live`: events dated beyond the clock plus the
        allowed skew are rejected (`future`); an import of older history is not live."""
        now = self.clock.now() if live else None
        out, appended, kept, touched = Ingested(), [], [], {}
        for index, raw in enumerate(raws):
            try:
                event = decode(raw)
            except EventError as error:
                out.results.append(EventResult(index, None, Result.REJECTED, error.reason))
                kept.append((f"{origin}#{index}", Result.REJECTED, error.reason, raw))
                continue
            if now is not None and event.ts > now + self.max_skew:
                future = (
                    f"future: ts {format_ts(event.ts)} is more than {self.max_skew}s ahead of the server clock "
                    f"({format_ts(now)}); fix the producer's clock"
                )
                out.results.append(EventResult(index, event.event_id, Result.REJECTED, future))
                kept.append((f"{origin}#{index}", Result.REJECTED, future, raw))
                continue
            _, decisions, result, reason = step(self.state, event, self.policy)
            out.results.append(EventResult(index, event.event_id, result, reason))
            appended.append(Appended(event.action_type, result, raw))
            out.decisions.extend(decisions)
            if result in (Result.LATE, Result.REJECTED):
                assert reason is not None
                kept.append((f"{origin}#{index}", result, reason, raw))
            key = self.state.keys.get(event.action_type)
            if key is not None:
                touched[key.action_type] = key
        self._commit(appended, out, touched, kept)
        return out

    def _commit(
        self,
        appended: list[Appended],
        out: Ingested,
        touched: dict[str, KeyState],
        kept: list[tuple[str, str, str, bytes]],
    ) -> None:
        try:
            with self.store.transaction():
                self.store.append(appended, out.decisions, touched.values(), kept)
        except BaseException:
            self.state = self._restore()  # the batch never happened: forget what the fold did with it
            raise
        for event in appended:
            self.event_counts[catalog_label(self.policy, event.action_type or ""), event.result] += 1
        self.event_counts["", Result.REJECTED] += len(out.results) - len(appended)  # bad input and `future`
        for decision in out.decisions:
            self.decision_counts[decision.action_type, decision.kind] += 1
        out.tier_changes = [TierRecord.from_decision(d) for d in out.decisions if d.moves]
        self.tiers = self.tiers | {r.action_type: r for r in out.tier_changes}  # readers see whole records

    # -- the clock -------------------------------------------------------------------------------------

    def due_ticks(self) -> list[bytes]:
        """A tick for every evaluated key whose oldest open window the clock (less the allowed lateness)
        has passed with no traffic. A key that has seen no event yet gets none: it has no evidence to
        judge, and starting its windows now would make a backlog posted later late. Deterministic ids:
        a re-sent tick is a duplicate."""
        now, policy = self.clock.now(), self.policy
        watermark = now - policy.allowed_lateness
        ticks = []
        for name, key in sorted(self.state.keys.items()):
            if key.read_only:
                continue
            if key.next_close is not None and watermark >= (key.next_close + 1) * policy.window:
                tick = Tick.model_validate(
                    {"type": "tick", "event_id": f"tick/{name}/{now}", "ts": format_ts(now), "action_type": name}
                )
                ticks.append(encode(tick))
        return ticks

    def tick(self) -> Ingested | None:
        ticks = self.due_ticks()
        return self.ingest(ticks, "clock", live=False) if ticks else None

    # -- reading ---------------------------------------------------------------------------------------

    def tier_map(self) -> list[TierRecord]:
        """The published tier map (records replaced whole after each commit: safe to read from any thread)."""
        return [self.tiers[name] for name in sorted(self.tiers)]
