"""Exceptions raised by :mod:`audit`.

One tree, so the server can catch exactly what it means (a refused entry is the caller's bug;
a corrupt log is an incident)::

    AuditError
     ├── AuditConfigError    bad arguments to ``AuditLog.open`` (origin, checkpoint_every), or a
     │                       directory that belongs to another key or another origin.
     ├── LogLockedError      another writer (process or object) already holds the log's lock file.
     ├── LogClosedError      ``append``/``checkpoint`` on a log after ``close()``.
     ├── EntryRejectedError  ``append`` input that must not be logged: bad actor/action, malformed
     │                       digests, non-JSON details, a raw float list (scores), an oversized entry.
     ├── ProofError          a proof asked for sizes/indices the tree does not have.
     ├── InvalidProofError   an inclusion or consistency proof that does not verify.
     ├── LogCorruptError     an existing log fails verification when a writer opens it; carries the
     │                       first :class:`~audit.verify.Problem` (file, line, entry index, reason).
     └── AuditStorageError   the file system refused a write or fsync; the entry was not logged.
"""

from __future__ import annotations

from typing import Any


class AuditError(Exception):
    """Base of every error raised by :mod:`audit`."""


class AuditConfigError(AuditError):
    """The log cannot be opened as asked."""


class LogLockedError(AuditError):
    """A second writer tried to open a log that already has one."""


class LogClosedError(AuditError):
    """The log was used after :meth:`~audit.log.AuditLog.close`."""


class EntryRejectedError(AuditError):
    """An entry was refused before anything was written."""


class ProofError(AuditError):
    """A proof was requested for a tree size or index that does not exist."""


class InvalidProofError(AuditError):
    """A Merkle proof failed verification."""


class LogCorruptError(AuditError):
    """The stored log failed verification; ``problem`` says where and why."""

    def __init__(self, message: str, problem: Any = None) -> None:
        super().__init__(message)
        self.problem = problem


class AuditStorageError(AuditError):
    """Writing or syncing the log failed; nothing was appended."""
