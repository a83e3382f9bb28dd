"""Database engine, sessions and schema migrations for SQLite (the default) and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.outage import OutageLog

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10


def make_engine(url: str, *, for_reads: bool = False) -> Engine:
    """The engine of `url`. `for_reads`: for the one-statement read every request makes
    (`raw_scalar`): autocommit (no transaction to end, on PostgreSQL no ROLLBACK round trip
    when the connection goes back) and no pre-ping (another statement, and on PostgreSQL another
    round trip, per read): a lost connection shows as the read failing, and `raw_scalar` tries
    once more on a fresh one."""
    kwargs: dict[str, Any] = {"pool_pre_ping": not for_reads}
    if for_reads:
        kwargs.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    if url.startswith("sqlite"):
        # The API threads and the embedded worker thread share one file.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif url.startswith("postgresql") and "connect_timeout" not in url:
        # An unreachable host (rather than a refused port) would hold each request for the OS's
        # TCP timeout, minutes; a bounded wait turns it into a prompt 503. A URL's own
        # ?connect_timeout= wins.
        kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while the worker writes; busy_timeout makes a writer wait for
    # the lock instead of failing with "database is locked"; foreign keys cascade image rows.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def watch_outages(engine: Engine) -> OutageLog:
    """The engine's outage log: requests report failures to it (`is_unavailable`), and any
    connection handed out by the pool (after its pre-ping) ends the outage."""
    outage = OutageLog("database", log, meanwhile="answering 503 until it is back")
    event.listen(engine, "checkout", lambda *_: outage.succeeded())
    return outage


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be used right now (down, unreachable, connection
    lost, pool exhausted) rather than that a statement was wrong."""
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(exc, sa_exc.TimeoutError)


def raw_scalar(engine: Engine, sql: str) -> Any:
    """The first column of the first row of `sql` (a statement without parameters), read on a
    raw pooled DB-API cursor: a third of a Core read's cost (no Connection, Result or Row
    objects), for a read made on every request. The driver's errors, connecting or reading,
    are raised as SQLAlchemy's (`DBAPIError`, as a Core read raises them); a connection found
    lost is dropped and the read tried once more on a fresh one (an engine `for_reads` does not
    pre-ping)."""
    try:
        return _raw_scalar(engine, sql)
    except sa_exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return _raw_scalar(engine, sql)


def _raw_scalar(engine: Engine, sql: str) -> Any:
    driver_error = engine.dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except driver_error as exc:
        raise sa_exc.DBAPIError.instance(None, None, exc, driver_error) from exc
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql)
            row = cursor.fetchone()
        finally:
            cursor.close()
    except driver_error as exc:
        lost = engine.dialect.is_disconnect(exc, connection.dbapi_connection, None)
        if lost:
            connection.invalidate(exc)
        raise sa_exc.DBAPIError.instance(
            sql, None, exc, driver_error, connection_invalidated=lost
        ) from exc
    finally:
        connection.close()
    return row[0] if row else None


def close_quietly(session: Session) -> None:
    """Close a request's session even when the database went away meanwhile: closing rolls back
    over the connection, which may fail after the answer was sent (too late to change it). The
    pool drops that connection; any other error still raises."""
    try:
        session.close()
    except sa_exc.DBAPIError as exc:
        if not is_unavailable(exc):
            raise


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrations_dir() -> Path:
    """The Alembic scripts: next to the source in a checkout, else in the working directory
    (the container image copies them to its work dir)."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (base / "migrations" / "env.py").is_file():
            return base / "migrations"
    raise SystemExit("liteembed: cannot find the migrations/ directory")


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration for `database_url`, with no alembic.ini needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    if database_url.startswith("sqlite"):
        sqlite_parent(database_url).mkdir(parents=True, exist_ok=True)
    return config


def migrate(settings: Settings) -> None:
    """Bring the schema up to date (`alembic upgrade head`)."""
    from alembic import command

    command.upgrade(alembic_config(settings.database_url), "head")
    log.info("database schema is up to date")


def sqlite_parent(url: str) -> Path:
    """The directory an SQLite URL's file lives in (created before the first migration)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database).expanduser().resolve().parent if database else Path.cwd()


@lru_cache(maxsize=1)
def _migration_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(the head revisions, every revision) of this version's migrations."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(config)
    known = frozenset(revision.revision for revision in script.walk_revisions())
    return frozenset(script.get_heads()), known


class SchemaCheck:
    """Is the database's schema at this version's migration head?

    Asked until the answer is yes, then remembered: a running service's schema does not go back
    (a newer version's migration is additive), so /readyz stays one cheap query."""

    def __init__(self) -> None:
        self._at_head = False

    def problem(self, session: Session) -> str | None:
        """None when at head, else what is wrong and what to run."""
        if self._at_head:
            return None
        from alembic.migration import MigrationContext

        heads, known = _migration_revisions()
        current = set(MigrationContext.configure(session.connection()).get_current_heads())
        if current == heads:
            self._at_head = True
            return None
        if not current:
            return "the database has no schema: run `liteembed migrate`"
        at = ", ".join(sorted(current))
        if current - known:
            return (
                f"the database schema is at revision {at}, which this version does not know "
                "(migrated by a newer one?)"
            )
        return (
            f"the database schema is at revision {at}, not {', '.join(sorted(heads))}: "
            "run `liteembed migrate`"
        )
