"""Reading the server's own audit log back out, page by page, for auditors (``/v1/audit/entries`` …).

Why an offset index: an auditor fetches the whole log in bounded pages; scanning the file from
the top for every page would make a full export quadratic in the log's size. :class:`LineIndex`
remembers where each complete line starts (8 bytes a line) and only reads what was appended
since the last page. It indexes complete lines only (ending in ``\\n``): the writer appends one
line with one ``write`` + ``fsync`` (:mod:`audit.storage`), so a line still being written is
simply not served yet.

:class:`AuditExport` is what the auditor routes need from ``Services.audit`` beyond the
member-facing :class:`server.services.AuditTrail`; the production trail
(:class:`server.audit_trail.AuditLogTrail`) implements both. A trail without it (unit-test
doubles) makes the routes answer 501 instead of guessing.
"""

from __future__ import annotations

import threading
from array import array
from pathlib import Path
from typing import Protocol, runtime_checkable

MAX_PAGE_LINES = 1000
MAX_PAGE_BYTES = 4 * 1024 * 1024  # an entry is at most 64 KiB: a page never holds fewer than 1 line


class LineIndex:
    """Start offsets of the complete lines of one append-only file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._starts = array("q")
        self._end = 0  # offset just past the last complete line indexed
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(self._end)
            offset = self._end
            for raw in iter(lambda: handle.readline(), b""):
                if not raw.endswith(b"\n"):
                    break  # a line still being written: served once it is complete
                self._starts.append(offset)
                offset += len(raw)
            self._end = offset

    def count(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._starts)

    def read(self, start: int, limit: int, *, stop: int | None = None) -> list[str]:
        """Lines ``start`` .. (at most ``limit``, never line ``stop`` or later), newline stripped.

        At most :data:`MAX_PAGE_BYTES` of lines, but always at least one, so paging never stalls.
        """
        with self._lock:
            self._refresh()
            end = min(len(self._starts), start + limit, len(self._starts) if stop is None else stop)
            if start >= end:
                return []
            bounds = [*self._starts[start:end], self._starts[end] if end < len(self._starts) else self._end]
        count = 1
        while count < end - start and bounds[count + 1] - bounds[0] <= MAX_PAGE_BYTES:
            count += 1
        with self.path.open("rb") as handle:
            handle.seek(bounds[0])
            data = handle.read(bounds[count] - bounds[0])
        return [raw.decode("utf-8", "backslashreplace") for raw in data.split(b"\n")[:count]]


@runtime_checkable
class AuditExport(Protocol):
    """The auditor's read-only view of the log (see the module docstring)."""

    def entry_lines(self, start: int, limit: int) -> tuple[list[str], int]:
        """(entries.jsonl lines from ``start``, the log's size when read)."""
        ...

    def checkpoint_lines(self, start: int, limit: int) -> tuple[list[str], int]:
        """(checkpoints.jsonl lines from ``start``, how many checkpoints there are)."""
        ...

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        """Hex hashes of the RFC 9162 consistency proof from ``old_size`` to ``new_size``."""
        ...

    def public_key_pem(self) -> bytes:
        """The log's ``log_public_key.pem`` (a convenience: verifiers bring their own copy)."""
        ...

    def size(self) -> int: ...
