"""The writer: an append-only, signed, Merkle-tree audit log in one directory.

Open it once per process (an ``flock`` refuses a second writer), append from any thread,
and close it at shutdown (which signs a final checkpoint). Reopening replays and verifies
every line with the writer's own key before continuing the same tree, so a tampered log is
never silently extended; a torn last line left by a crash is cut off with a loud warning and
the cut is itself logged (see :mod:`audit.storage`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time as _time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from audit.errors import AuditConfigError, LogClosedError, LogCorruptError
from audit.merkle import leaf_hash
from audit.records import Checkpoint, EntryReceipt, build_entry, entry_line, sign_checkpoint
from audit.storage import CHECKPOINTS, ENTRIES, PUBLIC_KEY, DurableAppender, WriterLock, truncate
from audit.verify import scan
from crypto.canonical import canonical_json
from crypto.errors import CryptoError
from crypto.signing import SigningKey, VerifyKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InclusionProof:
    """Leaf ``index`` is in the tree of ``tree_size``: check with :func:`audit.verify_inclusion`."""

    index: int
    tree_size: int
    leaf_hash: str
    path: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tree_size": self.tree_size, "leaf_hash": self.leaf_hash,
                "path": list(self.path)}


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``old_size`` is a prefix of the one of ``new_size``: :func:`audit.verify_consistency`."""

    old_size: int
    new_size: int
    path: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size, "path": list(self.path)}


