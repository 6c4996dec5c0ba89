"""The log's files, its single-writer lock, and durable appends.

Layout of a log directory::

    entries.jsonl         one signed entry per line (the Merkle leaves, in order)
    checkpoints.jsonl     one signed checkpoint per line
    log_public_key.pem    the writer's public key: a convenience, never trusted by the verifier
    LOCK                  held (flock) by the one writer; holds its pid for error messages

Durability: each line (or each group of lines appended together) is written with one ``write``
and then ``fsync``-ed before ``append`` returns, so a crash can only leave a *torn last line*
(no trailing newline). Policy, decided here once: the verifier reports a torn tail as a
failure (an auditor cannot tell a crash from a cut); the writer, on reopen, truncates it with
a loud warning and logs an ``audit.recovered`` entry naming the digest and length of what it removed.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from audit.errors import AuditStorageError, LogLockedError

ENTRIES = "entries.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
PUBLIC_KEY = "log_public_key.pem"
LOCK = "LOCK"


@dataclass(frozen=True)
class Lines:
    """A file split into complete lines (newline stripped) and a torn tail, if any."""

    lines: list[bytes]
    torn: bytes
    complete_bytes: int


def read_lines(path: Path) -> Lines:
    """Read ``path`` (missing = empty); a last line without ``\\n`` is returned as ``torn``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Lines([], b"", 0)
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    return Lines(body.split(b"\n")[:-1] if body else [], torn, cut)


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, durably (used only to drop a torn tail)."""
    with path.open("r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable too (a fsynced file can otherwise vanish)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriterLock:
    """An exclusive ``flock`` on ``LOCK``: one writer per log, across processes and objects."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LogLockedError(f"{directory}: the audit log is already open for writing (pid {holder}); "
                                 "a log has exactly one writer") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DurableAppender:
    """Appends whole lines and fsyncs; on a failed write, cuts the file back so no torn line stays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        self._handle: BinaryIO = path.open("ab")
        if not existed:
            fsync_dir(path.parent)

    def append(self, line: bytes) -> None:
        self.append_many([line])

    def append_many(self, lines: list[bytes]) -> None:
        """Write ``lines`` with one ``write`` and one ``fsync`` (group commit): all of them are durable, or none.

        Why one fsync for many: the fsync, not the write, is what an append costs, and entries
        of concurrent requests can share it — each caller is told its entry is logged only after
        the fsync that covers it returned.
        """
        offset = self._handle.tell()
        try:
            self._handle.write(b"".join(line + b"\n" for line in lines))
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            try:
                self._handle.truncate(offset)
                self._handle.seek(offset)
            except OSError:
                pass
            raise AuditStorageError(f"{self.path}: write failed ({exc.strerror}); the entry was not logged") from None

    def close(self) -> None:
        self._handle.close()
