"""Fixtures for the service, worker and end-to-end tests.

PostgreSQL and Redis come from LITEEMBED_TEST_POSTGRES_URL / LITEEMBED_TEST_REDIS_URL. Unset,
their tests are skipped with the reason; with LITEEMBED_TEST_REQUIRE_SERVICES=1 (CI) they fail
instead. Each session gets its own PostgreSQL database and its own Redis key namespace, and
removes them at the end; nothing else on those servers is touched.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import class_images, image_bytes, truncate_postgres

from service.core.config import Settings

POSTGRES_ENV = "LITEEMBED_TEST_POSTGRES_URL"
REDIS_ENV = "LITEEMBED_TEST_REDIS_URL"
REQUIRE_ENV = "LITEEMBED_TEST_REQUIRE_SERVICES"

# Few optimisation steps: the tests check the plumbing, the benchmarks check the method.
TEST_TRAIN_STEPS = 60


def service_url(env: str, what: str) -> str:
    url = os.environ.get(env)
    if url:
        return url
    reason = f"{what} tests need {env} (e.g. {_EXAMPLES[env]})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping")
    pytest.skip(reason)


_EXAMPLES = {
    POSTGRES_ENV: "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    REDIS_ENV: "redis://127.0.0.1:6379/0",
}


# --- settings and databases ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(pytestconfig: pytest.Config) -> Path:
    # Kept between sessions (git-ignored): building a vocabulary cache costs seconds, and the
    # engine rebuilds a stale or corrupt one by itself.
    path = pytestconfig.rootpath / ".liteembed-cache" / "tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_settings(database_url: str, cache_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": None,
        "model": "liteembed-tiny",
        "pretrained": "random",
        "device": "cpu",
        "cache_dir": cache_dir,
        "seed": 0,
        "train_steps": TEST_TRAIN_STEPS,
        "admin_keys": [],
        "client_keys": [],
        "heartbeat_seconds": 0.2,
        "stale_after_seconds": 5.0,
        "queued_resend_seconds": 5.0,
        "reconcile_interval_seconds": 0.5,
        "classifier_refresh_seconds": 0.2,
        "max_images": 8,
        "max_image_bytes": 200_000,
        "max_request_bytes": 1_000_000,
        "max_image_pixels": 1_000_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def make_settings(cache_dir: Path) -> Callable[..., Settings]:
    def make(database_url: str, **overrides: Any) -> Settings:
        return build_settings(database_url, cache_dir, **overrides)

    return make


def _migrate(url: str) -> None:
    from service.db import migrate

    migrate(Settings(_env_file=None, database_url=url))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return service_url(POSTGRES_ENV, "PostgreSQL")


@pytest.fixture(scope="session")
def postgres_database(postgres_server_url: str) -> Iterator[str]:
    """A fresh database for this session, migrated, dropped at the end."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"liteembed_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the server is configured but not reachable
        admin.dispose()
        pytest.fail(f"cannot create a test database on {postgres_server_url}: {exc}")
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """Each test runs against SQLite and against PostgreSQL, on an empty migrated schema."""
    if request.param == "sqlite":
        path = tmp_path / "liteembed.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    truncate_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "liteembed.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


# --- the model, shared ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_runtime(make_settings: Callable[..., Settings]) -> Any:
    """One loaded tiny model for all in-process tests (every app would load the same weights)."""
    pytest.importorskip("liteembed.backend", reason="the engine (liteembed/) is not installed")
    from service.runtime import RuntimeHolder

    holder = RuntimeHolder(make_settings("sqlite://"))
    holder.get()
    return holder


# --- apps and clients ----------------------------------------------------------------------------


@pytest.fixture
def make_client(shared_runtime: Any) -> Iterator[Callable[..., Any]]:
    """Start the app (embedded worker unless a Redis URL is set) and return a TestClient."""
    from fastapi.testclient import TestClient

    from workers.embedded import create_app_with_worker

    clients: list[TestClient] = []

    def make(settings: Settings, *, headers: dict[str, str] | None = None) -> TestClient:
        app = create_app_with_worker(settings)
        app.state.runtime = shared_runtime
        client = TestClient(app, headers=headers or {})
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def settings(database_url: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def client(settings: Settings, make_client: Callable[..., Any]) -> Any:
    return make_client(settings)


# --- images --------------------------------------------------------------------------------------


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return image_bytes


@pytest.fixture
def make_class_images() -> Callable[..., list[tuple[str, Any]]]:
    return class_images


# --- waiting and looking at the database ---------------------------------------------------------


def wait_for_status(
    client: Any, class_id: str, wanted: set[str], timeout: float = 60.0, headers: Any = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/classes/{class_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted:
            return body
        time.sleep(0.1)
    raise AssertionError(f"class {class_id} never reached {wanted}; last: {body}")


@pytest.fixture
def wait_status() -> Callable[..., dict[str, Any]]:
    return wait_for_status


def database_snapshot(url: str) -> dict[str, Any]:
    """Everything a request could have changed, to compare before/after a rejected request."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        classes = conn.execute(
            text("SELECT id, name, status, attempts, updated_at FROM classes ORDER BY id")
        ).all()
        images = conn.execute(text("SELECT count(*) FROM class_images")).scalar()
        generation = conn.execute(text("SELECT value FROM class_generation")).scalar()
    engine.dispose()
    return {"classes": [tuple(r) for r in classes], "images": images, "generation": generation}


@pytest.fixture
def db_snapshot() -> Callable[[str], dict[str, Any]]:
    return database_snapshot


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    return service_url(REDIS_ENV, "Redis")


@pytest.fixture
def redis_namespace(redis_server_url: str) -> Iterator[str]:
    """A key namespace of our own on the shared server; its keys are deleted afterwards."""
    import redis

    namespace = f"liteembed-test-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis at {redis_server_url} is configured but not reachable: {exc}")
    yield namespace
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
