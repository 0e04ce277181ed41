"""The embedded runtime's SQLite store: the ordered input log, the decision log, rejected input and
snapshots of the fold's state, in one file (WAL, synchronous=FULL).

One transaction per batch holds the batch's events, the decisions they caused and its rejected input, so
nothing is acknowledged before it is durable and nothing of a failed batch remains. The fold's state is
not rewritten per batch (that would cost more with every event an open window holds): a snapshot of it,
with the log position it reflects, is written now and then, in the same transaction as a batch, and the
state on start-up is that snapshot plus a fold of the log after it. So the state always equals a fold of
the log on disk.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tiergate.models.decisions import Decision
from tiergate.models.state import STATE_SCHEMA, KeyState
from tiergate.models.wire import format_ts

from .pipeline import Rejected, named_action_type

log = logging.getLogger("tiergate.serve")
STORE_FORMAT = "tiergate-store-1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,          -- the log order: what the fold saw, in this order
    action_type TEXT,
    result TEXT NOT NULL,             -- applied | duplicate | late | rejected, as the fold decided
    raw BLOB NOT NULL,                -- the event's bytes as received (unknown fields kept)
    principal TEXT                    -- the credential that posted it (authenticated), if the server has any
);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    action_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    at INTEGER,
    record TEXT NOT NULL              -- canonical JSON
);
CREATE INDEX IF NOT EXISTS decisions_by_type ON decisions (action_type, seq);
CREATE TABLE IF NOT EXISTS rejected (  -- input that did not count (bad input, refused, late), kept with why
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw BLOB NOT NULL,
    action_type TEXT                  -- the type it names, if any (malformed input may name one too)
);
CREATE TABLE IF NOT EXISTS state (
    action_type TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL            -- KeyState.to_dict() as JSON, as of meta.snapshot_seq
);
CREATE TABLE IF NOT EXISTS activations (  -- each policy activation whose events are in the log
    seq INTEGER PRIMARY KEY,
    activation_id TEXT NOT NULL UNIQUE,
    log_seq INTEGER NOT NULL,         -- the log position of its last event
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,             -- file | api | console | migration
    actor TEXT NOT NULL,
    principal TEXT,                   -- who applied it, as authenticated (the actor is self-declared)
    reason TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    document TEXT NOT NULL            -- the normalised policy document, JSON
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

ADDED_COLUMNS = (("events", "principal", "TEXT"), ("rejected", "action_type", "TEXT"))
"""Columns added since the first stores: `_migrate` adds them to a store made before them."""

INDEXES = "CREATE INDEX IF NOT EXISTS rejected_by_type ON rejected (action_type, id);"


@dataclass(frozen=True, slots=True)
class RejectedQuery:
    """Which rejected input to read: `reason` is a case-insensitive substring; a page is `limit` rows after
    the id `after` (oldest first), or with `newest`, before the id `before` (0: from the newest)."""

    after: int = 0
    limit: int = 100
    reason: str | None = None
    result: str | None = None
    action_type: str | None = None
    newest: bool = False
    before: int = 0

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = ["id > ?"] if not self.newest else ["id < ?"] if self.before else []
        params: list[Any] = [self.after] if not self.newest else [self.before] if self.before else []
        for clause, value in (
            ("instr(lower(reason), lower(?)) > 0", self.reason),
            ("result = ?", self.result),
            ("action_type = ?", self.action_type),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return clauses, params


@dataclass(frozen=True, slots=True)
class ActivationRow:
    """A policy activation as the store keeps it, for people to read (its events are in the log)."""

    activation_id: str
    log_seq: int
    ts: int
    source: str
    actor: str
    principal: str | None
    reason: str
    policy_version: str
    policy_sha256: str
    document: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return {
            "activation_id": self.activation_id,
            "ts": format_ts(self.ts),
            "source": self.source,
            "actor": self.actor,
            "principal": self.principal,
            "reason": self.reason,
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
        }


class StoreError(RuntimeError):
    """The data directory cannot be used as asked (a broken file, a read-only directory, a full disk…)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """One event of a batch as it goes into the log: its bytes and what the fold made of it."""

    action_type: str | None
    result: str
    raw: bytes
    principal: str | None = None


