"""Schema migrations of the state store (Alembic), and the one policy for running them.

Policy, decided here once (deploy/RUNBOOK.md, "State and audit"):

* **empty database** — created at the newest revision (``head``);
* **behind** (an older revision, or a pre-migration database that ``metadata.create_all``
  made: tables and no ``alembic_version``) — upgraded at start, in one transaction, before
  the server serves anything; the store reports the change (:class:`SchemaChange`) and the
  server writes it to its audit log. Why automatic: every revision is additive, the upgrade
  commits whole or not at all (SQLite and PostgreSQL both run DDL in transactions), and a
  server that refused would only make operators run the same command by hand;
* **ahead** (a revision this software does not know, e.g. after a rollback of the software)
  — refused with :class:`~server.errors.StateError`: code cannot safely write a schema newer
  than itself. Upgrade the software, or restore a backup taken by this version;
* a pre-migration database whose tables lack a column of the baseline is refused too: it is
  not a state store this code ever wrote.

Concurrent starts against one PostgreSQL database are serialised by a transaction-scoped
advisory lock, so two servers never both try to create the schema.

Changing a table in :mod:`server.state_tables` needs a new revision in ``versions/``:
``command.revision(alembic_config(conn), "what", rev_id="0003", autogenerate=True)``, with
``conn`` open on a database at the current head, writes it from ``script.py.mako`` with the
difference filled in (review it). ``tests/test_state_postgres.py`` compares the migrated schema
with the tables on SQLite and PostgreSQL, so a change without a revision fails there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Table, inspect, text
from sqlalchemy.engine import Connection, Engine

from server.errors import StateError

SCRIPTS = Path(__file__).resolve().parent
ADVISORY_LOCK = 0x6D6F72_5354  # "morST": one PostgreSQL advisory lock id for schema changes
VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class SchemaChange:
    """What opening the store did to its schema: ``before`` None means empty or pre-migration."""

    before: str | None
    after: str
    adopted: bool  # a pre-migration (create_all) schema was taken over

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision this software ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "server/migrations/versions has no revisions"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def known_revision(revision: str) -> bool:
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except (CommandError, RevisionError):
        return False
    return True


def baseline_tables() -> list[Table]:
    """The tables of revision 0001: what the pre-migration server's ``create_all`` made."""
    script = ScriptDirectory.from_config(alembic_config()).get_revision("0001")
    assert script is not None
    tables: list[Table] = script.module.baseline_tables()
    return tables


def _check_baseline(connection: Connection, shown: str) -> bool:
    """True if pre-migration tables exist (and have the baseline's columns); StateError if they differ."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names())
    adopted = False
    for table in baseline_tables():
        if table.name not in present:
            continue
        adopted = True
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing = sorted(set(table.columns.keys()) - have)
        if missing:
            raise StateError(f"database_url {shown}: table {table.name!r} has no column(s) {', '.join(missing)}: "
                             "this database was not written by a MoR-Secure server; point database_url at the "
                             "server's own database or an empty one")
    return adopted


def upgrade_schema(engine: Engine) -> SchemaChange:
    """Bring the database to :func:`head_revision` under the policy above; StateError if it is ahead."""
    shown = engine.url.render_as_string(hide_password=True)
    head = head_revision()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
        before = current_revision(connection)
        if before is not None and not known_revision(before):
            raise StateError(f"database_url {shown}: the state schema is at revision {before!r}, newer than this "
                             f"software knows (its newest is {head!r}); run the software version that wrote it, "
                             "or restore a backup taken by this version (mor server restore)")
        adopted = before is None and _check_baseline(connection, shown)
        if before != head:
            command.upgrade(alembic_config(connection), "head")
    return SchemaChange(before=before, after=head, adopted=adopted)

