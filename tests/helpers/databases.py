"""Looking at and resetting a test database."""

from __future__ import annotations

from typing import Any


def truncate_postgres(url: str) -> None:
    """Empty every table of a migrated PostgreSQL database, keeping its schema."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE class_images, class_negative_images, classes, class_removals, api_keys, "
                "webhook_deliveries, bank_features"
            )
        )
        conn.execute(text("UPDATE class_generation SET value = 0, removals_floor = 0"))
    engine.dispose()


def database_snapshot(url: str) -> dict[str, Any]:
    """Everything a request could have changed, to compare before/after a rejected request."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        classes = conn.execute(
            text("SELECT id, name, status, attempts, updated_at FROM classes ORDER BY id")
        ).all()
        images = conn.execute(text("SELECT count(*) FROM class_images")).scalar()
        negatives = conn.execute(text("SELECT count(*) FROM class_negative_images")).scalar()
        generation = conn.execute(text("SELECT value FROM class_generation")).scalar()
    engine.dispose()
    return {
        "classes": [tuple(r) for r in classes],
        "images": images,
        "negative_images": negatives,
        "generation": generation,
    }
