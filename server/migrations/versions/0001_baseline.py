"""Baseline: the tables the state store had before migrations (what ``metadata.create_all`` made).

Why tolerant of tables that exist: a state database written by the pre-Alembic server has these
tables and no ``alembic_version``. Upgrading it runs this revision, which creates only what is
missing (as ``create_all`` did on every start) after :func:`server.migrations.upgrade_schema` has
checked that the tables present have at least these columns; then Alembic stamps it and the later
revisions apply as to any other database. Frozen here: later schema changes are new revisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def baseline_tables() -> list[sa.Table]:
    """The eight tables of revision 0001, on a private MetaData (so nothing later can change them)."""
    md = sa.MetaData()
    ident, rid, tid = sa.String(300), sa.String(100), sa.String(100)
    return [
        sa.Table("agents", md, sa.Column("identity", ident, primary_key=True),
                 sa.Column("signing_key_b64", sa.String(100), nullable=False),
                 sa.Column("architecture", sa.String(200), nullable=False),
                 sa.Column("epsilon", sa.Float, nullable=False), sa.Column("delta", sa.Float, nullable=False),
                 sa.Column("privacy_report", sa.Text, nullable=False),
                 sa.Column("enrolled_at", sa.Float, nullable=False), sa.Column("last_seen", sa.Float),
                 sa.Column("calibration", sa.Text)),
        sa.Table("rounds", md, sa.Column("round_id", rid, primary_key=True),
                 sa.Column("kind", sa.String(20), nullable=False), sa.Column("status", sa.String(20), nullable=False),
                 sa.Column("created_at", sa.Float, nullable=False), sa.Column("deadline", sa.Float, nullable=False),
                 sa.Column("n_items", sa.Integer, nullable=False), sa.Column("outcome", sa.Text)),
        sa.Table("tasks", md, sa.Column("task_id", tid, primary_key=True),
                 sa.Column("round_id", rid, nullable=False, index=True),
                 sa.Column("agent", ident, nullable=False, index=True), sa.Column("payload", sa.Text, nullable=False),
                 sa.Column("issued_at", sa.Float, nullable=False), sa.Column("deadline", sa.Float, nullable=False),
                 sa.Column("status", sa.String(20), nullable=False)),
        sa.Table("submissions", md, sa.Column("task_id", tid, primary_key=True),
                 sa.Column("agent", ident, nullable=False), sa.Column("round_id", rid, nullable=False, index=True),
                 sa.Column("envelope_sha256", sa.String(64), nullable=False),
                 sa.Column("envelope", sa.Text, nullable=False), sa.Column("receipt", sa.Text, nullable=False),
                 sa.Column("received_at", sa.Float, nullable=False)),
        sa.Table("nonces", md, sa.Column("sender", ident, primary_key=True),
                 sa.Column("nonce", sa.String(100), primary_key=True),
                 sa.Column("expires_at", sa.Float, nullable=False)),
        sa.Table("router_weights", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                 sa.Column("kind", sa.String(20), nullable=False), sa.Column("digest", sa.String(100), nullable=False),
                 sa.Column("basis", sa.String(200), nullable=False), sa.Column("by_domain", sa.Text, nullable=False),
                 sa.Column("overall", sa.Text, nullable=False), sa.Column("updated_at", sa.Float, nullable=False)),
        sa.Table("datasets", md, sa.Column("role", sa.String(40), primary_key=True),
                 sa.Column("summary", sa.Text, nullable=False), sa.Column("loaded_at", sa.Float, nullable=False)),
        sa.Table("member_health", md, sa.Column("identity", ident, primary_key=True),
                 sa.Column("failures", sa.Integer, nullable=False), sa.Column("quarantined_until", sa.Float),
                 sa.Column("reason", sa.Text)),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    for table in baseline_tables():
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(baseline_tables()):
        table.drop(bind, checkfirst=True)
