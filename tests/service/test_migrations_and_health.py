"""Migrations produce exactly the models' schema; health, readiness, metrics, docs."""

from __future__ import annotations

from typing import Any

import numpy as np
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from service.models import Base


def test_upgrade_head_matches_the_models(database_url: str) -> None:
    # database_url is an empty database brought to head by `liteembed migrate` (alembic upgrade).
    engine = create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
        counter = conn.execute(text("SELECT value, removals_floor FROM class_generation")).all()
        assert [tuple(row) for row in counter] == [(0, 0)]
    engine.dispose()


def test_upgrading_a_database_in_use_keeps_its_classes(tmp_path: Any) -> None:
    """0001 -> head on a database with a class and a generation: both survive, and the new
    removal log works; downgrading back to 0001 works too."""
    from alembic import command

    from service.crud import remove_class
    from service.db import alembic_config, make_engine, make_session_factory, session_scope
    from service.models import DEFAULT_TENANT, ClassRemoval, PersonalizedClass
    from service.scoring.matrix import scoped_key
    from service.scoring.sync import build_matrix

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE class_generation SET value = 41"))
        conn.execute(
            text(
                "INSERT INTO classes (id, name, name_key, model_id, status, progress, attempts,"
                " hints, confusers, created_at, updated_at) VALUES ('c1', 'Tea', 'tea', 'm',"
                " 'ready', 1.0, 1, '[]', '[]', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
            )
        )
        # Two names that were distinct under the old key (NFC + casefold) and are one name
        # under the new one (NFKC): the older keeps the key, the newer stays, keyed apart.
        for class_id, name, key, day in (
            ("c2", "ＡＢＣ１", "ａｂｃ１", "02"),
            ("c3", "abc1", "abc1", "03"),
        ):
            conn.execute(
                text(
                    "INSERT INTO classes (id, name, name_key, model_id, status, progress,"
                    " attempts, hints, confusers, created_at, updated_at) VALUES (:id, :name,"
                    " :key, 'm', 'ready', 1.0, 1, '[]', '[]', :at, :at)"
                ),
                {"id": class_id, "name": name, "key": key, "at": f"2026-11-{day} 00:00:00"},
            )
    engine.dispose()
    command.upgrade(config, "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT id, name_key FROM classes")).all())
    engine.dispose()
    assert keys == {"c1": "tea", "c2": "abc1", "c3": "abc1 ~c3"}
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        row = session.get(PersonalizedClass, "c1")
        assert row is not None and row.name == "Tea" and row.tenant == DEFAULT_TENANT
        # Still classifiable: the class matrix finds it in the default tenant.
        row.embedding = np.ones(4, dtype=np.float32).tobytes()
    with session_scope(make_session_factory(engine)) as session:
        matrix = build_matrix(session, "m", 4)
        assert matrix.ids[matrix.index_of(scoped_key(DEFAULT_TENANT, "tea"))] == "c1"
        assert "c1" in {matrix.ids[int(i)] for i in matrix.tenant_rows(DEFAULT_TENANT)}
        row = session.get(PersonalizedClass, "c1")
        remove_class(session=session, row=row)
    with session_scope(make_session_factory(engine)) as session:
        removal = session.query(ClassRemoval).one()
        assert (removal.class_id, removal.name_key, removal.generation) == ("c1", "tea", 42)
    engine.dispose()
    command.downgrade(config, "0002")
    engine = create_engine(url)
    with engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT id, name_key FROM classes")).all())
    engine.dispose()
    assert keys == {"c2": "ａｂｃ１", "c3": "abc1"}  # c1 was removed above
    command.downgrade(config, "0001")


def test_health_ready_metrics_docs(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"]["model"] == "liteembed-tiny@random-0"
    assert ready["checks"]["database"] and ready["checks"]["broker"] and ready["checks"]["worker"]
    client.get("/v1/classes/nope")
    metrics = client.get("/metrics").text
    assert 'liteembed_http_requests_total{method="GET",route="/v1/classes/{class_id}"' in metrics
    assert "liteembed_http_request_duration_seconds_bucket" in metrics
    assert 'liteembed_classes{status="queued"} 0.0' in metrics
    assert "liteembed_queue_depth 0.0" in metrics
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classes", "/v1/classes/{class_id}", "/v1/classify"} <= set(paths)
