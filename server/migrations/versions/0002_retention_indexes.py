"""Index the times retention deletes by: rounds by creation, router weights by update.

Why: enforcing ``audit.retention_days`` (:mod:`server.retention`) selects closed rounds older
than a cutoff on every pass; without the index that is a full scan of a table that grows by one
row per round for the life of the consortium.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rounds_created_at", "rounds", ["created_at"])
    op.create_index("ix_router_weights_updated_at", "router_weights", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_router_weights_updated_at", table_name="router_weights")
    op.drop_index("ix_rounds_created_at", table_name="rounds")
