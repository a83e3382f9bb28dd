"""Name keys fold compatibility forms (NFKC + casefold): "ＡＢＣ１" and "abc1" are one class.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Existing keys were NFC + casefold. Each row's key is recomputed from its stored name. Where two
classes of one model now share a key, the older keeps it and the newer gets the key plus its id
(it stays listed and classifiable; a label lookup by name finds the older one), with a warning.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# The key functions are copied here, not imported: a migration must keep doing what it did when
# it was written, whatever the application's rule becomes later.


def nfkc_key(name: str) -> str:
    folded = unicodedata.normalize("NFKC", name).casefold()
    return " ".join(unicodedata.normalize("NFKC", folded).split())


def nfc_key(name: str) -> str:
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


classes = sa.table(
    "classes",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("name_key", sa.String),
    sa.column("model_id", sa.String),
    sa.column("created_at", sa.DateTime),
)
removals = sa.table(
    "class_removals",
    sa.column("id", sa.Integer),
    sa.column("name_key", sa.String),
)


def rekey(key_of: Callable[[str], str]) -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(classes.c.id, classes.c.name, classes.c.name_key, classes.c.model_id).order_by(
            classes.c.created_at, classes.c.id
        )
    ).all()
    taken: set[tuple[str, str]] = set()
    final: dict[str, str] = {}
    for row in rows:
        key = key_of(row.name)
        if (row.model_id, key) in taken:
            log.warning(
                "classes %r and an older class of model %s are now the same name; "
                "the newer one's key gets its id",
                row.name,
                row.model_id,
            )
            key = f"{key} ~{row.id}"
        taken.add((row.model_id, key))
        if key != row.name_key:
            final[row.id] = key
    # Two steps so that no update meets a key another row still holds (unique per model).
    for class_id in final:
        bind.execute(
            sa.update(classes).where(classes.c.id == class_id).values(name_key=f"~{class_id}")
        )
    for class_id, key in final.items():
        bind.execute(sa.update(classes).where(classes.c.id == class_id).values(name_key=key))
    # The removal log's keys are compared with the matrix's keys: recompute them the same way.
    for removal in bind.execute(sa.select(removals.c.id, removals.c.name_key)).all():
        key = key_of(removal.name_key)
        if key != removal.name_key:
            bind.execute(
                sa.update(removals).where(removals.c.id == removal.id).values(name_key=key)
            )


def upgrade() -> None:
    rekey(nfkc_key)


def downgrade() -> None:
    rekey(nfc_key)
