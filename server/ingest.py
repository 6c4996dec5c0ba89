"""Group commit of accepted submissions: many envelopes, one SQL transaction and one audit fsync.

Why: each accepted envelope used to cost its own fsynced transactions (nonce, submission) and
its own audit-log fsync, and concurrent requests queued behind each other's fsyncs (bench
section 4: ingest saturated at 26-37 envelopes/s). Here a request thread that finds no commit
in progress becomes the *leader*: it takes every submission queued so far, writes their audit
entries with one fsync, signs their receipts, stores them with one transaction, and wakes the
others; submissions that arrive meanwhile form the next group. There is no background thread
to start or stop.

The promise does not change: **a receipt leaves only after the commit that contains its
envelope**. Order inside a group: check (task not answered and still open, nonce unseen — one
read transaction, plus duplicates within the group), then the audit entries (fsync), then the rows (commit), then the
replies; a task whose round closed after the route checked it is refused as expired (checked
again inside the storing transaction). A crash before the audit fsync loses the group and no
receipt was sent; a crash after it leaves audit entries for envelopes never stored (no
receipt was sent either: the log says more than was promised, never less); every receipt sent
cites an entry already on disk and a row already committed. If the group's transaction
conflicts (a row written meanwhile by another writer), its submissions are stored one by one with the old per-row path.

Nonces: the route verifies an envelope with :class:`DeferredNonce`, which defers recording the
nonce to the group (a replay is refused there, inside the same serialised step that stores
it). Envelopes refused after verification still have their nonce recorded (:meth:`burn`).
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from crypto.envelope import Envelope, OpenedEnvelope
from crypto.signing import SigningKey
from server.round_events import Verified
from server.services import AuditRecord, AuditTrail
from server.state import StateStore, TaskRow
from wire.messages import Receipt

Outcome = Literal["accepted", "duplicate", "replay", "expired"]


class DeferredNonce:
    """A :class:`crypto.nonces.NonceStore` that refuses a stored nonce and leaves recording a new one to the group."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.seen: tuple[str, str, float] | None = None

    def check_and_add(self, sender: str, nonce: str, expires_at: float) -> bool:
        if self.state.nonce_seen(sender, nonce):
            return False
        self.seen = (sender, nonce, expires_at)
        return True


@dataclass
class Submission:
    """One verified envelope waiting for its group commit, and what became of it."""

    agent: str
    task: TaskRow
    envelope: Envelope
    opened: OpenedEnvelope
    nonce: tuple[str, str, float]
    clipped: int
    now: float
    outcome: Outcome | None = None
    receipt: Receipt | None = None
    error: BaseException | None = None
    done: bool = False
    woken: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class _Burn:
    """The nonce of an envelope verified but refused, waiting for a commit."""

    nonce: tuple[str, str, float]
    error: BaseException | None = None
    done: bool = False
    woken: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


