"""The reference bank grown from traffic.

Revision ID: 0007
Revises: 0006

Image features of opted-in tenants' /v1/classify requests, labelled by the plain vocabulary word
answered confidently.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bank_features",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("word", sa.String(length=200), nullable=False),
        sa.Column("feature", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bank_features_word", "bank_features", ["model_id", "tenant", "word", "id"])
    op.create_index("ix_bank_features_tenant", "bank_features", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_bank_features_tenant", table_name="bank_features")
    op.drop_index("ix_bank_features_word", table_name="bank_features")
    op.drop_table("bank_features")
