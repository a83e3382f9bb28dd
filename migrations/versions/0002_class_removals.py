"""Removal log and a ready-rows index: API processes follow class changes without a rebuild.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a NOT NULL column in place on every version.
    with op.batch_alter_table("class_generation") as batch:
        batch.add_column(
            sa.Column("removals_floor", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "class_removals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("class_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_class_removals_generation", "class_removals", ["generation"])
    op.create_index("ix_classes_ready", "classes", ["model_id", "status", "updated_at"])
    # Every class deleted before this revision is already out of every matrix that will be
    # built from now on; nothing to backfill.


def downgrade() -> None:
    op.drop_index("ix_classes_ready", table_name="classes")
    op.drop_index("ix_class_removals_generation", table_name="class_removals")
    op.drop_table("class_removals")
    with op.batch_alter_table("class_generation") as batch:
        batch.drop_column("removals_floor")
