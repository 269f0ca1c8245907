"""Engine creation and migrations: one code path for SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from notaflow.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"


# SQLSTATE classes worth another try: connection exceptions (08), transaction rollbacks such as
# serialization failures and deadlocks (40), insufficient resources such as too many
# connections (53), and the server shutting down or starting up (57P01-57P03).
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57P01", "57P02", "57P03")
# SQLite's words for another writer holding the file, or the file being unreachable for now.
_TRANSIENT_SQLITE = ("locked", "busy", "unable to open", "disk i/o")


def transient_error(exc: BaseException) -> bool:
    """Whether a database error is the database's state rather than the statement's: the
    server unreachable, restarting or out of connections, a deadlock, a lock held by another
    writer. Those are retried (consumers) or answered 503 (ingress); anything else (a
    constraint, bad data, a missing table) is not, since another try fails the same way.

    Walks the chain of causes: SQLAlchemy wraps the driver's error (`orig`), asyncpg's come
    wrapped once more by SQLAlchemy's adapter."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, OSError):  # refused, reset, timed out: all OSErrors
            return True
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        if isinstance(err, sqlite3.OperationalError) and any(
            word in str(err).lower() for word in _TRANSIENT_SQLITE
        ):
            return True
        todo += [getattr(err, "orig", None), err.__cause__, err.__context__]
    return False


def async_url(url: str) -> str:
    """Accept the URLs operators write (`postgresql://`, `sqlite:///x.db`) and pick the async
    driver this project ships with."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ConfigurationError(f"unsupported database URL {parsed.drivername!r}")


# Pool options only a server database takes; SQLite's engine keeps its own pool.
_POOL_OPTIONS = ("pool_size", "max_overflow", "pool_timeout")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """`kwargs` go to SQLAlchemy; `Settings.database_options()` gives the pool size, overflow,
    timeout and the PgBouncer connect arguments (ignored for SQLite)."""
    # hide_parameters: SQLAlchemy's errors otherwise carry `[parameters: ...]`, the values of
    # the failed statement (invoice-link tokens, e-mail addresses), into log lines and the
    # dead-letter header `dlq_error` (issue 19).
    url = async_url(url)
    if url.startswith("sqlite"):
        kwargs = {k: v for k, v in kwargs.items() if k not in _POOL_OPTIONS}
        kwargs.pop("connect_args", None)
        # Several processes (ingress, consumers) share the file: WAL lets readers run beside
        # the writer, and busy_timeout makes a writer wait instead of failing at once.
        # The pool's bound is SQLAlchemy's default (5 + 10 overflow), but all 15 are kept: an
        # overflow connection is closed when it is given back, and a consumer with hundreds of
        # records in flight opened and closed one (a thread, the file, the schema, the pragmas)
        # for most statements, which cost more CPU than the statements.
        if sa.engine.make_url(url).database not in (None, "", ":memory:"):
            # (an in-memory database has one connection, on SQLAlchemy's StaticPool)
            kwargs = {"pool_size": 15, "max_overflow": 0, **kwargs}
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs
        )

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    options: dict[str, Any] = {
        "pool_size": 10,
        "max_overflow": 20,
        # No round-trip pre-ping (see _drop_closed_connections): a connection is not kept
        # longer than this, so a server or proxy that cuts long-lived ones never gets to.
        "pool_recycle": POOL_RECYCLE_SECONDS,
        "hide_parameters": True,
    }
    engine = create_async_engine(url, **(options | kwargs))
    if not engine.pool._pre_ping:  # a caller asking for SQLAlchemy's pre-ping gets it alone
        _drop_closed_connections(engine)
    return engine


POOL_RECYCLE_SECONDS = 1800


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """Check out only connections the driver still holds open, without a round trip.

    SQLAlchemy's `pool_pre_ping` is `BEGIN`, `;`, `ROLLBACK` on the server at every checkout:
    14 % of the notification consumer's main thread on PostgreSQL, for every statement or
    batch. What it guards against is a pooled connection the server has closed (a restart, a
    failover, `pg_terminate_backend`, an idle timeout): the server then ends the session and
    closes the socket, and asyncpg, which reads it on the event loop, marks the connection
    closed (`is_closed()`) by itself. So this asks asyncpg, locally, and a closed connection
    is replaced before use (raising DisconnectionError here makes the pool discard it and
    check out another, as SQLAlchemy's documentation describes for custom pings). What that
    cannot see, a connection whose peer vanished without closing it, would have made the
    pre-ping wait too; its first statement fails, SQLAlchemy invalidates the pool on a
    disconnect error, and callers retry transient errors (consumers) or answer 503 with
    Retry-After (ingress), as during any outage."""

    @sa.event.listens_for(engine.sync_engine, "checkout")
    def _check(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise sa.exc.DisconnectionError("the server closed this pooled connection")


def _alembic_config(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (safe to run from several processes on
    PostgreSQL: Alembic's version table update is transactional)."""
    async with engine.begin() as conn:
        await _run(conn, lambda c: command.upgrade(_alembic_config(c), "head"))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:

        def _rev(c: sa.Connection) -> str | None:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(c).get_current_revision()

        return await conn.run_sync(_rev)


async def _run(conn: AsyncConnection, fn: Any) -> None:
    await conn.run_sync(fn)
