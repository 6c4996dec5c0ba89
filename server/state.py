"""Durable server state: enrolments, rounds, tasks, submissions, nonces, the router's weights.

Why a database and not memory: an accepted submission is a promise (the agent holds a signed
receipt for it), so it must survive ``kill -9``; a nonce once seen must stay seen, or a
restart would re-open the door to replays. Every write commits before the HTTP reply leaves.

SQLite by default (``sqlite:///path/state.db``, WAL mode); PostgreSQL with the ``[postgres]``
extra (``postgresql+psycopg://...``), tested against a real server. Its files are private (0600),
a URL that cannot work is a clear ``ConfigError`` and PostgreSQL sessions commit synchronously
(:mod:`server.state_files`). The tables (:mod:`server.state_tables`) are the newest revision of
the schema; opening a store migrates its database there first (:mod:`server.migrations`,
Alembic), and a change to a table needs a new revision under ``server/migrations/versions``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from server.errors import TaskClosedError
from server.round_events import RoundEvents
from server.state_files import open_engine, prepare_schema
from server.state_tables import (
    ROUND_STATUSES,
    agents,
    datasets,
    member_health,
    nonces,
    rounds,
    router_weights,
    submissions,
    tasks,
)

NONCE_PURGE_EVERY_S = 60.0  # how often expired nonces are forgotten (checked on each new nonce)



@dataclass(frozen=True)
class TaskRow:
    task_id: str
    round_id: str
    agent: str
    payload: dict[str, Any]
    issued_at: float
    deadline: float
    status: str


def _json_text(value: str | Mapping[str, Any]) -> str:
    """JSON text to store: ``value`` itself when the caller already holds it (an envelope's canonical wire form)."""
    return value if isinstance(value, str) else json.dumps(value)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


_OPEN_TASK = ("pending", "delivered")


def _mark_submitted(conn: Connection, task_ids: list[str]) -> None:
    """Flip open tasks to ``submitted`` — inside the storing transaction, and only if all are still open.

    Why here and not only in the route: the coordinator may close a round (tasks -> expired) after
    the route saw the task open; storing then would issue a receipt for an answer the fused round
    never used, and turn an expired task back into a submitted one.
    """
    flipped = conn.execute(update(tasks).where(tasks.c.task_id.in_(task_ids) & tasks.c.status.in_(_OPEN_TASK))
                           .values(status="submitted")).rowcount
    if flipped != len(set(task_ids)):
        raise TaskClosedError(f"tasks closed before their submissions were stored: {sorted(set(task_ids))}")


class StateStore:
    """Thin, explicit persistence for the server. One method per thing the server promises."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 nonce_purge_every_s: float = NONCE_PURGE_EVERY_S) -> None:
        self.url = url
        self._clock = clock
        self._nonce_purge_every_s = nonce_purge_every_s
        self._last_nonce_purge = -math.inf
        self.events = RoundEvents()  # in-process wake-ups for long-polls and the coordinator (server.round_events)
        self.engine, sqlite_path = open_engine(url)  # ConfigError for a bad URL; SQLite files 0600
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.schema_change = prepare_schema(self.engine, sqlite_path)  # StateError if newer than this code

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- agents -----------------------------------------------------------------------------
    def upsert_agent(
        self, identity: str, *, signing_key_b64: str, architecture: str, epsilon: float, delta: float,
        privacy_report: Mapping[str, Any], now: float,
    ) -> None:
        values = {
            "signing_key_b64": signing_key_b64, "architecture": architecture, "epsilon": epsilon,
            "delta": delta, "privacy_report": json.dumps(privacy_report), "enrolled_at": now, "last_seen": now,
        }
        with self._tx() as conn:
            exists = conn.execute(select(agents.c.identity).where(agents.c.identity == identity)).first()
            if exists:
                conn.execute(update(agents).where(agents.c.identity == identity).values(**values))
            else:
                conn.execute(insert(agents).values(identity=identity, **values))

    def agent(self, identity: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(select(agents).where(agents.c.identity == identity)).mappings().first()
        return dict(row) if row else None

    def list_agents(self) -> list[dict[str, Any]]:
        with self._tx() as conn:
            return [dict(r) for r in conn.execute(select(agents).order_by(agents.c.identity)).mappings()]

    def touch_agent(self, identity: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute(update(agents).where(agents.c.identity == identity).values(last_seen=now))

    def set_calibration(self, identity: str, calibration: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                update(agents).where(agents.c.identity == identity).values(calibration=json.dumps(calibration))
            )

    # -- rounds and tasks -------------------------------------------------------------------
    def create_round(
        self, round_id: str, *, kind: str, n_items: int, deadline: float, now: float,
        task_payloads: Mapping[str, tuple[str, Mapping[str, Any]]],
    ) -> None:
        """Create a round and its tasks (agent -> (task_id, payload)) in one transaction."""
        with self._tx() as conn:
            conn.execute(insert(rounds).values(
                round_id=round_id, kind=kind, status="open", created_at=now, deadline=deadline, n_items=n_items,
            ))
            for agent, (task_id, payload) in task_payloads.items():
                conn.execute(insert(tasks).values(
                    task_id=task_id, round_id=round_id, agent=agent, payload=json.dumps(payload),
                    issued_at=now, deadline=deadline, status="pending",
                ))
        if task_payloads:
            self.events.tasks_issued()

    def close_round(self, round_id: str, *, status: str, outcome: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(update(rounds).where(rounds.c.round_id == round_id).values(
                status=status, outcome=json.dumps(outcome),
            ))
            conn.execute(update(tasks).where(
                (tasks.c.round_id == round_id) & (tasks.c.status.in_(("pending", "delivered")))
            ).values(status="expired"))

    def round_counts(self) -> dict[str, int]:
        """Rounds per status: ``collected`` are calibrate/router rounds (per-agent vectors, never fused)."""
        with self._tx() as conn:
            rows: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
                select(rounds.c.status, func.count()).group_by(rounds.c.status)).all())
        return {status: int(rows.get(status, 0)) for status in ROUND_STATUSES}

    def next_task(self, agent: str, now: float) -> TaskRow | None:
        """The oldest live task for ``agent`` (pending or delivered but unanswered)."""
        with self._tx() as conn:
            row = conn.execute(
                select(tasks).where(
                    (tasks.c.agent == agent) & (tasks.c.status.in_(("pending", "delivered")))
                    & (tasks.c.deadline > now)
                ).order_by(tasks.c.issued_at)
            ).mappings().first()
            if row is None:
                return None
            if row["status"] == "pending":  # a re-delivery (the agent asks again) writes nothing
                conn.execute(update(tasks).where(tasks.c.task_id == row["task_id"]).values(status="delivered"))
        return TaskRow(
            task_id=row["task_id"], round_id=row["round_id"], agent=row["agent"],
            payload=json.loads(row["payload"]), issued_at=row["issued_at"], deadline=row["deadline"],
            status="delivered",
        )

    def task(self, task_id: str) -> TaskRow | None:
        with self._tx() as conn:
            row = conn.execute(select(tasks).where(tasks.c.task_id == task_id)).mappings().first()
        if row is None:
            return None
        return TaskRow(
            task_id=row["task_id"], round_id=row["round_id"], agent=row["agent"],
            payload=json.loads(row["payload"]), issued_at=row["issued_at"], deadline=row["deadline"],
            status=row["status"],
        )

    def decline_task(self, task_id: str, agent: str) -> bool:
        """Mark a live task of ``agent`` declined so it leaves the agent's queue; False if not live."""
        with self._tx() as conn:
            result = conn.execute(update(tasks).where(
                (tasks.c.task_id == task_id) & (tasks.c.agent == agent)
                & (tasks.c.status.in_(("pending", "delivered")))
            ).values(status="declined"))
        return bool(result.rowcount)

    # -- the router's current weights (for the status page) ----------------------------------
    def set_router_weights(self, *, kind: str, digest: str, basis: str, by_domain: Mapping[str, Mapping[str, float]],
                           overall: Mapping[str, float], now: float) -> None:
        """Record the router now in use: mean weight per agent per prompt domain, and over all prompts."""
        with self._tx() as conn:
            conn.execute(insert(router_weights).values(
                kind=kind, digest=digest, basis=basis, by_domain=json.dumps(by_domain), overall=json.dumps(overall),
                updated_at=now))

    def current_router_weights(self) -> dict[str, Any] | None:
        """The last recorded router weights (``by_domain`` and ``overall`` decoded), or None if none yet."""
        with self._tx() as conn:
            row = conn.execute(select(router_weights).order_by(router_weights.c.id.desc())).mappings().first()
        if row is None:
            return None
        return {**dict(row), "by_domain": json.loads(row["by_domain"]), "overall": json.loads(row["overall"])}

    # -- datasets ---------------------------------------------------------------------------
    def set_dataset(self, role: str, summary: Mapping[str, Any], *, now: float) -> None:
        """Record (or replace) the dataset serving ``role``: its source, count, SHA-256 and domains."""
        with self._tx() as conn:
            conn.execute(datasets.delete().where(datasets.c.role == role))
            conn.execute(insert(datasets).values(role=role, summary=json.dumps(dict(summary)), loaded_at=now))

    def list_datasets(self) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(select(datasets).order_by(datasets.c.role)).mappings().all()
        return [{"role": r["role"], "loaded_at": r["loaded_at"], **json.loads(r["summary"])} for r in rows]

    # -- member health (quarantine) ---------------------------------------------------------------
    def member_health(self) -> dict[str, dict[str, Any]]:
        """identity -> failures, quarantined_until (None: not quarantined), reason."""
        with self._tx() as conn:
            rows = conn.execute(select(member_health)).mappings().all()
        return {r["identity"]: dict(r) for r in rows}

    def set_member_health(self, identity: str, *, failures: int, quarantined_until: float | None,
                          reason: str | None) -> None:
        with self._tx() as conn:
            conn.execute(member_health.delete().where(member_health.c.identity == identity))
            conn.execute(insert(member_health).values(identity=identity, failures=failures,
                                                      quarantined_until=quarantined_until, reason=reason))

    # -- submissions ------------------------------------------------------------------------
    def record_submission(
        self, *, task_id: str, agent: str, round_id: str, envelope_sha256: str,
        envelope: Mapping[str, Any] | str, receipt: Mapping[str, Any], now: float,
    ) -> bool:
        """Store an accepted submission and mark its task answered; False if one already exists."""
        try:
            with self._tx() as conn:
                conn.execute(insert(submissions).values(
                    task_id=task_id, agent=agent, round_id=round_id, envelope_sha256=envelope_sha256,
                    envelope=_json_text(envelope), receipt=json.dumps(receipt), received_at=now,
                ))
                _mark_submitted(conn, [task_id])
        except (SQLIntegrityError, TaskClosedError):
            return False
        return True

    def closed_tasks(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` no longer open for an answer (expired, declined, or not a task at all)."""
        return self.group_check([(t, "", "") for t in task_ids])[1]

    def unseen_submissions(self, pending: Sequence[tuple[str, str, str]]) -> list[bool]:
        """For each ``(task_id, sender, nonce)``: True if the task has no submission and the nonce is new."""
        return self.group_check(pending)[0]

    def group_check(self, pending: Sequence[tuple[str, str, str]]) -> tuple[list[bool], set[str]]:
        """The group commit's check (:mod:`server.ingest`), one read transaction for the whole group.

        For each ``(task_id, sender, nonce)``: True if the task has no submission and the nonce is
        new; and the tasks no longer open for an answer (expired, declined, or not a task at
        all). Duplicates *within* the group are the caller's to spot, and
        :meth:`record_submissions` is the guard.
        """
        if not pending:
            return [], set()
        task_ids = {t for t, _, _ in pending}
        with self._tx() as conn:
            done = {r[0] for r in conn.execute(select(submissions.c.task_id).where(
                submissions.c.task_id.in_(task_ids)))}
            seen = {(r[0], r[1]) for r in conn.execute(select(nonces.c.sender, nonces.c.nonce).where(
                nonces.c.nonce.in_({n for _, _, n in pending if n})))}
            open_ids = {r[0] for r in conn.execute(select(tasks.c.task_id).where(
                tasks.c.task_id.in_(task_ids) & tasks.c.status.in_(_OPEN_TASK)))}
        return [task_id not in done and (sender, nonce) not in seen for task_id, sender, nonce in pending], \
            task_ids - open_ids

    def nonce_seen(self, sender: str, nonce: str) -> bool:
        """Whether ``sender`` used ``nonce`` before (read only; the group commit records new ones)."""
        with self._tx() as conn:
            return conn.execute(select(nonces.c.nonce).where(
                (nonces.c.sender == sender) & (nonces.c.nonce == nonce))).first() is not None

    def record_submissions(self, accepted: Sequence[Mapping[str, Any]],
                           nonces_only: Sequence[tuple[str, str, float]] = ()) -> bool:
        """Group commit: accepted submissions (``record_submission``'s keywords plus ``nonce``:
        ``(sender, nonce, expires_at)``; ``envelope`` may be its JSON text already) and nonces of
        refused envelopes, in **one** transaction.

        False, with nothing stored, if any row conflicts (a twin stored meanwhile by another
        writer) or any task closed meanwhile (its round fused without it): the caller then stores
        them one by one.
        """
        now = self._clock()
        if now - self._last_nonce_purge >= self._nonce_purge_every_s:
            self.purge_nonces(now)
        seen = [a["nonce"] for a in accepted] + list(nonces_only)
        try:
            with self._tx() as conn:
                if seen:
                    conn.execute(insert(nonces), [{"sender": s, "nonce": n, "expires_at": e} for s, n, e in seen])
                if accepted:
                    conn.execute(insert(submissions), [{
                        "task_id": a["task_id"], "agent": a["agent"], "round_id": a["round_id"],
                        "envelope_sha256": a["envelope_sha256"], "envelope": _json_text(a["envelope"]),
                        "receipt": json.dumps(a["receipt"]), "received_at": a["now"]} for a in accepted])
                    _mark_submitted(conn, [a["task_id"] for a in accepted])
        except (SQLIntegrityError, TaskClosedError):
            return False
        return True

    def answered_digests(self, round_id: str) -> dict[str, str]:
        """Agent -> envelope digest of the submissions stored for ``round_id`` (no envelope is read)."""
        with self._tx() as conn:
            return {r[0]: r[1] for r in conn.execute(select(submissions.c.agent, submissions.c.envelope_sha256)
                                                      .where(submissions.c.round_id == round_id))}

    def submission(self, task_id: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(select(submissions).where(submissions.c.task_id == task_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        out["envelope"] = json.loads(out["envelope"])
        out["receipt"] = json.loads(out["receipt"])
        return out

    def submissions_for_round(self, round_id: str) -> list[dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                select(submissions).where(submissions.c.round_id == round_id).order_by(submissions.c.agent)
            ).mappings().all()
        return [{**dict(r), "envelope": json.loads(r["envelope"]), "receipt": json.loads(r["receipt"])}
                for r in rows]

    def count_submissions(self) -> int:
        with self._tx() as conn:
            return len(conn.execute(select(submissions.c.task_id)).all())

    # -- nonces (the crypto package's NonceStore protocol) ----------------------------------
    def check_and_add(self, sender: str, nonce: str, expires_at: float) -> bool:
        """Record ``nonce`` for ``sender``; False if it was seen before (a replay).

        Every ``nonce_purge_every_s`` (by the store's clock) it first forgets expired nonces,
        so the table holds at most one freshness window's worth of envelopes however long the
        server runs. A replay inside the window is still refused: its row has not expired.
        """
        now = self._clock()
        if now - self._last_nonce_purge >= self._nonce_purge_every_s:
            self.purge_nonces(now)
        try:
            with self._tx() as conn:
                conn.execute(insert(nonces).values(sender=sender, nonce=nonce, expires_at=expires_at))
        except SQLIntegrityError:
            return False
        return True

    def purge_nonces(self, now: float | None = None) -> int:
        """Forget nonces past their freshness window (the timestamp check rejects those anyway); how many."""
        cutoff = self._clock() if now is None else now
        self._last_nonce_purge = cutoff
        with self._tx() as conn:
            return int(conn.execute(nonces.delete().where(nonces.c.expires_at < cutoff)).rowcount or 0)

    def count_nonces(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(nonces)).scalar_one())
