"""Acceptance thresholds, exemplar features, registration impact and negative images.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Each class keeps the raw-cosine threshold its predictions are accepted at, its exemplars' image
features (so later registrations can be trained not to take them, and checked for it), the impact
its registration had on the tenant's other classes, and the "not this class" images sent with it.
Classes stored before this revision have none of the new values: the worker computes their
exemplar features from their images when it first needs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("classes") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("exemplar_features", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("impact", sa.JSON(), nullable=True))
    op.create_table(
        "class_negative_images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("class_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["class_id"], ["classes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_class_negative_images_class_id", "class_negative_images", ["class_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_class_negative_images_class_id", table_name="class_negative_images")
    op.drop_table("class_negative_images")
    with op.batch_alter_table("classes") as batch:
        batch.drop_column("impact")
        batch.drop_column("exemplar_features")
        batch.drop_column("threshold")
