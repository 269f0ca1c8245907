"""Which database errors are the database's state (retried by the consumers, 503 at the
ingress) and which are the statement's (dead letter, 500): real errors from the drivers where
they can be had here, the driver's own classes otherwise."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from notaflow.launch.broker import free_port
from notaflow.store import create_engine
from notaflow.store.db import transient_error


def test_sqlite_lock_held_by_another_writer_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()
    assert transient_error(caught.value)


def test_sqlite_statement_errors_are_not(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError) as missing:
        conn.execute("SELECT * FROM nowhere")
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert not transient_error(missing.value)
    assert not transient_error(duplicate.value)


async def test_through_sqlalchemy_the_drivers_error_decides(tmp_path: Path) -> None:
    gone = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'db.sqlite'}")
    with pytest.raises(sa.exc.OperationalError) as unreachable:
        async with gone.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    await gone.dispose()
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError) as duplicate:
        async with engine.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    await engine.dispose()
    assert transient_error(unreachable.value)
    assert not transient_error(duplicate.value)


async def test_postgresql_server_out_of_reach_is_transient() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)
    assert transient_error(refused.value)
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    # SQLAlchemy passes a refused connect through as the OSError it is; either way it counts.
    with pytest.raises((sa.exc.DBAPIError, OSError)) as wrapped:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    await engine.dispose()
    assert transient_error(wrapped.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.exceptions.DeadlockDetectedError(), True),  # 40P01
        (asyncpg.exceptions.SerializationError(), True),  # 40001
        (asyncpg.exceptions.CannotConnectNowError(), True),  # 57P03: starting up
        (asyncpg.exceptions.AdminShutdownError(), True),  # 57P01: shutting down
        (asyncpg.exceptions.TooManyConnectionsError(), True),  # 53300
        (asyncpg.exceptions.ConnectionDoesNotExistError(), True),  # 08003
        (asyncpg.exceptions.UniqueViolationError(), False),  # 23505
        (asyncpg.exceptions.UndefinedTableError(), False),  # 42P01
        (asyncpg.exceptions.CharacterNotInRepertoireError(), False),  # 22021: a NUL in text
        (ValueError("not the database's"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_postgresql_sqlstates(error: BaseException, expected: bool) -> None:
    assert transient_error(error) is expected
    # As SQLAlchemy hands them over: the driver's error as the cause of its own.
    try:
        try:
            raise error
        except BaseException as inner:
            raise sa.exc.DBAPIError("SELECT 1", None, inner) from inner  # type: ignore[arg-type]
    except sa.exc.DBAPIError as outer:
        assert transient_error(outer) is expected


async def test_a_batch_connection_waits_for_the_lock_only_in_its_thread(tmp_path: Path) -> None:
    """Inline batches never wait on a lock (busy_timeout 0, set once, not per transaction);
    the one that finds the file locked waits in the thread (30 s), and the next inline batch
    is back to not waiting."""
    from notaflow.store.documents.sqlite import BatchConnection

    path = str(tmp_path / "lock.db")
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    batch = BatchConnection(path)

    def busy(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        assert await batch.run(busy) == 0
        assert await batch.run(busy) == 0
        holder.execute("BEGIN IMMEDIATE")
        waiting = asyncio.ensure_future(batch.run(busy))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # waiting in the thread, not failing, not blocking the loop
        holder.execute("COMMIT")
        assert await waiting == 30_000
        assert await batch.run(busy) == 0
    finally:
        holder.close()
        batch.close()
