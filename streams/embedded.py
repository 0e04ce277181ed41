"""The embedded runtime: the fold over a SQLite-backed log on one machine.

`EmbeddedRuntime.ingest` is the one write path, for HTTP posts, clock ticks and `tiergate import` alike:
the ingest pipeline folds a batch into the state and its store sink commits the batch's events,
decisions and rejected input in one transaction before anyone is told. If anything fails before that
commit, the state is rebuilt from the store (snapshot + the log after it), so it always equals a fold of
the stored log. One thread at a time may call it (the HTTP server runs it on a single writer thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout

from tiergate.models.decisions import Decision, TierRecord
from tiergate.models.durations import format_duration
from tiergate.models.fold import APPLIED, REJECTED, initial_state, tier_records
from tiergate.models.policy import Policy, load_policy
from tiergate.models.results import SET_ASIDE
from tiergate.models.state import KeyState, State, StateSchemaError
from tiergate.models.ticks import due_ticks
from tiergate.models.wire import PolicyEvent, format_ts

from .activation import Catalog, Diff, diff, new_activation_id, policy_events, reused_id
from .canonical import claimed_sha256s, policy_sha256
from .clock import Clock
from .codec import encode
from .pipeline import Admit, Counting, Handled, Input, Pipeline, Tallies, named_action_type
from .store import ActivationRow, Appended, Store, StoreError

DB_NAME = "tiergate.db"
WRITABLE = "give a writable --data-dir (or TIERGATE_DATA_DIR)"
UNATTENDED = ("file", "log", "migration")  # activation sources no person chose at the time
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

    def __init__(
        self,
        store: Store,
        snapshot: Callable[[], Iterable[KeyState]] | None,
        also: Callable[[Store], None] | None = None,
    ) -> None:
        self.store, self.snapshot, self.also = store, snapshot, also
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
            if self.also is not None:
                self.also(self.store)
            for item in logged:
                if isinstance(item.event, PolicyEvent) and item.result == APPLIED:
                    self.store.record_activation(activation_row(item.event))
            if self.snapshot is not None:
                self.store.save_snapshot(self.snapshot())


def activation_row(event: PolicyEvent) -> ActivationRow:
    """What an activation's event says of its document: the globals and its type's entry (a retirement
    adds nothing). The events of one activation together rebuild its normalised document."""
    document: dict[str, Any] = {"policy_version": event.policy_version, "action_types": {}}
    if event.rules is not None:
        rules = event.rules
        document |= {
            name: rules[name] for name in ("window", "allowed_lateness", "lookback", "confidence", "acceptance")
        }
        document["action_types"][event.action_type] = {
            name: rules[name] for name in ("read_only", "max_tier", "tiers", "demotion", "outcomes")
        }
    return ActivationRow(
        event.activation_id,
        0,
        event.ts,
        "log",
        event.actor,
        None,
        event.reason,
        event.policy_version,
        event.policy_sha256,
        document,
    )


def past_and_future(now: int, max_skew: int, max_past: int) -> Admit:
    """The live server's clock checks. An event dated beyond the clock plus the allowed skew would close
    every window up to it; the first event of a type dated far in the past would start its windows there,
    and every later event would close them window by window. History goes in with `tiergate import`."""

    def admit(item: Input, event: Any, state: State) -> str | None:
        if isinstance(event, PolicyEvent):
            return None  # never late, moves no time: an applier's clock does not matter
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
    """One process at a time owns a data directory (the server, or an import). The lock lies beside the
    database the directory really uses, so a second directory whose tiergate.db links to it is refused too."""

    def __init__(self, data_dir: Path) -> None:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{data_dir}: cannot use this data directory ({error.strerror}); {WRITABLE}") from None
        self.database = (data_dir / DB_NAME).resolve()  # SQLite writes its -wal and -shm beside the real file
        self.path = self.database.parent / "lock"
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


def check_writable(store: Path) -> None:
    """Refuse a store whose files this process cannot write (chmod 444, chattr +i, a read-only mount) in a
    data directory it can: SQLite would open it read-only without a word, the server would start and say
    ok, and the first write would fail."""
    for path in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        try:
            os.close(os.open(path, os.O_RDWR))
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StoreError(
                f"{path}: cannot write it ({error.strerror}); make it writable by this user (chmod u+w, or "
                "chattr -i if it is immutable), or give another --data-dir (or TIERGATE_DATA_DIR)"
            ) from None


class PolicyRefused(StoreError):
    """An activation that cannot be applied (invalid, a refused change, a stale parent): nothing was written."""


@dataclass(slots=True)
class Applied:
    """What an activation did, or would do (a dry run): its diff, its decisions, the tier changes."""

    activation_id: str
    policy: Policy
    diff: Diff
    decisions: list[Decision]
    dry_run: bool
    unchanged: bool = False  # the policy was already in force: nothing was (or would be) written

    @property
    def moves(self) -> list[Decision]:
        return [d for d in self.decisions if d.kind == "policy" and d.from_tier != d.to_tier]

    def record(self) -> dict[str, Any]:
        return {
            "activation_id": self.activation_id,
            "policy_version": self.policy.version,
            "policy_sha256": self.policy.sha256,
            "dry_run": self.dry_run,
            "unchanged": self.unchanged,
            "diff": self.diff.record(),
            "moves": [d.record() for d in self.moves],
            "decisions": [d.record() for d in self.decisions],
        }


class EmbeddedRuntime:
    """The fold, its state and its store, for one data directory. The policy lives in the log: `policy`,
    when given, is applied as an activation if it differs from the last one that came from a file (what
    `tiergate serve --policy` does); a store made before activations existed is migrated with it."""

    def __init__(
        self,
        policy: Policy | None,
        data_dir: Path,
        clock: Clock,
        max_skew: int = 300,
        max_past: int = 86400,
        policy_origin: str = "policy file",
    ) -> None:
        self.clock, self.max_skew, self.max_past = clock, max_skew, max_past
        self.problems: list[str] = []  # why the server is degraded (a refused policy file), if it is
        self.write_error: str | None = None  # why the last write failed, until one succeeds
        self.broken: str | None = None  # the state in memory cannot be trusted: refuse writes until a restart
        self.lock = DataDirLock(data_dir)
        self.lock.acquire()
        try:
            check_writable(self.lock.database)
            self.store = Store(self.lock.database)
            self.fallback = self._fallback(policy)
            self.state = self._restore()
        except BaseException:
            self.lock.release()
            raise
        self.tiers: dict[str, TierRecord] = {r.action_type: r for r in tier_records(self.state)}
        self.tallies = Tallies.empty()
        self._count_history()
        self.since_snapshot = 0
        self.tier_changes: list[TierRecord] = []  # committed, not yet told to the server's subscribers
        self.facts = 0  # decisions and rejected input committed, not yet told to the console's watchers
        if self.fallback is not None and not self.store.activations():
            self._apply(
                self.fallback,
                "migration",
                "tiergate",
                f"this store was decided under policy {self.fallback.version} before policies lived in the log",
                activation_id="0",
            )
        if policy is not None:
            self.use_policy_file(policy, policy_origin)

    def close(self) -> None:
        self.store.close()
        self.lock.release()

    # -- start-up ------------------------------------------------------------------------------------

    def _fallback(self, policy: Policy | None) -> Policy | None:
        """The policy the events before the log's first activation fold under: the one a store made before
        activations existed was bound to (kept as its migration activation), or None for any other store.
        Such a store was decided by the v1 bar rules, so the rules its document leaves unnamed are v1."""
        migrated = self.store.activations(source="migration")
        if migrated:
            return load_policy(migrated[0].document, digest=policy_sha256, recorded=True).before_activations
        claim = self.store.legacy_claim()
        if claim is None:
            return None
        version, sha = claim
        if policy is None or sha not in claimed_sha256s(policy.before_activations):
            raise StoreError(
                f"{self.store.path} was made before policies lived in the log and is bound to policy {version} "
                f"(sha256 {sha[:12]}…): start it once with --policy set to that policy file to migrate it; "
                "apply a new policy after that"
            )
        return policy.before_activations

    def _restore(self) -> State:
        """The saved snapshot, then a fold of the log after it: the state equals a fold of the stored log.
        A halted key is refolded from the start, in case this tiergate can read what stopped it."""
        snapshot, position = self.store.snapshot()
        try:
            restored = {name: KeyState.from_dict(saved) for name, saved in snapshot.items()}
        except StateSchemaError:
            restored, position = {}, 0  # saved by another tiergate: refold the whole log
        if any(key.halted for key in restored.values()):
            restored, position = {}, 0
        state = initial_state(self.fallback) if position == 0 else State(restored)
        tail = (Input("log", seq, raw) for seq, raw in self.store.events(after=position))
        Pipeline().run(tail, state, _Discard())
        if position == 0 and self.store.has_snapshot():  # one it could not use: replace it, or every start refolds
            with self.store.transaction():
                self.store.save_snapshot(state.keys.values())
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

    # -- the policy ------------------------------------------------------------------------------------

    def current_policy(self) -> ActivationRow | None:
        """The latest activation: the policy document in force for every type it names."""
        rows = self.store.activations()
        return rows[-1] if rows else None

    def rules_in_force(self) -> dict[str, Any]:
        """Each catalog type's rules as the state holds them (what a new activation is diffed against)."""
        return {name: key.rules.mapping for name, key in self.state.keys.items() if not key.retired}

    def use_policy_file(self, policy: Policy, origin: str) -> Applied | None:
        """`serve --policy`: apply the file when it differs from the last policy the data directory was given
        unattended — by a file, or by the log it was imported from (or migrated with) — never reverting a later
        activation made by a person (API, console, rollback); a file that cannot be applied leaves the current
        policy in force and the server degraded, with the reason — unless there is none to keep."""
        given = [row for row in self.store.activations() if row.source in UNATTENDED]
        if given and given[-1].policy_sha256 == policy.sha256:
            return None
        try:
            return self.apply(policy, "file", "tiergate serve", f"{origin} ({policy.version})")
        except PolicyRefused as refused:
            if self.current_policy() is None:
                raise
            self.problems.append(f"{origin} not applied: {refused}; still serving the policy in force")
            return None

    def apply(
        self,
        policy: Policy,
        source: str,
        actor: str,
        reason: str,
        principal: str | None = None,
        activation_id: str | None = None,
        dry_run: bool = False,
        if_match: str | None = None,
    ) -> Applied:
        """Activate `policy`: validate, diff, and append its events in one transaction (or, `dry_run`, say
        what it would do against the live state without writing). Refused whole, before anything is written,
        if any of its events would be: a stale parent, a changed window or lateness, a retired type retired
        again. `if_match`: the sha of the policy in force the caller has seen."""
        current = self.current_policy()
        if if_match is not None and (current is None or current.policy_sha256 != if_match):
            held = "none" if current is None else current.policy_sha256[:12] + "…"
            raise PolicyRefused(f"If-Match {if_match[:12]}… is not the policy in force ({held}): reload and retry")
        return self._apply(policy, source, actor, reason, principal, activation_id, dry_run)

    def _apply(
        self,
        policy: Policy,
        source: str,
        actor: str,
        reason: str,
        principal: str | None = None,
        activation_id: str | None = None,
        dry_run: bool = False,
    ) -> Applied:
        current = self.current_policy()
        if current is not None and current.policy_sha256 == policy.sha256:  # applying it again changes nothing
            return Applied(current.activation_id, policy, diff(self.rules_in_force(), policy), [], dry_run, True)
        if activation_id is not None:  # given to resume an apply: refused if it is recorded already
            used = next((row for row in self.store.activations() if row.activation_id == activation_id), None)
            refused = reused_id(activation_id, None if used is None else (used.policy_version, used.policy_sha256))
            if refused is not None:
                raise PolicyRefused(refused)
        now = self.clock.now()
        activation_id = activation_id or new_activation_id(now)
        events = policy_events(policy, Catalog.of(self.state), activation_id, actor, reason, now)
        raws = [orjson.dumps(event) for event in events]
        trial = State.from_dict(self.state.to_dict())
        decisions: list[Decision] = []
        for item in (Pipeline().handle(trial, Input("policy", i, raw)) for i, raw in enumerate(raws)):
            if item.result == REJECTED:
                raise PolicyRefused(f"{item.action_type}: {item.reason}")
            decisions.extend(item.decisions)
        applied = Applied(activation_id, policy, diff(self.rules_in_force(), policy), decisions, dry_run)
        if dry_run:
            return applied
        row = ActivationRow(
            activation_id, 0, now, source, actor, principal, reason, policy.version, policy.sha256, policy.normalised
        )
        self.ingest(raws, f"policy({activation_id})", live=False, also=lambda store: store.record_activation(row))
        return applied

    # -- the write path ------------------------------------------------------------------------------

    def ingest(
        self,
        raws: Iterable[bytes],
        source: str,
        live: bool = True,
        also: Callable[[Store], None] | None = None,
        principal: str | None = None,
        positions: Iterable[int] | None = None,
    ) -> Ingested:
        """Fold a batch and commit it in one transaction (with `also`'s writes). `live`: the clock checks
        apply (`future`, `past`); an import of older history and the server's own ticks are not live.
        `principal`: the credential that posted the batch, kept beside each event and named in the
        decisions of overrides. `positions`: where each input sits in its source (a file's line numbers,
        so a rejected line's origin points at it across batches); by default its index in the batch."""
        if self.broken is not None:
            raise StoreError(f"{self.broken}: restart tiergate serve (the state is rebuilt from the store)")
        numbered = enumerate(raws) if positions is None else zip(positions, raws, strict=True)
        inputs = [Input(source, place, raw, principal=principal) for place, raw in numbered]
        self.since_snapshot += len(inputs)
        sink = StoreSink(self.store, self._snapshot if self._snapshot_due() else None, also)
        try:
            self._pipeline(live).run(inputs, self.state, Counting(sink, self.tallies, self.state))
        except BaseException as error:
            if isinstance(error, StoreError):
                self.write_error = str(error)
            self._forget_batch()
            raise
        self.write_error = None
        return self._published(sink.items)

    def _forget_batch(self) -> None:
        """The batch never happened: rebuild the state from the store. If even that fails, the state in memory
        cannot be trusted: every later write is refused until the server is restarted."""
        try:
            self.state = self._restore()
        except BaseException as error:
            self.broken = f"the state could not be rebuilt from the store after a failed batch ({error})"
            raise

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
        return Pipeline(admit)

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
        self.tier_changes.extend(out.tier_changes)
        self.facts += len(out.decisions) + sum(1 for item in items if item.result in SET_ASIDE)
        changed = {r.action_type: r for r in out.tier_changes}
        self.tiers = {  # replaced whole: safe to read from any thread; retired types leave the map
            name: record for name, record in (self.tiers | changed).items() if not record.retired
        }
        return out

    # -- the clock -------------------------------------------------------------------------------------

    def due_ticks(self) -> list[bytes]:
        """The ticks the clock owes now (models.ticks.due_ticks: the one rule both live runtimes use)."""
        return [encode(tick) for tick in due_ticks(self.state, self.clock.now())]

    def tick(self) -> Ingested | None:
        ticks = self.due_ticks()
        return self.ingest(ticks, "clock", live=False) if ticks else None

    # -- reading ---------------------------------------------------------------------------------------

    def take_tier_changes(self) -> list[TierRecord]:
        """The tier changes committed since the last call, in order (call on the writer thread)."""
        changes, self.tier_changes = self.tier_changes, []
        return changes

    def take_facts(self) -> int:
        """How many decisions and rejected inputs were committed since the last call (on the writer thread):
        what the console shows that a batch can change."""
        facts, self.facts = self.facts, 0
        return facts

    def tier_map(self) -> list[TierRecord]:
        """The published tier map (records replaced whole after each commit: safe to read from any thread)."""
        return [self.tiers[name] for name in sorted(self.tiers)]


def results_of(items: list[Handled]) -> Ingested:
    """A batch's per-event results, its decisions and the tier records they change."""
    out = Ingested()
    for item in items:
        out.results.append(EventResult(item.input.position, item.event_id, item.result, item.reason))
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