@contextmanager
def _explained(path: Path) -> Iterator[None]:
    """SQLite's errors as StoreErrors that say what to do."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        text = str(error)
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            fix = "the data directory must be writable by this user"
        elif "disk is full" in text or "disk I/O" in text:
            fix = "free space on the disk that holds it"
        elif "malformed" in text or "not a database" in text or "corrupt" in text:
            fix = "restore it from a backup or an export, or start with a new --data-dir"
        else:
            fix = "check the file and its directory"
        raise StoreError(f"{path}: {text}: {fix}") from error


class Store:
    """SQLite access for one data directory. Not thread-safe: one writer thread owns it."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = path
        if path.exists() and path.is_file() and path.stat().st_size == 0:
            raise StoreError(
                f"{path} exists but is empty (zero bytes): it is not a tiergate store and will not be treated "
                "as a new one; remove it to start afresh, or restore the file"
            )
        if not path.exists() and not create:
            raise StoreError(f"{path}: no store here; give the --data-dir of a tiergate serve")
        with _explained(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._check()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # durable before acknowledged, power loss included
            self.db.executescript(SCHEMA)
            self._mark()
            self._migrate()

    def _check(self) -> None:
        """Refuse a damaged file before writing anything to it."""
        verdict = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({verdict})")

    def _mark(self) -> None:
        found = self.db.execute("SELECT value FROM meta WHERE key = 'store_format'").fetchone()
        if found is None:
            self.db.execute("INSERT INTO meta VALUES ('store_format', ?)", (STORE_FORMAT,))
        elif found[0] != STORE_FORMAT:
            raise StoreError(f"{self.path} is a {found[0]} store; this tiergate reads {STORE_FORMAT}")

    def _migrate(self) -> None:
        """Bring a store made by an earlier tiergate up to date, in one transaction: add the columns it
        lacks, and name the action type of the rejected input it already holds."""
        missing = [(t, c, kind) for t, c, kind in ADDED_COLUMNS if c not in self._columns(t)]
        if missing:
            with self.transaction():
                for table, column, kind in missing:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if ("rejected", "action_type", "TEXT") in missing:
                    self._name_rejected_types()
        self.db.executescript(INDEXES)

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def _name_rejected_types(self) -> None:
        rows = self.db.execute("SELECT id, raw FROM rejected").fetchall()
        named = [(name, i) for i, raw in rows if (name := named_action_type(bytes(raw))) is not None]
        self.db.executemany("UPDATE rejected SET action_type = ? WHERE id = ?", named)

    def close(self) -> None:
        self.db.close()

    # -- policies ------------------------------------------------------------------------------------

    def legacy_claim(self) -> tuple[str, str] | None:
        """(policy_version, sha256) a store made before policies lived in the log was bound to, if any."""
        rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('policy_version', 'policy_sha256')"))
        return (rows["policy_version"], rows["policy_sha256"]) if len(rows) == 2 else None

    def record_activation(self, row: ActivationRow) -> None:
        """Keep an activation's document; call inside the transaction that appends its events. An
        activation recorded again (resumed, or its events arriving over several batches of an import) merges
        into the row it has: the first record's source, actor and principal stay."""
        self.db.execute(
            "INSERT INTO activations (activation_id, log_seq, ts, source, actor, principal, reason, "
            "policy_version, policy_sha256, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (activation_id) DO UPDATE SET document = json_patch(document, excluded.document), "
            "log_seq = excluded.log_seq",
            (
                row.activation_id,
                self.last_seq(),
                row.ts,
                row.source,
                row.actor,
                row.principal,
                row.reason,
                row.policy_version,
                row.policy_sha256,
                orjson.dumps(row.document, option=orjson.OPT_SORT_KEYS).decode(),
            ),
        )

    def activations(self, source: str | None = None) -> list[ActivationRow]:
        """Every activation, oldest first (or those from one source: file, api, console, migration)."""
        query = (
            "SELECT activation_id, log_seq, ts, source, actor, principal, reason, policy_version, policy_sha256, "
            "document FROM activations"
        )
        rows = self.db.execute(
            query + " ORDER BY seq" if source is None else query + " WHERE source = ? ORDER BY seq",
            () if source is None else (source,),
        )
        return [
            ActivationRow(i, log_seq, ts, source, actor, principal, reason, version, sha, orjson.loads(document))
            for i, log_seq, ts, source, actor, principal, reason, version, sha, document in rows
        ]

    # -- writing -------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (or ROLLBACK on error): one batch, all or nothing."""
        with _explained(self.path):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def append(self, events: Iterable[Appended], decisions: Iterable[Decision], rejected: Iterable[Rejected]) -> None:
        """Write one batch's effects; call inside `transaction()`."""
        db = self.db
        db.executemany(
            "INSERT INTO events (action_type, result, raw, principal) VALUES (?, ?, ?, ?)",
            ((e.action_type, e.result, e.raw, e.principal) for e in events),
        )
        db.executemany(
            "INSERT INTO decisions (decision_id, action_type, kind, at, record) VALUES (?, ?, ?, ?, ?)",
            ((d.decision_id, d.action_type, d.kind, d.at, d.to_json()) for d in decisions),
        )
        db.executemany(
            "INSERT INTO rejected (origin, result, reason, raw, action_type) VALUES (?, ?, ?, ?, ?)",
            ((r.origin, r.result, r.reason, r.raw, r.action_type) for r in rejected),
        )

    def save_snapshot(self, keys: Iterable[KeyState]) -> int:
        """Replace the saved state with `keys` as of the log's end now; call inside `transaction()`."""
        db = self.db
        rows = sorted((k.action_type, orjson.dumps(k.to_dict()).decode()) for k in keys)
        db.execute("DELETE FROM state")
        db.executemany("INSERT INTO state VALUES (?, ?)", rows)
        seq = self.last_seq()
        saved = {"snapshot_seq": str(seq), "state_schema": str(STATE_SCHEMA), "snapshot_sha256": _digest(rows)}
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", saved.items())
        return seq

    # -- reading -------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], int]:
        """The saved state of every key and the log position it reflects; nothing (position 0), so that the
        caller refolds the whole log, when it was saved under another state schema or is not exactly what
        was saved (a row changed or missing, a position past the log's end)."""
        meta = dict(self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'snapshot%' OR key = 'state_schema'"))
        if meta.get("state_schema") != str(STATE_SCHEMA):
            return {}, 0
        rows = list(self.db.execute("SELECT action_type, snapshot FROM state ORDER BY action_type"))
        position = meta.get("snapshot_seq", "0")
        if not rows and position == "0":
            return {}, 0  # nothing saved yet
        problem = _unverified(rows, meta, self.last_seq())
        if problem is not None:
            log.warning("%s: the saved state %s; refolding the whole log", self.path, problem)
            return {}, 0
        return {name: orjson.loads(text) for name, text in rows}, int(position)

    def has_snapshot(self) -> bool:
        """Was a snapshot ever saved here (usable or not)?"""
        saved = self.db.execute("SELECT 1 FROM meta WHERE key = 'snapshot_seq' UNION SELECT 1 FROM state LIMIT 1")
        return saved.fetchone() is not None

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def events(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(seq, raw) of the log after position `after`, in order."""
        for seq, raw in self.db.execute("SELECT seq, raw FROM events WHERE seq > ? ORDER BY seq", (after,)):
            yield seq, bytes(raw)

    def decisions(
        self,
        action_type: str | None = None,
        since: int | None = None,
        until: int | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[tuple[int, str]]:
        """(seq, canonical record) of decisions, oldest first, filtered by type and `at` in [since, until)."""
        clauses, params = ["seq > ?"], [after]
        if action_type is not None:
            clauses.append("action_type = ?")
            params.append(action_type)  # type: ignore[arg-type]
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("at < ?")
            params.append(until)
        query = f"SELECT seq, record FROM decisions WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"
        return list(self.db.execute(query, (*params, limit)))

    def recent_decisions(self, limit: int, action_type: str | None = None, kind: str | None = None) -> list[str]:
        """The latest decisions' canonical records, newest first, optionally of one type and one kind."""
        clauses, params = [], []
        for clause, value in (("action_type = ?", action_type), ("kind = ?", kind)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT record FROM decisions {where} ORDER BY seq DESC LIMIT ?"
        return [record for (record,) in self.db.execute(query, (*params, limit))]

    def all_decisions(self) -> Iterator[str]:
        for (record,) in self.db.execute("SELECT record FROM decisions ORDER BY seq"):
            yield record

    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest rejected input, newest first."""
        return self.rejected_input(RejectedQuery(limit=limit, newest=True))

    def rejected_input(self, query: RejectedQuery) -> list[dict[str, Any]]:
        """Rejected input (bad, refused or late), filtered and paged by id: oldest first after `after`, or
        newest first before `before` (0: from the newest)."""
        clauses, params = query.where()
        rows = self.db.execute(
            "SELECT id, origin, result, reason, raw, action_type FROM rejected "
            f"WHERE {' AND '.join(clauses) or '1'} ORDER BY id {'DESC' if query.newest else 'ASC'} LIMIT ?",
            (*params, query.limit),
        )
        return [
            {
                "id": i,
                "origin": origin,
                "result": result,
                "reason": why,
                "action_type": action_type,
                "event": bytes(raw).decode("utf-8", "replace"),
            }
            for i, origin, result, why, raw, action_type in rows
        ]

    def counts(self) -> dict[str, int]:
        """Events in the log by result, and decisions and rejected input in all."""
        out = dict(self.db.execute("SELECT result, COUNT(*) FROM events GROUP BY result").fetchall())
        out["decisions"] = self.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        out["rejected_input"] = self.db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0]
        return out


def _digest(rows: Iterable[tuple[str, str]]) -> str:
    """The sha256 of a snapshot's rows, in action type order: what a restore checks before trusting them."""
    digest = hashlib.sha256()
    for name, text in rows:
        digest.update(f"{name}\t{text}\n".encode())
    return digest.hexdigest()


def _unverified(rows: list[tuple[str, str]], meta: dict[str, str], last_seq: int) -> str | None:
    """Why a saved snapshot cannot be trusted, or None."""
    if meta.get("snapshot_sha256") != _digest(rows):
        return "does not match the digest saved with it (changed, cut short, or saved before digests)"
    position = meta.get("snapshot_seq", "")
    if not position.isdigit() or int(position) > last_seq:
        return f"claims log position {position!r}, past the log's end ({last_seq})"
    return None
