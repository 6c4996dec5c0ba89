"""Alembic's environment for the state store: online only, on a connection the caller already holds.

Why no URL here and no ``alembic.ini``: the server (:func:`server.migrations.upgrade_schema`) opens
the engine itself — private SQLite files, the Postgres session settings — and hands Alembic that
connection, so migrations run with exactly the settings the store runs with, inside its transaction.
"""

from __future__ import annotations

from alembic import context

from server.state_tables import metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("server/migrations runs only through server.migrations.upgrade_schema (no alembic.ini)")
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if __name__ != "server.migrations.env":  # Alembic runs this file by path; a plain import (a test walking
    run_migrations()                     # the package) has no migration context and must do nothing
