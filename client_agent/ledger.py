"""The agent's durable task ledger: task id -> the one sealed envelope for it, and its fate.

Why it exists: an envelope carries a fresh random nonce. If the agent crashed after scoring
but before the server's receipt came back, re-scoring on restart would produce a *second*
valid envelope for the same task under a new nonce — the server would answer 409, and an
auditor would see one task answered twice. So the envelope is committed here (SQLite,
``synchronous=FULL``: the commit is on disk) *before* it is submitted, and on restart the
agent resubmits exactly these bytes; the server's idempotent submit returns the stored
receipt. A task in the ledger is never scored again.

Statuses: ``sealed`` (committed, not yet acknowledged) -> ``receipted`` (signed receipt
verified and stored) or ``abandoned`` (the server refused it for good, e.g. expired);
``refused`` marks tasks the agent's own limits turned down (never scored). The daily
scoring cap counts items of every task that was scored (sealed, receipted or abandoned).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from client_agent.errors import LedgerError

Status = Literal["sealed", "receipted", "abandoned", "refused"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, round_id TEXT NOT NULL, kind TEXT NOT NULL, n_items INTEGER NOT NULL,
    status TEXT NOT NULL, envelope TEXT, envelope_sha256 TEXT, receipt TEXT, reason TEXT,
    day TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_day ON tasks(day, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SELECT = ("SELECT task_id, round_id, kind, n_items, status, envelope, envelope_sha256, receipt, reason, created_at "
           "FROM tasks ")


def utc_day(now: float) -> str:
    """The UTC calendar day of ``now`` (the daily cap's unit)."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class LedgerEntry:
    task_id: str
    round_id: str
    kind: str
    n_items: int
    status: Status
    envelope: dict[str, Any] | None
    envelope_sha256: str | None
    receipt: dict[str, Any] | None
    reason: str | None
    created_at: float


class TaskLedger:
    """One SQLite file; open with :meth:`open`, one process at a time (the audit log's lock guards it)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path, self._conn = path, conn

    @classmethod
    def open(cls, path: str | Path) -> TaskLedger:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # private before SQLite creates it
            conn = sqlite3.connect(path, isolation_level=None, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"{path}: cannot open the task ledger: {exc}") from None
        return cls(path, conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TaskLedger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[LedgerEntry]:
        try:
            rows = self._conn.execute(_SELECT + sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot read the task ledger: {exc}") from None
        try:
            return [LedgerEntry(r[0], r[1], r[2], int(r[3]), r[4], json.loads(r[5]) if r[5] else None, r[6],
                                json.loads(r[7]) if r[7] else None, r[8], float(r[9])) for r in rows]
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"{self.path}: corrupt ledger row: {exc}") from None

    def get(self, task_id: str) -> LedgerEntry | None:
        rows = self._rows("WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None

    def pending(self) -> list[LedgerEntry]:
        """Sealed envelopes not yet acknowledged, oldest first (resubmitted on restart)."""
        return self._rows("WHERE status = 'sealed' ORDER BY created_at", ())

    def entries(self) -> list[LedgerEntry]:
        return self._rows("ORDER BY created_at", ())

    def items_scored_on(self, day: str) -> int:
        """Items scored on UTC ``day`` (what the daily cap limits)."""
        try:
            row = self._conn.execute("SELECT COALESCE(SUM(n_items), 0) FROM tasks WHERE day = ? AND status IN "
                                     "('sealed', 'receipted', 'abandoned')", (day,)).fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot read the task ledger: {exc}") from None
        return int(row[0])

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- writing (each call is one committed, fsynced transaction) ------------------------------------
    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                return self._conn.execute(sql, args).rowcount
        except sqlite3.IntegrityError as exc:
            raise LedgerError(f"{self.path}: {exc} (task already in the ledger: never scored twice)") from None
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the task ledger: {exc}") from None

    def record_sealed(self, *, task_id: str, round_id: str, kind: str, n_items: int, envelope: dict[str, Any],
                      envelope_sha256: str, now: float) -> None:
        """Commit the envelope for ``task_id`` before it leaves the agent (refuses a second one)."""
        self._write("INSERT INTO tasks VALUES (?, ?, ?, ?, 'sealed', ?, ?, NULL, NULL, ?, ?, ?)",
                    (task_id, round_id, kind, n_items, json.dumps(envelope, sort_keys=True), envelope_sha256,
                     utc_day(now), now, now))

    def record_refused(self, *, task_id: str, round_id: str, kind: str, n_items: int, reason: str,
                       now: float) -> None:
        self._write("INSERT INTO tasks VALUES (?, ?, ?, ?, 'refused', NULL, NULL, NULL, ?, ?, ?, ?)",
                    (task_id, round_id, kind, n_items, reason, utc_day(now), now, now))

    def mark_receipted(self, task_id: str, receipt: dict[str, Any], now: float) -> None:
        self._transition(task_id, "receipted", receipt=json.dumps(receipt, sort_keys=True), reason=None, now=now)

    def mark_abandoned(self, task_id: str, reason: str, now: float) -> None:
        self._transition(task_id, "abandoned", receipt=None, reason=reason, now=now)

    def _transition(self, task_id: str, status: Status, *, receipt: str | None, reason: str | None,
                    now: float) -> None:
        changed = self._write("UPDATE tasks SET status = ?, receipt = COALESCE(?, receipt), reason = ?, "
                              "updated_at = ? WHERE task_id = ? AND status = 'sealed'",
                              (status, receipt, reason, now, task_id))
        if changed != 1:
            raise LedgerError(f"{self.path}: task {task_id!r} is not a sealed task awaiting its receipt")

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value))