class AuditLog:
    """Thread-safe writer of one log directory; build it with :meth:`open`."""

    def __init__(self, *, directory: Path, signing_key: SigningKey, origin: str, checkpoint_every: int,
                 now: Callable[[], float], lock: WriterLock) -> None:
        self.directory, self.origin = directory, origin
        self._key, self._every, self._now, self._lock = signing_key, checkpoint_every, now, lock
        self._mutex = threading.RLock()
        self._closed = False
        report, state = scan(directory, signing_key.verify_key())
        torn = [p for p in report.problems if p.kind == "torn"]
        bad = [p for p in report.problems if p.kind != "torn"]
        if bad:
            raise LogCorruptError(f"{directory}: refusing to extend a log that fails verification: {bad[0]}", bad[0])
        if state.origin is not None and state.origin != origin:
            raise AuditConfigError(f"{directory}: this log's origin is {state.origin!r}, not {origin!r}")
        for problem in torn:
            lines = state.files[problem.file]
            truncate(directory / problem.file, lines.complete_bytes)
            message = (f"{directory / problem.file}: dropped an incomplete last line of {len(lines.torn)} bytes "
                       "(crash during a write); the log continues from the last complete line")
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            log.warning(message)
        self._tree, self._last_time = state.tree, state.last_time
        self._last_checkpoint: Checkpoint | None = state.last_checkpoint
        self._entries = DurableAppender(directory / ENTRIES)
        self._checkpoints = DurableAppender(directory / CHECKPOINTS)
        for problem in torn:
            lines = state.files[problem.file]
            self.append(actor=origin, action="audit.recovered", outcome="truncated",
                        digests={"discarded_sha256": hashlib.sha256(lines.torn).hexdigest()},
                        details={"file": problem.file, "line": problem.line, "discarded_bytes": len(lines.torn)})

    @classmethod
    def open(cls, directory: str | Path, *, signing_key: SigningKey, origin: str, checkpoint_every: int = 64,
             now: Callable[[], float] = _time.time) -> AuditLog:
        """Open (creating if needed) the log in ``directory`` as its one writer."""
        if not isinstance(origin, str) or not origin or any(ord(c) < 32 for c in origin):
            raise AuditConfigError(f"origin must be a non-empty single-line string, got {origin!r}")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise AuditConfigError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = WriterLock(directory)
        try:
            _check_key_file(directory, signing_key.verify_key())
            return cls(directory=directory, signing_key=signing_key, origin=origin,
                       checkpoint_every=checkpoint_every, now=now, lock=lock)
        except BaseException:
            lock.release()
            raise

    # -- writing ---------------------------------------------------------------------------------
    def append(self, *, actor: str, action: str, outcome: str = "ok", round_id: str | None = None,
               task_id: str | None = None, digests: Mapping[str, str] | None = None,
               details: Mapping[str, Any] | None = None) -> EntryReceipt:
        """Validate, sign, write and fsync one entry; every ``checkpoint_every`` entries, sign a checkpoint."""
        return self.append_many([{"actor": actor, "action": action, "outcome": outcome, "round_id": round_id,
                                  "task_id": task_id, "digests": digests, "details": details}])[0]

    def append_many(self, entries: Sequence[Mapping[str, Any]]) -> list[EntryReceipt]:
        """Append several entries (``append``'s keyword arguments each) behind **one** fsync: all or none.

        The group commit of concurrent submissions: every entry is validated and signed first, so
        one bad entry rejects the group before anything is written; then one write and one fsync;
        only then does the tree grow. A checkpoint is signed when the group crosses a multiple of
        ``checkpoint_every`` (so checkpoints stay at most that many entries apart).
        """
        with self._mutex:
            self._check_open()
            when = max(self._now(), self._last_time)  # times never go back, even if the clock does
            lines, leaves = [], []
            for k, item in enumerate(entries):
                entry = build_entry(log=self.origin, index=self._tree.size + k, time=when,
                                    actor=item["actor"], action=item["action"], outcome=item.get("outcome", "ok"),
                                    round_id=item.get("round_id"), task_id=item.get("task_id"),
                                    digests=item.get("digests"), details=item.get("details"))
                line, leaf = entry_line(entry, self._key)
                lines.append(line)
                leaves.append(leaf_hash(leaf))
            if not lines:
                return []
            self._entries.append_many(lines)
            before = self._tree.size
            receipts = []
            for leaf_h in leaves:
                self._tree.append(leaf_h)
                receipts.append(EntryReceipt(index=self._tree.size - 1, leaf_hash_hex=leaf_h.hex(),
                                             tree_size=self._tree.size))
            self._last_time = when
            if self._tree.size // self._every > before // self._every:
                self.checkpoint()
            return receipts

    def checkpoint(self) -> Checkpoint:
        """Sign and write a checkpoint of the current size and root."""
        with self._mutex:
            self._check_open()
            when = max(self._now(), self._last_time)
            cp = sign_checkpoint(self._key, origin=self.origin, size=self._tree.size, root=self._tree.root().hex(),
                                 time=when)
            self._checkpoints.append(canonical_json(cp.to_dict()))
            self._last_time, self._last_checkpoint = when, cp
            return cp

    def close(self) -> None:
        """Sign a final checkpoint (unless the last one already covers everything) and release the lock."""
        with self._mutex:
            if self._closed:
                return
            try:
                last = self._last_checkpoint
                if last is None or last.size != self._tree.size:
                    self.checkpoint()
            finally:
                self._closed = True
                self._entries.close()
                self._checkpoints.close()
                self._lock.release()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        with self._mutex:
            return self._tree.size

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        return self._last_checkpoint

    def root(self, tree_size: int | None = None) -> str:
        """Hex root of the first ``tree_size`` entries (default: all)."""
        with self._mutex:
            return self._tree.root(tree_size).hex()

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        with self._mutex:
            size = self._tree.size if tree_size is None else tree_size
            path = self._tree.inclusion_path(index, size)
            return InclusionProof(index, size, self._tree.leaf(index).hex(), tuple(h.hex() for h in path))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        with self._mutex:
            new = self._tree.size if new_size is None else new_size
            path = self._tree.consistency_path(old_size, new)
            return ConsistencyProof(old_size, new, tuple(h.hex() for h in path))

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self.directory}: the audit log is closed")

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _check_key_file(directory: Path, key: VerifyKey) -> None:
    """Write ``log_public_key.pem`` on first open; refuse a different key later (no silent rotation)."""
    path = directory / PUBLIC_KEY
    if not path.exists():
        key.save(path)
        return
    try:
        stored = VerifyKey.load(path)
    except CryptoError as exc:
        raise AuditConfigError(f"{path}: {exc}") from None
    if stored != key:
        raise AuditConfigError(f"{path}: this log was written with key {stored.fingerprint()[:16]}…; the given "
                               f"signing key is {key.fingerprint()[:16]}… (one log, one key)")
