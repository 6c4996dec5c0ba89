"""Enforcing the policy's ``audit.retention_days`` on the state store; every deletion audited.

What retention means here (decided once; deploy/RUNBOOK.md, "State and audit"):

* **State rows expire.** A round closed (fused, collected or skipped) and created more than
  ``retention_days`` ago is deleted with its tasks and submissions — the envelopes (ciphertexts
  or plain score vectors) and the receipts the store kept. Older router weights go too; the
  newest is always kept (the status page shows it). Enrolments, datasets and member health are
  the consortium's *current* state, not history, and stay; nonces are already forgotten after
  their freshness window. An open round is never touched.
* **The audit log does not expire.** It is append-only and every checkpoint commits to the
  whole Merkle tree from entry 0: dropping old entries would break every later proof, and the
  log is the very record that these deletions happened. It holds digests, never payloads, so
  keeping it is what the policy's retention period *requires*, not what it forbids. Archive a
  closed log with ``mor server backup``; bound its size by rotating the server's log directory
  (a new origin), never by trimming.
* **Every deletion is logged first.** Each round's deletion is one ``state.purged`` entry
  (round, counts, and a SHA-256 over the deleted ``task_id:envelope_sha256`` pairs, so an
  auditor holding a receipt can tell its envelope was deleted by retention, not lost) written
  *inside* the deleting transaction, before its commit: if the entry cannot be written the rows
  stay; if the commit fails after it, the next pass deletes again and logs again. The log may
  over-report a deletion, never under-report one.

Passes run at server start and then hourly (:class:`RetentionTimer`), at most
``MAX_ROUNDS_PER_PASS`` rounds each so one pass never holds the database for long.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from server.services import AuditTrail
from server.state import StateStore
from server.state_tables import rounds, router_weights, submissions, tasks

DAY_S = 86_400.0
PASS_EVERY_S = 3600.0
MAX_ROUNDS_PER_PASS = 500
ACTOR = "server"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    """What one pass deleted."""

    rounds: int = 0
    tasks: int = 0
    submissions: int = 0
    router_weights: int = 0


def _purge_round(state: StateStore, audit: AuditTrail, round_id: str, *, retention_days: int,
                 cutoff: float) -> tuple[int, int]:
    """Delete one expired round with its tasks and submissions, audited before commit; (tasks, submissions)."""
    with state.engine.begin() as conn:
        row = conn.execute(select(rounds).where(rounds.c.round_id == round_id)).mappings().first()
        if row is None or row["status"] == "open" or row["created_at"] >= cutoff:
            return 0, 0
        answered = conn.execute(select(submissions.c.task_id, submissions.c.envelope_sha256)
                                .where(submissions.c.round_id == round_id).order_by(submissions.c.task_id)).all()
        n_tasks = conn.execute(delete(tasks).where(tasks.c.round_id == round_id)).rowcount or 0
        conn.execute(delete(submissions).where(submissions.c.round_id == round_id))
        conn.execute(delete(rounds).where(rounds.c.round_id == round_id))
        pairs = "".join(f"{task_id}:{digest}\n" for task_id, digest in answered).encode()
        audit.record(ACTOR, "state.purged", {
            "round_id": round_id, "kind": row["kind"], "status": row["status"], "created_at": row["created_at"],
            "tasks": n_tasks, "submissions": len(answered), "submissions_sha256": hashlib.sha256(pairs).hexdigest(),
            "retention_days": retention_days, "cutoff": cutoff})
    return n_tasks, len(answered)


def _purge_router_weights(state: StateStore, audit: AuditTrail, *, retention_days: int, cutoff: float) -> int:
    with state.engine.begin() as conn:
        newest = conn.execute(select(func.max(router_weights.c.id))).scalar()
        if newest is None:
            return 0
        gone = conn.execute(delete(router_weights).where(
            (router_weights.c.updated_at < cutoff) & (router_weights.c.id != newest))).rowcount or 0
        if gone:
            audit.record(ACTOR, "state.purged", {"table": "router_weights", "rows": gone,
                                                 "retention_days": retention_days, "cutoff": cutoff})
    return gone


def enforce_retention(state: StateStore, audit: AuditTrail, *, retention_days: int, now: float) -> Purged:
    """One pass: delete what is older than ``retention_days`` (see the module docstring)."""
    cutoff = now - retention_days * DAY_S
    with state.engine.connect() as conn:
        expired = [r[0] for r in conn.execute(
            select(rounds.c.round_id).where((rounds.c.status != "open") & (rounds.c.created_at < cutoff))
            .order_by(rounds.c.created_at).limit(MAX_ROUNDS_PER_PASS))]
    n_rounds = n_tasks = n_submissions = 0
    for round_id in expired:
        deleted_tasks, deleted_submissions = _purge_round(state, audit, round_id, retention_days=retention_days,
                                                          cutoff=cutoff)
        n_rounds, n_tasks, n_submissions = n_rounds + 1, n_tasks + deleted_tasks, n_submissions + deleted_submissions
    weights = _purge_router_weights(state, audit, retention_days=retention_days, cutoff=cutoff)
    return Purged(n_rounds, n_tasks, n_submissions, weights)


class RetentionTimer:
    """Runs :func:`enforce_retention` now and every ``every_s`` in a daemon thread, until :meth:`stop`."""

    def __init__(self, state: StateStore, audit: AuditTrail, *, retention_days: int, clock: Callable[[], float],
                 every_s: float = PASS_EVERY_S) -> None:
        self._state, self._audit, self._days, self._clock, self._every = state, audit, retention_days, clock, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mor-retention", daemon=True)

    def start(self) -> RetentionTimer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:  # the first pass runs even if a stop came first: every start enforces the policy once
            try:
                purged = enforce_retention(self._state, self._audit, retention_days=self._days, now=self._clock())
                if purged != Purged():
                    log.info("retention (%d days): deleted %s", self._days, purged)
            except Exception:  # a failed pass (database down, log full) is retried next time, never fatal
                log.exception("retention pass failed; retrying in %.0f s", self._every)
            if self._stop.wait(self._every):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
