"""``mor server restore --force`` twice within one second keeps both replaced logs, each in its own folder.

The folder a forced restore copies the target's audit files into is named after the second.
Before, a second forced restore in the same second failed there with ``FileExistsError`` — a
traceback, after the state database had already been replaced and before the log was, so state
and log no longer matched. Real files; the step of :func:`server.restore.restore` it is about.
"""

from __future__ import annotations

from pathlib import Path

from audit.storage import ENTRIES
from server.restore import _replace_audit


def test_two_forced_restores_in_one_second_keep_both_logs(tmp_path: Path) -> None:
    audit_dir, backup = tmp_path / "audit", tmp_path / "backup"
    audit_dir.mkdir()
    (backup / "audit").mkdir(parents=True)
    (audit_dir / ENTRIES).write_bytes(b"target\n")
    (backup / "audit" / ENTRIES).write_bytes(b"backup one\n")
    first = _replace_audit(audit_dir, backup, keep_aside=True)
    (backup / "audit" / ENTRIES).write_bytes(b"backup two\n")
    second = _replace_audit(audit_dir, backup, keep_aside=True)

    assert first is not None and second is not None and first != second
    assert (first / ENTRIES).read_bytes() == b"target\n" and (second / ENTRIES).read_bytes() == b"backup one\n"
    assert (audit_dir / ENTRIES).read_bytes() == b"backup two\n"
    assert second.stat().st_mode & 0o777 == 0o700
