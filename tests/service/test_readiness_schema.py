"""Ready means ready: against a database whose schema is not at the migrations' head, /readyz is
503 and says to run `liteembed migrate`; once migrated it is 200, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from service.core.config import Settings
from service.runtime import RuntimeHolder
from tests.fixtures.databases import migrate_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("empty_postgres"))


@pytest.fixture
def start_app(shared_runtime: RuntimeHolder) -> Iterator[Callable[[Settings], Any]]:
    """The app on `settings`, once its model is loaded; unlike `make_client`, it does not wait
    for a 200 from /readyz."""
    from fastapi.testclient import TestClient

    from workers import create_app_with_worker

    clients: list[TestClient] = []

    def start(settings: Settings) -> TestClient:
        app = create_app_with_worker(settings)
        app.state.runtime = shared_runtime
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        client.__exit__(None, None, None)


def readyz_once_settled(client: Any) -> Any:
    """/readyz once everything but the schema has had time to come up."""
    deadline = time.monotonic() + 30
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or "schema" in response.json()["checks"]:
            return response
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.05)


def test_readyz_is_503_until_the_schema_is_at_head(
    empty_database: str, make_settings: Callable[..., Settings], start_app: Any
) -> None:
    client = start_app(make_settings(empty_database))
    response = readyz_once_settled(client)
    assert response.status_code == 503, response.json()
    body = response.json()
    assert body["checks"]["database"] is True and body["checks"]["schema"] is False
    assert "no schema" in body["detail"] and "liteembed migrate" in body["detail"], body
    # The class routes are what this protects: they cannot work on this database.
    assert client.get("/v1/classes").status_code >= 500

    migrate_url(empty_database)
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"]["schema"] is True
    assert client.get("/v1/classes").status_code == 200


def test_readyz_names_an_old_revision(
    tmp_path: Path, make_settings: Callable[..., Settings], start_app: Any
) -> None:
    from alembic import command

    from service.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    body = readyz_once_settled(start_app(make_settings(url))).json()
    assert body["checks"]["schema"] is False
    assert "at revision 0001" in body["detail"] and "liteembed migrate" in body["detail"], body


def test_at_head_is_remembered(sqlite_url: str, make_settings: Any, start_app: Any) -> None:
    """Once at head, /readyz does not look again: its database check stays one cheap query."""
    client = start_app(make_settings(sqlite_url))
    assert readyz_once_settled(client).status_code == 200
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    engine.dispose()
    assert client.get("/readyz").status_code == 200
