"""Migrations produce exactly the models' schema; health, readiness, metrics, docs."""

from __future__ import annotations

from typing import Any

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
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        assert conn.execute(text("SELECT value FROM class_generation WHERE id = 1")).scalar() == 0
    engine.dispose()


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
