"""Opening the state database: a clear error for a URL that cannot work, private files for one that does.

Why 0600 whatever the umask: under ``tls-only`` the store holds members' plaintext scores and
always their enrolments and receipts; SQLite creates its files with ``0666 & ~umask`` — 0644
under the usual umask, readable by every local user. So the database file is created (or an
existing one tightened) to 0600 *before* SQLite opens it; SQLite gives its ``-wal``/``-shm``/
``-journal`` companions the main file's mode, and :func:`seal_companions` checks them after.

Why check the URL here: an unknown scheme or a missing driver surfaced as a SQLAlchemy
traceback from deep inside ``create_engine``; a :class:`~server.errors.ConfigError` names the
setting and the fix. Passwords in URLs are never echoed.

PostgreSQL sessions (psycopg) run ``READ COMMITTED`` with ``synchronous_commit=on`` forced,
whatever the server's default: a receipt is signed for a row only after its commit returned, and
with ``synchronous_commit=off`` a commit can return before its WAL reaches disk — a crash would
then lose a submission the member holds a receipt for. READ COMMITTED is enough because the
store's promises rest on primary keys (one submission per task, one use per nonce), which
PostgreSQL enforces under every isolation level; a stricter level would only add retries.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from server.errors import ConfigError
from server.migrations import SchemaChange, upgrade_schema

PRIVATE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
EXAMPLE = "sqlite:////var/lib/mor/state.db"


def check_database_url(url: str) -> URL:
    """The parsed URL, or ConfigError when it is not a URL or names a database SQLAlchemy does not know."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database_url: not a database URL (e.g. {EXAMPLE})") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"database_url {parsed.render_as_string(hide_password=True)}: unknown database scheme "
                          f"{parsed.drivername!r} (e.g. {EXAMPLE}, or postgresql+psycopg://...)") from None
    return parsed


def sqlite_file(url: URL) -> Path | None:
    """The file of a file-backed SQLite URL; None for other databases and in-memory ones."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; set 0600 on it either way (umask cannot widen it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)


def seal_companions(path: Path) -> None:
    """0600 on the SQLite companion files that exist now (WAL and shared memory, rollback journal)."""
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(companion, PRIVATE_MODE)


def engine_options(url: URL) -> dict[str, Any]:
    """Per-dialect engine settings: the PostgreSQL session guarantees of the module docstring."""
    if url.get_backend_name() != "postgresql":
        return {}
    options: dict[str, Any] = {"isolation_level": "READ COMMITTED", "pool_pre_ping": True}
    if url.get_driver_name() in ("psycopg", "psycopg2"):  # libpq drivers take server settings at connect
        given = url.query.get("options")  # the URL's own ?options=... are kept, ours come last and win
        given = " ".join(given) if isinstance(given, tuple) else given
        options["connect_args"] = {"options": f"{given} -c synchronous_commit=on" if given
                                   else "-c synchronous_commit=on"}
    return options


def open_engine(url: str) -> tuple[Engine, Path | None]:
    """An engine for ``url``, and its SQLite file (created private) if there is one."""
    parsed = check_database_url(url)
    shown = parsed.render_as_string(hide_password=True)
    path = sqlite_file(parsed)
    try:
        if path is not None:
            make_private(path)
        engine = create_engine(parsed, future=True, **engine_options(parsed))
    except ImportError as exc:
        raise ConfigError(f"database_url {shown}: the database driver is not installed ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"database_url {shown}: cannot create {path}: {exc.strerror}") from None
    return engine, path


def prepare_schema(engine: Engine, path: Path | None) -> SchemaChange:
    """Migrate the schema to this software's revision (:mod:`server.migrations`), then seal SQLite's files."""
    try:
        change = upgrade_schema(engine)
    except SQLAlchemyError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"database_url {shown}: cannot open the database: {getattr(exc, 'orig', exc)}") from None
    if path is not None:
        seal_companions(path)
    return change
