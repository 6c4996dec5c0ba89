"""A backup tarball is written to a file of its own (never through a link planted beside it), and read only if ours.

Backups often go to a shared folder. Before, the tarball was first written to ``<out>.partial``
opened with ``O_CREAT | O_TRUNC``: a symbolic link planted there by another local user was
followed, so the state (enrolments, envelopes) was written into a file of that user's choosing
— keeping its mode, readable by them — and ``<out>`` became the link. Real files; no server
is needed for the last step of :func:`server.backup.backup` that this is about.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from server.backup import _publish, opened_backup
from server.errors import StateError


def test_a_link_planted_at_the_partial_name_is_not_written_through(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "manifest.json").write_text("{}", "utf-8")
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "readable-by-the-planter"
    victim.write_text("theirs", "utf-8")
    victim.chmod(0o644)
    out = shared / "b.tar.gz"
    (shared / "b.tar.gz.partial").symlink_to(victim)

    _publish(work, out)

    assert victim.read_text("utf-8") == "theirs"
    assert not out.is_symlink() and out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out, "r:gz") as tar:
        assert "backup/manifest.json" in tar.getnames()


def test_a_tarball_holding_anything_else_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    """A hostile file (thousands of members, or one stray large one) is refused by name, nothing written first."""
    source = tmp_path / "hostile.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        for name in ("backup/manifest.json", *(f"backup/filler-{i}" for i in range(3))):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(StateError, match="holds 'backup/filler-0' and 2 more"), opened_backup(source):
        pass
