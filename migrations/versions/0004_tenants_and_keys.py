"""Tenants, and API keys in the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Every class belongs to a tenant (existing ones to `default`), names are unique per tenant, and
admins issue and revoke keys through the API (`api_keys`, hashes only).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: the migration keeps meaning what it meant when written.
DEFAULT_TENANT = "default"


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table to change a constraint. The server default fills
    # the existing rows, then goes, so the application stays the one place that picks a tenant.
    with op.batch_alter_table("classes") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT)
        )
        batch.drop_constraint("uq_classes_model_name", type_="unique")
        batch.create_unique_constraint("uq_classes_tenant_name", ["model_id", "tenant", "name_key"])
    with op.batch_alter_table("classes") as batch:
        batch.alter_column("tenant", server_default=None)
    with op.batch_alter_table("class_removals") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT)
        )
    with op.batch_alter_table("class_removals") as batch:
        batch.alter_column("tenant", server_default=None)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    with op.batch_alter_table("class_removals") as batch:
        batch.drop_column("tenant")
    # Names were unique per model before tenants: a downgrade with one name in two tenants
    # would break that, so it stops and says so instead of dropping classes.
    clash = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT model_id, name_key FROM classes GROUP BY model_id, name_key"
                " HAVING count(*) > 1"
            )
        )
        .first()
    )
    if clash is not None:
        raise RuntimeError(
            f"cannot downgrade: the name {clash.name_key!r} of model {clash.model_id} is used by "
            "several tenants; delete or rename all but one first"
        )
    with op.batch_alter_table("classes") as batch:
        batch.drop_constraint("uq_classes_tenant_name", type_="unique")
        batch.create_unique_constraint("uq_classes_model_name", ["model_id", "name_key"])
        batch.drop_column("tenant")
