"""``mor server restore``: put a backup (:mod:`server.backup`) back, after checking every part of it.

Before anything on the target changes, the backup must prove itself: the manifest signed by
this server's own key, every file's SHA-256 as listed, the audit log verifying whole with the
server's key at exactly the size and root the manifest recorded, and state and log agreeing —
each stored submission's receipt cites an audit index inside the log whose leaf hash is the
receipt's and whose entry accepted that same task. (The log may hold more than the state:
a submission whose twin won a race, or rows retention deleted; never less.)

Then the target: never while a server runs (the audit writer lock, as for backups, and no
``--force`` overrides it); and without ``--force`` only over an empty or *older* state — the
target's log must be a prefix of the backup's, so nothing the target recorded is lost. With
``--force`` the target's audit files are first copied aside (``<audit_dir>.before-restore-*``),
never deleted. The state is loaded at the backup's schema revision and then upgraded to this
software's, SQLite into a new file swapped in whole, PostgreSQL in one transaction. Last, the
restored log records ``state.restored`` (signed, like every entry) with the manifest's digest.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import shutil
import time
from itertools import groupby
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import MetaData, Table, func, insert, select, text
from sqlalchemy.engine import Connection, make_url

from audit import AuditLog, verify_log
from audit.storage import ENTRIES, fsync_dir, read_lines
from audit.verify import LogState, scan
from crypto.signing import SigningKey
from server.backup import (
    AUDIT_FILES,
    FORMAT,
    MANIFEST,
    SIGNATURE,
    STATE,
    opened_backup,
    server_key,
    sha256_file,
    verified_manifest,
    writer_lock,
)
from server.config import ServerConfig
from server.errors import StateError
from server.migrations import VERSION_TABLE, alembic_config, known_revision
from server.state import StateStore
from server.state_files import open_engine, seal_companions
from server.state_tables import metadata

BATCH = 500


def _rows(directory: Path) -> Any:
    with gzip.open(directory / STATE, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def check_backup(directory: Path, key: SigningKey) -> tuple[dict[str, Any], LogState]:
    """The backup's manifest and audit log, once every check of the module docstring passed."""
    try:
        body, signature = (directory / MANIFEST).read_bytes(), (directory / SIGNATURE).read_text("ascii")
    except (OSError, ValueError) as exc:
        raise StateError(f"{directory}: not a backup signed by this server's key ({exc})") from None
    manifest = verified_manifest(body, signature, key, directory)
    if manifest.get("format") != FORMAT:
        raise StateError(f"{directory}: backup format {manifest.get('format')!r}, this software reads {FORMAT!r}")
    for rel, digest in manifest["files"].items():
        if not (directory / rel).is_file() or sha256_file(directory / rel) != digest:
            raise StateError(f"{directory}: {rel} is missing or not the file the manifest lists (changed or torn)")
    report = verify_log(directory / "audit", key.verify_key())
    _, log = scan(directory / "audit", key.verify_key())
    recorded = manifest["audit"]
    if not report.ok or (log.tree.size, log.tree.root().hex()) != (recorded["size"], recorded["root"]):
        raise StateError(f"{directory}: the audit log in the backup does not verify at the size and root the "
                         f"manifest recorded ({report.first_problem or 'different size or root'})")
    if not known_revision(manifest["schema_revision"]):
        raise StateError(f"{directory}: made at schema revision {manifest['schema_revision']!r}, newer than this "
                         "software: restore it with the version that made it")
    _check_agreement(directory, manifest, log)
    return manifest, log


def _check_agreement(directory: Path, manifest: dict[str, Any], log: LogState) -> None:
    counts: dict[str, int] = {}
    lines = log.files[ENTRIES].lines
    for record in _rows(directory):
        counts[record["table"]] = counts.get(record["table"], 0) + 1
        if record["table"] != "submissions":
            continue
        row = record["row"]
        receipt = json.loads(row["receipt"])
        index = receipt.get("audit_index")
        in_log = isinstance(index, int) and 0 <= index < log.tree.size
        entry = json.loads(lines[index])["entry"] if in_log else {}
        if (entry.get("action"), entry.get("task_id")) != ("submission.accepted", row["task_id"]) or \
                log.tree.leaf(index).hex() != receipt.get("audit_leaf_sha256"):
            raise StateError(f"{directory}: state and audit log disagree: the receipt of task {row['task_id']!r} "
                             f"cites audit entry {index!r}, which does not record accepting it")
    if {t: n for t, n in manifest["tables"].items() if n} != counts:
        raise StateError(f"{directory}: {STATE} holds {counts} rows, the manifest lists {manifest['tables']}")


def _check_target(config: ServerConfig, backup_lines: list[bytes], force: bool) -> bool:
    """True if the target holds anything; StateError if it holds what the backup lacks (unless forced)."""
    target = read_lines(config.server.audit_dir / ENTRIES).lines
    store = StateStore(config.server.database_url)
    try:
        with store.engine.connect() as conn:
            has_rows = any(conn.execute(select(t).limit(1)).first() for t in metadata.sorted_tables)
    finally:
        store.engine.dispose()
    if target != backup_lines[:len(target)] and not force:
        raise StateError(f"{config.server.audit_dir}: the target's audit log ({len(target)} entries) is not a prefix "
                         f"of the backup's ({len(backup_lines)}): restoring would lose newer or different history. "
                         "Use --force to replace it (its files are kept aside, never deleted)")
    if has_rows and not target and not force:
        shown = make_url(config.server.database_url).render_as_string(hide_password=True)
        raise StateError(f"{shown}: the database holds state that no audit log covers; "
                         "use --force to replace it")
    return bool(target) or has_rows