class GroupCommit:
    """Commits :class:`Submission` s in groups (see the module docstring); ``commit`` blocks until durable."""

    def __init__(self, *, state: StateStore, audit: AuditTrail, signing_key: SigningKey,
                 max_group: int = 256) -> None:
        self.state, self.audit, self.signing_key, self.max_group = state, audit, signing_key, max_group
        self._lock = threading.Lock()
        self._queue: list[Submission | _Burn] = []
        self._leading = False
        self.groups = 0  # how many commits were made (tests and the bench read it)

    def commit(self, item: Submission) -> Submission:
        """Queue ``item``; return it once a durable commit decided it (``outcome``), or raise that commit's error."""
        self._wait_for(item)
        return item

    def burn(self, nonce: tuple[str, str, float]) -> None:
        """Record, durably, the nonce of an envelope verified but refused: it cannot be replayed either."""
        self._wait_for(_Burn(nonce))

    def _wait_for(self, item: Submission | _Burn) -> None:
        """Queue ``item``; lead its group's commit, or sleep until that commit decided it.

        Why each waiter has its own event instead of one condition for all: with 40-64 request
        threads waiting, every commit's ``notify_all`` woke all of them to re-check and sleep
        again. Now a commit wakes exactly the members of its group and, if submissions are
        queued, the first of them, which leads the next group. Invariant (under ``_lock``):
        while someone leads, the queue's head is the leader's or its successor's item; when
        nobody leads the queue is empty, so a newcomer that finds nobody leading is the head.
        """
        with self._lock:
            self._queue.append(item)
            leads, self._leading = not self._leading, True
        if not leads:
            item.woken.wait()  # set once its group is decided, or when it is handed the lead
        if not item.done:
            self._lead()
        if item.error is not None:
            raise item.error

    def _lead(self) -> None:
        """Commit the group at the queue's head (this thread's item first), then wake it and the next leader."""
        with self._lock:
            group, self._queue = self._queue[:self.max_group], self._queue[self.max_group:]
        successor: Submission | _Burn | None = None
        try:
            self._commit([i for i in group if isinstance(i, Submission)],
                         [i.nonce for i in group if isinstance(i, _Burn)])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the group, re-raised there
            for member in group:
                member.error = exc
        finally:
            with self._lock:
                for member in group:
                    member.done = True
                self.groups += 1
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
            for member in group:
                member.woken.set()
            if successor is not None:
                successor.woken.set()

    def _commit(self, group: list[Submission], burnt: list[tuple[str, str, float]]) -> None:
        fresh, closed = self.state.group_check([(i.task.task_id, i.nonce[0], i.nonce[1]) for i in group])
        accepted: list[Submission] = []
        tasks: set[str] = set()
        seen: set[tuple[str, str]] = set()
        for item, new in zip(group, fresh, strict=True):
            key = (item.nonce[0], item.nonce[1])
            if key in seen:
                item.outcome = "replay"
            elif item.task.task_id in tasks:
                item.outcome = "duplicate"
            elif not new:
                item.outcome = "replay" if self._is_replay(item) else "duplicate"
            elif item.task.task_id in closed:  # its round closed after the route's check
                item.outcome = "expired"
                burnt = [*burnt, item.nonce]  # verified, then refused: spent like any other
            else:
                tasks.add(item.task.task_id)
                seen.add(key)
                accepted.append(item)
        records = self._audit(accepted)
        rows = [self._row(item, record) for item, record in zip(accepted, records, strict=True)]
        if self.state.record_submissions(rows, burnt):
            for item in accepted:
                item.outcome = "accepted"
        else:
            self._one_by_one(accepted, rows, burnt)
        self.state.events.submitted((i.task.round_id, Verified(i.agent, i.opened.envelope_sha256, i.envelope))
                                    for i in accepted if i.outcome == "accepted")

    def _is_replay(self, item: Submission) -> bool:
        """Not new: a replay if this nonce is stored, else the task was answered (a duplicate)."""
        return self.state.nonce_seen(item.nonce[0], item.nonce[1])

    def _audit(self, accepted: list[Submission]) -> list[AuditRecord]:
        entries = [(i.agent, "submission.accepted", {
            "task_id": i.task.task_id, "round_id": i.task.round_id, "envelope_sha256": i.opened.envelope_sha256,
            "kind": i.opened.kind, "length": i.opened.length, "clipped": i.clipped}) for i in accepted]
        many = getattr(self.audit, "record_many", None)
        if many is not None:
            records: list[AuditRecord] = many(entries)
            return records
        return [self.audit.record(*entry) for entry in entries]

    def _row(self, item: Submission, record: AuditRecord) -> dict[str, Any]:
        receipt = Receipt(task_id=item.task.task_id, round_id=item.task.round_id, agent=item.agent,
                          envelope_sha256=item.opened.envelope_sha256, received_at=item.now,
                          audit_index=record.index, audit_leaf_sha256=record.leaf_sha256)
        signature = base64.b64encode(self.signing_key.sign(receipt.signed_bytes())).decode("ascii")
        item.receipt = receipt.model_copy(update={"signature_b64": signature})
        return {"task_id": item.task.task_id, "agent": item.agent, "round_id": item.task.round_id,
                "envelope_sha256": item.opened.envelope_sha256,
                "envelope": item.envelope.to_bytes().decode("utf-8"),  # the canonical JSON its digest was taken of
                "receipt": item.receipt.model_dump(mode="json"), "now": item.now, "nonce": item.nonce}

    def _one_by_one(self, accepted: list[Submission], rows: list[dict[str, Any]],
                    burnt: list[tuple[str, str, float]]) -> None:
        """The group conflicted with another writer: the per-row path, each row in its own transaction."""
        for sender, nonce, expires in burnt:
            self.state.check_and_add(sender, nonce, expires)
        for item, row in zip(accepted, rows, strict=True):
            if not self.state.check_and_add(*item.nonce):
                item.outcome = "replay"
                continue
            stored = self.state.record_submission(
                task_id=row["task_id"], agent=row["agent"], round_id=row["round_id"],
                envelope_sha256=row["envelope_sha256"], envelope=row["envelope"], receipt=row["receipt"],
                now=row["now"])
            if stored:
                item.outcome = "accepted"
            else:
                item.outcome = "expired" if self.state.closed_tasks([item.task.task_id]) else "duplicate"
