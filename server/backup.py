"""``mor server backup``: the state database and the audit log, taken together at one point.

Why together, and why with the server stopped: a receipt cites an audit entry (index and leaf
hash) and the state holds the receipt, so a state snapshot and a log copy taken at different
moments disagree — a restore would hold receipts the log cannot prove, or log entries for
state that is gone. The one writer of the audit log holds an ``flock`` on its ``LOCK`` file
(:mod:`audit.storage`); a backup takes that same lock, so it fails at once ("the server is
running") while a server runs, and a server started during a backup refuses to start. Under
the lock nothing writes either side, so state and log are at the same point by construction.
Downtime is the time to copy (measured in deploy/RUNBOOK.md).

Format (a directory, or the same as ``.tar.gz``), dialect-neutral so a SQLite state can be
restored into PostgreSQL and back::

    manifest.json       what is inside: schema revision, rows per table, SHA-256 of every file,
                        the audit tree's size and root and its last signed checkpoint
    manifest.sig        Ed25519 signature of manifest.json by the server's signing key
    state.jsonl.gz      one JSON line per row: {"table": ..., "row": {...}}, tables in order
    audit/              entries.jsonl, checkpoints.jsonl, log_public_key.pem, byte for byte

Why rows through SQLAlchemy and not ``pg_dump`` or SQLite's backup API: one format for both
databases, restorable into either (a SQLite pilot moves onto PostgreSQL by backup and restore),
checked row by row against the log before a restore; the lock already gives the consistent
point those tools exist for (PostgreSQL reads it in one REPEATABLE READ snapshot all the same).

Everything is written 0600 in a 0700 directory: the state holds enrolments and envelopes.
:mod:`server.restore` checks all of it before it changes anything.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select

from audit import LogLockedError, verify_log
from audit.storage import CHECKPOINTS, ENTRIES, PUBLIC_KEY, WriterLock
from audit.verify import scan
from crypto.canonical import canonical_json
from crypto.errors import CryptoError
from crypto.signing import SigningKey
from server.config import ServerConfig
from server.errors import StateError
from server.migrations import current_revision
from server.state import StateStore
from server.state_tables import metadata

FORMAT = "mor-server-backup/1"
MANIFEST, SIGNATURE, STATE = "manifest.json", "manifest.sig", "state.jsonl.gz"
AUDIT_FILES = (ENTRIES, CHECKPOINTS, PUBLIC_KEY)
TARBALL_SUFFIXES = (".tar.gz", ".tgz")
MAX_MANIFEST_BYTES = 1 << 20
BACKUP_MEMBERS = frozenset({"backup", "backup/audit", f"backup/{MANIFEST}", f"backup/{SIGNATURE}", f"backup/{STATE}",
                            *(f"backup/audit/{name}" for name in AUDIT_FILES)})  # all a tarball of ours holds


@contextlib.contextmanager
def writer_lock(audit_dir: Path) -> Iterator[None]:
    """Hold the audit log's writer lock: proof that no server writes this state and log now."""
    audit_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        lock = WriterLock(audit_dir)
    except LogLockedError as exc:
        raise StateError(f"{exc}. The server is running: stop it first (systemctl stop mor-server), then back "
                         "up or restore (its state and log must not move meanwhile)") from None
    try:
        yield
    finally:
        lock.release()


def server_key(config: ServerConfig) -> SigningKey:
    """The server's signing key: it signs a backup's manifest and checks one before a restore."""
    try:
        return SigningKey.load(config.server.signing_key)
    except (CryptoError, OSError) as exc:
        raise StateError(f"[server].signing_key {config.server.signing_key}: {exc} (a backup is signed and checked "
                         "with the server's own key: restore the key from its own backup first)") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dump_state(store: StateStore, path: Path) -> dict[str, int]:
    """Every row of every table, in one read transaction, as gzip'd JSON lines; rows per table."""
    counts: dict[str, int] = {}
    snapshot = {"isolation_level": "REPEATABLE READ"} if store.engine.dialect.name == "postgresql" else {}
    with store.engine.connect().execution_options(**snapshot) as conn, \
            gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        for table in metadata.sorted_tables:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            counts[table.name] = 0
            for row in rows:
                out.write(json.dumps({"table": table.name, "row": dict(row)}, allow_nan=False) + "\n")
                counts[table.name] += 1
    return counts


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StateError(f"{out}: already exists; a backup never overwrites (choose a new name)")


