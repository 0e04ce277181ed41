"""The embedded runtime's SQLite store: the ordered input log, the decision log, the fold's state and
everything set aside, in one file (WAL, synchronous=FULL).

One transaction per batch holds the batch's events, the decisions they caused, the new state of the keys
they touched and the log position the state is at. So the state on disk always equals a fold of the log
on disk: a crash loses only what was never acknowledged, and a restart resumes from the snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tiergate.models.decisions import Decision
from tiergate.models.evaluator import KeyState

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,          -- the log order: what the fold saw, in this order
    action_type TEXT,
    result TEXT NOT NULL,             -- applied | duplicate | late | rejected, as the fold decided
    raw BLOB NOT NULL                 -- the event's bytes as received (unknown fields kept)
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
CREATE TABLE IF NOT EXISTS rejected (  -- bad input and late events, kept with why
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    action_type TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL            -- KeyState.to_dict() as JSON
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    """The data directory cannot be used as asked (another policy's log, a broken file, …)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """One event of a batch as it goes into the log: its bytes and what the fold made of it."""

    action_type: str | None
    result: str
    raw: bytes


class Store:
    """SQLite access for one data directory. Not thread-safe: one writer thread owns it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # durable before acknowledged, power loss included
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- policy identity ---------------------------------------------------------------------------

    def claim_policy(self, version: str, sha256: str) -> None:
        """Bind the store to one policy (version 1 runs one policy per log); refuse another."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'policy_sha256'").fetchone()
        if row is None:
            with self.transaction():
                self.db.execute(
                    "INSERT INTO meta VALUES ('policy_sha256', ?), ('policy_version', ?)", (sha256, version)
                )
        elif row[0] != sha256:
            held = self.db.execute("SELECT value FROM meta WHERE key = 'policy_version'").fetchone()[0]
            raise StoreError(
                f"{self.path} holds a log decided under policy {held} (sha256 {row[0][:12]}…), not "
                f"{version} ({sha256[:12]}…): one log runs one policy; use a new --data-dir, or the old policy"
            )

    # -- writing -------------------------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def append(
        self,
        events: Iterable[Appended],
        decisions: Iterable[Decision],
        keys: Iterable[KeyState],
        kept: Iterable[tuple[str, str, str, bytes]],
    ) -> None:
        """Write one batch's effects; call inside `transaction()`."""
        db = self.db
        db.executemany(
            "INSERT INTO events (action_type, result, raw) VALUES (?, ?, ?)",
            ((e.action_type, e.result, e.raw) for e in events),
        )
        db.executemany(
            "INSERT INTO decisions (decision_id, action_type, kind, at, record) VALUES (?, ?, ?, ?, ?)",
            ((d.decision_id, d.action_type, d.kind, d.at, d.to_json()) for d in decisions),
        )
        db.executemany("INSERT INTO rejected (origin, result, reason, raw) VALUES (?, ?, ?, ?)", kept)
        db.executemany(
            "INSERT OR REPLACE INTO state VALUES (?, ?)",
            ((k.action_type, orjson.dumps(k.to_dict()).decode()) for k in keys),
        )

    # -- reading -------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], int]:
        """The saved state of every key and the log position (last event seq) it reflects."""
        keys = {
            name: orjson.loads(snapshot)
            for name, snapshot in self.db.execute("SELECT action_type, snapshot FROM state")
        }
        return keys, self.last_seq()

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

    def all_decisions(self) -> Iterator[str]:
        for (record,) in self.db.execute("SELECT record FROM decisions ORDER BY seq"):
            yield record

    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, origin, result, reason, raw FROM rejected ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [
            {"id": i, "origin": o, "result": r, "reason": why, "event": bytes(raw).decode("utf-8", "replace")}
            for i, o, r, why, raw in rows
        ]

    def counts(self) -> dict[str, int]:
        """Events in the log by result, and decisions and kept events in all."""
        out = dict(self.db.execute("SELECT result, COUNT(*) FROM events GROUP BY result").fetchall())
        out["decisions"] = self.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        out["kept"] = self.db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0]
        return out


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (or ROLLBACK on error): one batch, all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