def _load_rows(conn: Connection, directory: Path, revision: str) -> None:
    """Create the schema at ``revision`` on an empty database, insert the backup's rows, upgrade to head."""
    command.upgrade(alembic_config(conn), revision)
    reflected = MetaData()
    reflected.reflect(conn)
    for name, records in groupby(_rows(directory), key=lambda r: r["table"]):
        table: Table = reflected.tables[name]
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record["row"])
            if len(batch) >= BATCH:
                conn.execute(insert(table), batch)
                batch = []
        if batch:
            conn.execute(insert(table), batch)
    if conn.dialect.name == "postgresql":
        _advance_sequences(conn, reflected)
    command.upgrade(alembic_config(conn), "head")


def _advance_sequences(conn: Connection, tables: MetaData) -> None:
    """Move each serial column's sequence past the restored ids (inserting explicit ids does not).

    Without this the next ``router_weights`` row would get id 1 again and fail on the primary key.
    """
    for table in tables.sorted_tables:
        for column in table.primary_key.columns:
            sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                    {"t": table.name, "c": column.name}).scalar()
            if sequence:
                highest = conn.execute(select(func.max(column))).scalar() or 0
                conn.execute(text("SELECT setval(:s, :next, false)"), {"s": sequence, "next": int(highest) + 1})


def _restore_state(url: str, directory: Path, revision: str) -> None:
    engine, path = open_engine(url)
    if path is None:  # a server database: drop ours and reload, all in one transaction
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                table.drop(conn, checkfirst=True)
            Table(VERSION_TABLE, MetaData()).drop(conn, checkfirst=True)
            _load_rows(conn, directory, revision)
        engine.dispose()
        return
    engine.dispose()
    fresh = path.with_name(path.name + ".restoring")
    fresh.unlink(missing_ok=True)
    new_engine, _ = open_engine(f"sqlite:///{fresh}")
    with new_engine.begin() as conn:
        _load_rows(conn, directory, revision)
    new_engine.dispose()
    for suffix in ("-wal", "-shm", "-journal"):  # a stale WAL must never be replayed into the new file
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(fresh, path)
    fsync_dir(path.parent)
    seal_companions(path)


def _replace_audit(audit_dir: Path, directory: Path, keep_aside: bool) -> Path | None:
    aside = None
    if keep_aside:
        stamp = f"{audit_dir.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        aside = audit_dir.with_name(stamp)
        for n in itertools.count(2):  # a second restore in the same second: a new folder, never a traceback
            try:  # (that came after the state was already replaced, leaving it and the log apart)
                aside.mkdir(mode=0o700)
                break
            except FileExistsError:
                aside = audit_dir.with_name(f"{stamp}-{n}")
        for name in AUDIT_FILES:
            if (audit_dir / name).exists():
                shutil.copy2(audit_dir / name, aside / name)
    for name in AUDIT_FILES:
        source, target = directory / "audit" / name, audit_dir / name
        if source.exists():
            partial = target.with_name(name + ".restoring")
            shutil.copyfile(source, partial)
            os.chmod(partial, 0o600)
            os.replace(partial, target)
        else:
            target.unlink(missing_ok=True)
    fsync_dir(audit_dir)
    return aside


def _origin_of(config: ServerConfig) -> str:
    """The server log's origin for a backup of a log with no entry yet (imported late: wiring loads torch)."""
    from server.wiring import load_consortium_policy

    return f"mor://{load_consortium_policy(config.server.policy).consortium}/server"


def restore(config: ServerConfig, source: Path, *, force: bool = False) -> dict[str, Any]:
    """Restore ``source`` into ``config``'s database and audit directory; what was done."""
    section = config.server
    key = server_key(config)
    with opened_backup(Path(source), key) as directory:
        manifest, log = check_backup(directory, key)
        with writer_lock(section.audit_dir):
            occupied = _check_target(config, log.files[ENTRIES].lines, force)
            _restore_state(section.database_url, directory, manifest["schema_revision"])
            aside = _replace_audit(section.audit_dir, directory, keep_aside=occupied)
        digest = hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
    origin = manifest["origin"] or _origin_of(config)
    with AuditLog.open(section.audit_dir, signing_key=key, origin=origin) as audit:
        audit.append(actor="operator", action="state.restored", digests={"manifest_sha256": digest}, details={
            "backup_created_at": manifest["created_at"], "audit_size": manifest["audit"]["size"],
            "schema_revision": manifest["schema_revision"], "forced": force,
            "previous_audit_kept_in": str(aside) if aside else None})
    return {"manifest": manifest, "kept_aside": str(aside) if aside else None,
            "database": make_url(section.database_url).render_as_string(hide_password=True)}
