"""PostgreSQL's pool without SQLAlchemy's round-trip pre-ping: a pooled connection the server
closed (a restart, a failover, `pg_terminate_backend`) is noticed by the driver and replaced
at checkout, so neither SQLAlchemy statements nor the group batches on the driver see it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import sqlalchemy as sa

from notaflow.store import DeliveryStore, HookStore, create_engine, migrate
from testkit.postgres import ThrowawayPostgres


@pytest.fixture
def url(postgres: ThrowawayPostgres) -> str:
    return postgres.create_database(f"liveness_{uuid.uuid4().hex[:8]}")


async def test_connections_the_server_closed_are_replaced_without_a_ping(url: str) -> None:
    engine = create_engine(url, pool_size=3, max_overflow=0)
    assert not engine.pool._pre_ping  # what is under test is the local check, not the ping
    await migrate(engine)
    deliveries, hooks = DeliveryStore(engine), HookStore(engine)
    try:
        # fill the pool with three live connections and remember their server processes
        conns = [await engine.connect() for _ in range(3)]
        pids = {await c.scalar(sa.text("SELECT pg_backend_pid()")) for c in conns}
        for c in conns:
            await c.close()
        assert len(pids) == 3

        killer = await asyncpg.connect(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            ended = await killer.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p) t",
                list(pids),
            )
        finally:
            await killer.close()
        assert ended == 3
        await asyncio.sleep(0.2)  # the driver reads the server's goodbye on the event loop

        async with engine.connect() as conn:
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
        assert pid not in pids
        # the batches on the driver check out through the same pool
        made, ours = await deliveries.ensure_locked("acme", 1, "email", "k", "a@b.co", {}, 60)
        assert ours
        await deliveries.record(made.id, True, 250, "ok", "smtp", None)
        assert await hooks.matching("acme", "nfse", "1" * 14) == []
        again = await deliveries.by_key("k")
        assert again is not None and again.status == "sent"
    finally:
        deliveries.close()
        hooks.close()
        await engine.dispose()
