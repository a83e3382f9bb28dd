"""`ClassMatrixCache.catch_up`: a request brings the class matrix up to the database's generation
before it is scored, and concurrent requests behind the same change share one sync."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from service.models import DEFAULT_TENANT
from service.scoring.matrix import scoped_key
from service.scoring.sync import ClassMatrixCache
from tests.helpers.class_vectors import insert_ready, random_matrix, remove_classes


@pytest.fixture
def factory(database_url: str) -> Any:
    from service.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_catch_up_syncs_only_when_the_database_moved(database_url: str, factory: Any) -> None:
    insert_ready(database_url, "m@1", random_matrix(10, 16))
    cache = ClassMatrixCache(factory, refresh_seconds=60)  # the refresher thread never runs
    first = cache.snapshot("m@1", 16)
    syncs = cache.syncs
    cache.catch_up("m@1", 16)
    assert cache.snapshot("m@1", 16) is first and cache.syncs == syncs

    insert_ready(database_url, "m@1", random_matrix(1, 16, seed=4), first=10)
    cache.catch_up("m@1", 16)
    assert cache.snapshot("m@1", 16).index_of(scoped_key(DEFAULT_TENANT, "class 10")) == 10
    remove_classes(factory, "class 3")
    cache.catch_up("m@1", 16)
    after = cache.snapshot("m@1", 16)
    assert after.size == 10 and after.index_of(scoped_key(DEFAULT_TENANT, "class 3")) is None
    assert cache.syncs == syncs + 2


def test_concurrent_catch_ups_behind_one_change_share_one_sync(
    database_url: str, factory: Any
) -> None:
    """16 requests that all read the new generation before any of them synced: one sync."""
    requests = 16
    insert_ready(database_url, "m@1", random_matrix(10, 16))
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    cache.snapshot("m@1", 16)
    syncs = cache.syncs
    insert_ready(database_url, "m@1", random_matrix(1, 16, seed=4), first=10)

    # Each request's generation read, once done, waits until all 16 have read: the worst case
    # for sharing, where every request finds the snapshot behind.
    all_read = threading.Barrier(requests)
    generation_read = cache._read_generation

    def read() -> int:
        generation = generation_read()
        all_read.wait(timeout=30)
        return generation

    cache._read_generation = read  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def request() -> None:
        try:
            cache.catch_up("m@1", 16)
            assert cache.snapshot("m@1", 16).index_of(scoped_key(DEFAULT_TENANT, "class 10")) == 10
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert cache.syncs == syncs + 1


@pytest.mark.postgres
def test_an_unreachable_database_is_one_log_line_per_outage(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The refresh fails every period while the database is away: one line, not a traceback per
    attempt, and one line when it is back."""
    import logging

    from sqlalchemy.engine import make_url

    from benchmarks.tcp_proxy import tcp_proxy
    from service.db import make_engine, make_session_factory

    target = make_url(postgres_database)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        through = target.set(host="127.0.0.1", port=proxy.port)
        engine = make_engine(through.render_as_string(hide_password=False))
        cache = ClassMatrixCache(make_session_factory(engine), refresh_seconds=60)
        cache.bind_model("m@1", 16)
        cache.refresh_now()
        proxy.cut()
        caplog.set_level(logging.INFO)
        for _ in range(3):
            cache.refresh_now()
        problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(problems) == 1 and "unreachable" in problems[0].getMessage(), problems
        assert "Traceback" not in caplog.text
        proxy.restore()
        cache.refresh_now()
        assert "reachable again" in caplog.text
        engine.dispose()


def test_the_raw_generation_read_raises_as_a_core_read(database_url: str, factory: Any) -> None:
    """The per-request read runs on a raw DB-API cursor; its value and its errors are what a
    Core read gives (a driver error as SQLAlchemy's DBAPIError, which the outage handling and
    the app's 503 handler recognise), and the connection goes back to the pool either way."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import select

    from service.db import raw_scalar
    from service.models import GENERATION_ROW, Generation

    engine = factory.kw["bind"]
    insert_ready(database_url, "m@1", random_matrix(2, 16))
    with engine.connect() as connection:
        expected = connection.execute(
            select(Generation.value).where(Generation.id == GENERATION_ROW)
        ).scalar()
    assert (
        expected and raw_scalar(engine, ClassMatrixCache(factory, 60)._generation_sql) == expected
    )
    with pytest.raises(sa_exc.DBAPIError) as raised:
        raw_scalar(engine, "SELECT value FROM no_such_table")
    assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize("lost", [True, False])
def test_the_generation_read_tries_once_more_only_after_a_lost_connection(
    monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    """Its engine does not pre-ping: a connection that died since its last use shows as the read
    failing, and one more read on a fresh connection answers; any other error is raised."""
    import sqlite3

    from sqlalchemy import exc as sa_exc

    from service import db

    calls: list[str] = []

    def flaky(_engine: Any, sql: str) -> int:
        calls.append(sql)
        if len(calls) == 1:
            raise sa_exc.DBAPIError.instance(
                sql,
                None,
                sqlite3.OperationalError("gone"),
                sqlite3.Error,
                connection_invalidated=lost,
            )
        return 7

    monkeypatch.setattr(db, "_raw_scalar", flaky)
    if lost:
        assert db.raw_scalar(None, "SELECT 7") == 7  # type: ignore[arg-type]
        assert calls == ["SELECT 7", "SELECT 7"]
    else:
        with pytest.raises(sa_exc.OperationalError):
            db.raw_scalar(None, "SELECT 7")  # type: ignore[arg-type]
        assert calls == ["SELECT 7"]