def backup(config: ServerConfig, out: Path, *, now: float | None = None) -> dict[str, Any]:
    """Write a backup of ``config``'s state and audit log to ``out`` (a new directory or ``.tar.gz``)."""
    out = Path(out)
    _check_out(out)
    try:  # work beside the destination: same file system (a final rename), no copy of the state in /tmp
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{out}: cannot write the backup: {exc.strerror or exc}") from None
    section = config.server
    key = server_key(config)
    with writer_lock(section.audit_dir), tempfile.TemporaryDirectory(prefix=".mor-backup-", dir=out.parent) as tmp:
        work = Path(tmp) / "backup"
        (work / "audit").mkdir(parents=True, mode=0o700)
        report = verify_log(section.audit_dir, key.verify_key())
        if not report.ok:
            raise StateError(f"{section.audit_dir}: the audit log does not verify ({report.first_problem}); "
                             "a backup of it would not either — investigate with mor audit verify first")
        for name in AUDIT_FILES:
            if (section.audit_dir / name).exists():
                shutil.copyfile(section.audit_dir / name, work / "audit" / name)
        store = StateStore(section.database_url)
        try:
            counts = _dump_state(store, work / STATE)
            with store.engine.connect() as conn:
                revision = current_revision(conn)
            dialect = store.engine.dialect.name
        finally:
            store.engine.dispose()
        _, log_state = scan(work / "audit", key.verify_key())
        last = log_state.last_checkpoint
        manifest: dict[str, Any] = {
            "format": FORMAT, "created_at": time.time() if now is None else now, "schema_revision": revision,
            "source_dialect": dialect, "tables": counts, "origin": report.origin,
            "audit": {"size": log_state.tree.size, "root": log_state.tree.root().hex(),
                      "checkpoint": None if last is None else {"size": last.size, "root": last.root,
                                                               "time": last.time}},
            "files": {rel: sha256_file(work / rel) for rel in [STATE, *(f"audit/{n}" for n in AUDIT_FILES)]
                      if (work / rel).exists()},
        }
        manifest["sizes"] = {rel: (work / rel).stat().st_size for rel in manifest["files"]}
        body = canonical_json(manifest)
        (work / MANIFEST).write_bytes(body)
        (work / SIGNATURE).write_text(key.sign(body).hex() + "\n", "ascii")
        _seal(work)
        try:
            _publish(work, out)
        except OSError as exc:
            raise StateError(f"{out}: cannot write the backup: {exc.strerror or exc}") from None
    return manifest


def _seal(work: Path) -> None:
    for path in work.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chmod(work, 0o700)


def _publish(work: Path, out: Path) -> None:
    """Move the finished backup to ``out`` (a directory, or a tarball when it ends in .tar.gz/.tgz).

    Gzip level 1 here and for the state: envelopes are ciphertexts (base64 of random-looking
    bytes), which compress to about 3/4 at any level, and a higher level only costs downtime —
    the server is stopped meanwhile.
    """
    if out.name.endswith(TARBALL_SUFFIXES):
        partial = out.with_name(out.name + ".partial")
        partial.unlink(missing_ok=True)  # a leftover of a crashed run, or a link planted in a shared folder:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never written through
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
            tar.add(work, arcname="backup")
        os.replace(partial, out)
        return
    if out.exists():
        out.rmdir()  # empty (checked before)
    shutil.move(str(work), str(out))


def verified_manifest(body: bytes, signature_hex: str, key: SigningKey, where: Path) -> dict[str, Any]:
    """The manifest, once its signature by this server's key checks; StateError otherwise."""
    try:
        key.verify_key().verify(bytes.fromhex(signature_hex.strip()), body)
        manifest = json.loads(body)
    except (ValueError, CryptoError) as exc:
        raise StateError(f"{where}: not a backup signed by this server's key ({exc})") from None
    if not isinstance(manifest, dict):
        raise StateError(f"{where}: the manifest is not a JSON object")
    return manifest


def _check_members_against_manifest(tar: tarfile.TarFile, members: list[tarfile.TarInfo], key: SigningKey,
                                    source: Path) -> None:
    """Before anything is written: the signed manifest checks and every file has the size it lists.

    So a tarball that pairs a genuine manifest with a huge substitute file (or one that is not
    ours at all) is refused having written nothing; the digests are checked after unpacking.
    """
    by_name = {m.name: m for m in members}
    small: dict[str, bytes] = {}
    for name in (MANIFEST, SIGNATURE):
        member = by_name.get(f"backup/{name}")
        if member is None or not member.isfile() or member.size > MAX_MANIFEST_BYTES:
            raise StateError(f"{source}: not a backup written by mor server backup: backup/{name} is missing or "
                             "too large")
        handle = tar.extractfile(member)
        small[name] = handle.read() if handle is not None else b""
    manifest = verified_manifest(small[MANIFEST], small[SIGNATURE].decode("ascii", "replace"), key, source)
    sizes = manifest.get("sizes")
    if not isinstance(sizes, dict):
        return  # a backup from before sizes were recorded: its digests are still checked after unpacking
    for member in members:
        rel = member.name.removeprefix("backup/")
        if member.isfile() and rel not in (MANIFEST, SIGNATURE) and sizes.get(rel) != member.size:
            raise StateError(f"{source}: {member.name} is {member.size} bytes, the signed manifest lists "
                             f"{sizes.get(rel)}: not the backup that was signed; nothing was unpacked")


@contextlib.contextmanager
def opened_backup(source: Path, key: SigningKey | None = None) -> Iterator[Path]:
    """The backup's directory: ``source`` itself, or a tarball unpacked (data filter: no links, no escapes).

    With ``key`` a tarball is unpacked only after its signed manifest checks and lists every
    file's size as found in the tarball.
    """
    source = Path(source)
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        raise StateError(f"{source}: no such backup (a directory or .tar.gz written by mor server backup)")
    with tempfile.TemporaryDirectory(prefix="mor-restore-") as tmp:
        try:
            with tarfile.open(source, "r:gz") as tar:
                members = tar.getmembers()
                stray = [m.name for m in members if m.name not in BACKUP_MEMBERS]
                if stray:  # refused before anything is written: a hostile file cannot fill the disk with extras
                    raise StateError(f"{source}: not a backup written by mor server backup: it holds "
                                     f"{stray[0]!r}" + (f" and {len(stray) - 1} more" if len(stray) > 1 else ""))
                if key is not None:
                    _check_members_against_manifest(tar, members, key, source)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise StateError(f"{source}: not a readable backup tarball ({exc})") from None
        yield Path(tmp) / "backup"
