"""Hooks failing most deliveries for 7 days are disabled (Focus), on both databases: the
notification consumer (real stores, real `WebhookSender`, real HTTP receivers on 127.0.0.1)
disables a hook after the failed attempt that tips it, gives its pending deliveries up without
a request, and fires it no more; the Focus routes (the ingress app, in process) still list it
with `"disabled": true` and no longer count it toward the limit of 5.

Nobody waits 7 days: the week's history is written through the real stores, then moved back in
time (attempt times and the delivery's `updated_at`, as if they had happened then).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
from notaflow.consumers.providers.webhooks import WebhookSender
from notaflow.envelope import Event
from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.intake import Intake
from notaflow.metrics import Metrics
from notaflow.replies import ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import (
    DeliveryStore,
    Document,
    DocumentStore,
    HookStore,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.store.clock import as_utc
from notaflow.store.db import _alembic_config, current_revision
from notaflow.store.deliveries import FAILED, PENDING
from notaflow.store.hooks import _recent_attempts
from notaflow.store.schema_check import head_revision
from notaflow.store.tables import deliveries, delivery_attempts, hooks
from testkit.receiver import Receiver, ReceiverServer

CNPJ = "51916585000125"
DAY = timedelta(days=1)
RETRY = 0.2  # the hook retry schedule here: one retry, 0.2 s later


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Receiver, Receiver]]:
    down, up = ReceiverServer(), ReceiverServer()
    yield down.start(), up.start()
    down.stop()
    up.stop()


@dataclass
class World:
    engine: AsyncEngine
    documents: DocumentStore
    hooks: HookStore
    deliveries: DeliveryStore
    consumer: NotificationConsumer
    http: httpx.AsyncClient
    down: Receiver  # answers 500 to everything
    up: Receiver
    clock: list[datetime]  # what the consumer's clock answers, when set
    metrics: Metrics

    async def create_hook(self, url: str, cnpj: str | None = CNPJ) -> httpx.Response:
        body = {"event": "nfse", "url": url, **({"cnpj": cnpj} if cnpj else {})}
        return await self.http.post("/v2/hooks", json=body)

    async def document(self) -> Document:
        ref = uuid.uuid4().hex[:12]
        claim = await self.documents.claim(
            "acme", "nfse", ref, CNPJ, {"ref": ref}, uuid.uuid4().hex, "test"
        )
        doc = await self.documents.by_id(claim.document_id)
        assert doc is not None
        return doc

    async def authorized(self, doc: Document) -> None:
        """What the notification consumer gets when the prefeitura authorizes `doc`."""
        data = {"tenant": "acme", "kind": "nfse", "id": doc.id, "ref": doc.ref}
        await self.consumer.on_status(
            Event(type=t.NFSE_STATUS, source="test", data={**data, "status": "autorizado"})
        )

    async def past_delivery(self, hook_id: str, age: timedelta, ok: bool, **kw: Any) -> int:
        """A delivery of `hook_id` attempted once, `age` ago: written by the real store, then
        moved back in time."""
        doc = await self.document()
        delivery = await self.deliveries.ensure(
            kw.get("tenant", "acme"), doc.id, kw.get("channel", "webhook"),
            f"hook:{uuid.uuid4()}:{hook_id}", hook_id, {"body": {"ref": doc.ref}},
        )  # fmt: skip
        code, message = (200, "ok") if ok else (500, "HTTP 500")
        await self.deliveries.record(delivery.id, ok, code, message, "127.0.0.1", None)
        at = datetime.now(UTC) - age
        async with self.engine.begin() as conn:
            await conn.execute(
                delivery_attempts.update()
                .where(delivery_attempts.c.delivery_id == delivery.id)
                .values(at=at)
            )
            await conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery.id)
                .values(created_at=at, updated_at=at)
            )
        return delivery.id

    async def created_ago(self, hook_id: str, age: timedelta) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                hooks.update()
                .where(hooks.c.id == hook_id)
                .values(created_at=datetime.now(UTC) - age)
            )

    async def deliveries_of(self, hook_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.target == hook_id)
                .order_by(deliveries.c.id)
            )
            return [dict(r._mapping) for r in rows]


@pytest.fixture
async def world(database_url: str, servers: tuple[Receiver, Receiver]) -> AsyncIterator[World]:
    down, up = servers
    down.reset()
    up.reset()
    down.fail(1000, status=500)
    engine = create_engine(database_url)
    await migrate(engine)
    tenants = TenantStore(engine)
    token = await tenants.create("acme", "ACME", [CNPJ])
    await tenants.create("other", "Other", [CNPJ])
    settings = Settings(database_url=database_url, hooks_allow_private=True)  # loopback receivers
    bus = Bus(settings)  # never started: nothing here publishes
    topics = t.Topics(settings.kafka_topic_prefix)
    documents = DocumentStore(engine)
    store = HookStore(engine)
    deps = IngressDeps(
        settings=settings, engine=engine, bus=bus, documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands, topics.lifecycle),
        nfce_intake=Intake(documents, bus, topics.nfce_commands, topics.lifecycle),
        tenants=tenants, tenant_cache=TenantCache(tenants), topics=topics,
        hooks=store, waiters=ReplyWaiters(),
    )  # fmt: skip
    clock: list[datetime] = []
    async with WebhookSender(allow_private=True, timeout=5) as sender:
        metrics = Metrics(CollectorRegistry())
        consumer = NotificationConsumer(
            documents, tenants, store, DeliveryStore(engine), None, sender, bus, topics,
            NotificationSettings(public_url="http://notaflow.test", hook_schedule=(RETRY,)),
            metrics=metrics,
            clock=lambda: clock[0] if clock else datetime.now(UTC),
        )  # fmt: skip
        transport = httpx.ASGITransport(app=create_app(deps, manage_resources=False))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", auth=(token, "")
        ) as http:
            yield World(
                engine,
                documents,
                store,
                DeliveryStore(engine),
                consumer,
                http,
                down,
                up,
                clock,
                metrics,
            )
    documents.close()
    await engine.dispose()


# -- end to end ------------------------------------------------------------------------------


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == "notaflow.consumers.notification" and r.levelno >= logging.WARNING
    ]  # fmt: skip


async def test_a_failing_hook_is_disabled_given_up_and_still_listed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    failing = (await world.create_hook(world.down.url("/down"))).json()
    healthy = (await world.create_hook(world.up.url("/up"), cnpj=None)).json()  # token-wide
    await world.created_ago(failing["id"], 8 * DAY)
    # The week so far: failed 6.5 days ago, got through 4 days ago, failed 2 days ago. Most
    # deliveries failed, but not in the last day: healthy still.
    for age, ok in [(6.5 * DAY, False), (4 * DAY, True), (2 * DAY, False)]:
        await world.past_delivery(failing["id"], age, ok)
    assert not await world.hooks.disable_if_failing("acme", failing["id"], datetime.now(UTC))

    # A note is authorized: both hooks fire, the failing one answers 500 and tips over.
    caplog.set_level(logging.WARNING, logger="notaflow.consumers.notification")
    await world.authorized(await world.document())
    assert len(world.down.seen) == len(world.up.seen) == 1
    hook = await world.hooks.get("acme", failing["id"])
    assert hook is not None and hook.disabled and not hook.deleted
    [warning] = warnings(caplog)
    assert failing["id"] in warning.getMessage() and "acme" in warning.getMessage()
    tipping = (await world.deliveries_of(failing["id"]))[-1]
    assert (tipping["status"], tipping["attempts"]) == (PENDING, 1)  # its retry is due soon

    # The retry comes due: given up like a deleted hook's, without a request.
    await asyncio.sleep(RETRY * 1.1 + 0.05)
    due = await world.deliveries.due()
    assert [d.id for d in due] == [tipping["id"]]
    assert await world.consumer.attempt(due[0]) is not None
    assert len(world.down.seen) == 1
    tipping = (await world.deliveries_of(failing["id"]))[-1]
    assert (tipping["status"], tipping["last_error"]) == (FAILED, "gatilho desativado")
    last = (await world.deliveries.attempts(tipping["id"]))[-1]
    assert (last["ok"], last["code"], last["message"], last["host"]) == (
        False, None, "gatilho desativado", ""
    )  # fmt: skip
    assert warnings(caplog) == [warning]  # disabled once
    assert world.metrics.registry.get_sample_value("notaflow_hooks_disabled_total") == 1

    # The next note goes to the healthy hook only: no delivery is even created for the other.
    before = len(await world.deliveries_of(failing["id"]))
    await world.authorized(await world.document())
    assert len(await world.deliveries_of(failing["id"])) == before
    assert (len(world.down.seen), len(world.up.seen)) == (1, 2)

    # The client still sees the hook, and why deliveries stopped.
    listed = (await world.http.get("/v2/hooks")).json()
    assert [h["id"] for h in listed] == [failing["id"], healthy["id"]]
    assert listed[0] == {**failing, "disabled": True}
    assert list(listed[0]) == [*failing, "disabled"]  # Focus's keys, in Focus's order, then ours
    assert "disabled" not in listed[1]
    one = await world.http.get(f"/v2/hooks/{failing['id']}")
    assert (one.status_code, one.json()) == (200, listed[0])


async def test_a_disabled_hook_does_not_count_toward_the_limit(world: World) -> None:
    first = (await world.create_hook(world.down.url("/0"))).json()
    await world.created_ago(first["id"], 8 * DAY)
    await world.past_delivery(first["id"], 6.5 * DAY, ok=False)
    await world.past_delivery(first["id"], 0.5 * DAY, ok=False)
    assert await world.hooks.disable_if_failing("acme", first["id"], datetime.now(UTC))

    more = [await world.create_hook(world.down.url(f"/{i}")) for i in range(1, 6)]
    assert [r.status_code for r in more] == [200, 200, 200, 200, 200]  # 6 hooks, 5 enabled
    refused = await world.create_hook(world.down.url("/6"))
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "codigo": "requisicao_invalida",
            "mensagem": "Limite de 5 gatilhos por empresa e evento atingido",
        },
    )
    assert len((await world.http.get("/v2/hooks")).json()) == 6
    # A disabled hook can still be deleted; it is then both.
    deleted = (await world.http.delete(f"/v2/hooks/{first['id']}")).json()
    assert (deleted["deleted"], deleted["disabled"]) == (True, True)
    assert len((await world.http.get("/v2/hooks")).json()) == 5


async def test_the_consumer_judges_by_its_clock(world: World) -> None:
    hook = (await world.create_hook(world.down.url("/late"))).json()
    await world.created_ago(hook["id"], 8 * DAY)
    await world.past_delivery(hook["id"], 5.5 * DAY, ok=False)
    # Now, the oldest failure is 5.5 days old: not a week of failures yet.
    await world.authorized(await world.document())
    disabled = await world.hooks.get("acme", hook["id"])
    assert disabled is not None and not disabled.disabled
    # Judged 18 hours later, the same failure is more than 6 days old and the failure just
    # recorded still in the last day.
    world.clock.append(datetime.now(UTC) + timedelta(hours=18))
    await world.authorized(await world.document())
    disabled = await world.hooks.get("acme", hook["id"])
    assert disabled is not None and disabled.disabled
    async with world.engine.connect() as conn:
        at = await conn.scalar(sa.select(hooks.c.disabled_at).where(hooks.c.id == hook["id"]))
    assert abs(as_utc(at) - world.clock[0]) < timedelta(seconds=1)


# -- the store -------------------------------------------------------------------------------


async def test_only_one_of_two_racing_checks_disables(world: World) -> None:
    hook = (await world.create_hook(world.down.url("/race"))).json()
    await world.created_ago(hook["id"], 8 * DAY)
    await world.past_delivery(hook["id"], 6.5 * DAY, ok=False)
    await world.past_delivery(hook["id"], 0.5 * DAY, ok=False)
    other = HookStore(world.engine)
    now = datetime.now(UTC)
    verdicts = await asyncio.gather(
        world.hooks.disable_if_failing("acme", hook["id"], now),
        other.disable_if_failing("acme", hook["id"], now + timedelta(seconds=1)),
    )
    assert sorted(verdicts) == [False, True]
    assert not await world.hooks.disable_if_failing("acme", hook["id"], now)  # already


async def test_what_the_check_counts(world: World) -> None:
    hook = (await world.create_hook(world.down.url("/counted"))).json()
    hook_id = hook["id"]
    await world.created_ago(hook_id, 8 * DAY)
    await world.past_delivery(hook_id, 6.5 * DAY, ok=False)
    now = datetime.now(UTC)
    # The last day's failures of another tenant's delivery, and of an e-mail, whose target
    # happen to be this hook's id: not this hook's.
    await world.past_delivery(hook_id, 0.5 * DAY, ok=False, tenant="other")
    await world.past_delivery(hook_id, 0.5 * DAY, ok=False, channel="email")
    assert not await world.hooks.disable_if_failing("acme", hook_id, now)
    # A deleted hook stays deleted, not disabled.
    await world.past_delivery(hook_id, 0.5 * DAY, ok=False)
    await world.http.delete(f"/v2/hooks/{hook_id}")
    assert not await world.hooks.disable_if_failing("acme", hook_id, now)
    gone = await world.hooks.get("acme", hook_id)
    assert gone is not None and gone.deleted and not gone.disabled
    # Nor is an unknown hook, nor a known one asked for under another tenant.
    assert not await world.hooks.disable_if_failing("acme", "nenhum", now)
    young = (await world.create_hook(world.down.url("/young"))).json()
    await world.past_delivery(young["id"], 6.5 * DAY, ok=False)
    await world.past_delivery(young["id"], 0.5 * DAY, ok=False)
    assert not await world.hooks.disable_if_failing("other", young["id"], now)
    # A hook created less than 6 days ago is never judged (its attempts cannot be older).
    assert not await world.hooks.disable_if_failing("acme", young["id"], now)
    await world.created_ago(young["id"], 6 * DAY + timedelta(minutes=1))
    assert await world.hooks.disable_if_failing("acme", young["id"], now)


async def test_the_check_reads_a_hook_through_its_index(world: World) -> None:
    query = _recent_attempts("acme", "Vj5rmkBq", datetime.now(UTC) - 7 * DAY)
    compiled = query.compile(dialect=world.engine.dialect)
    values = [compiled.params[name] for name in compiled.positiontup or ()]
    async with world.engine.connect() as conn:
        if world.engine.dialect.name == "sqlite":
            params = tuple(str(v) if isinstance(v, datetime) else v for v in values)
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)
        else:
            # The tables are nearly empty: make the planner show what it can use, in the plan
            # a prepared statement (asyncpg prepares them all) ends up with after a few runs:
            # the generic one, where only a literal `channel`, not a parameter, proves the
            # partial index's predicate.
            await conn.exec_driver_sql("SET enable_seqscan = off")
            await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute(f"PREPARE hook_attempts AS {compiled}")
            args = ", ".join(f"'{v.isoformat() if isinstance(v, datetime) else v}'" for v in values)
            rows = await raw.fetch(f"EXPLAIN EXECUTE hook_attempts({args})")
            await raw.execute("DEALLOCATE hook_attempts")
        plan = "\n".join(str(r) for r in rows)
    assert "ix_deliveries_hook_recent" in plan, plan


# -- the migration ---------------------------------------------------------------------------


async def test_migration_keeps_existing_hooks_enabled_and_goes_back(world: World) -> None:
    async def to(revision: str, down: bool = False) -> None:
        step = command.downgrade if down else command.upgrade
        async with world.engine.begin() as conn:
            await conn.run_sync(lambda c: step(_alembic_config(c), revision))

    await to("0004", down=True)
    assert await current_revision(world.engine) == "0004"
    async with world.engine.begin() as conn:
        assert "disabled_at" not in await conn.run_sync(
            lambda c: {col["name"] for col in sa.inspect(c).get_columns("hooks")}
        )
        await conn.execute(
            sa.text(
                "INSERT INTO hooks (id, tenant_id, event, url, signing_secret, created_at) "
                "VALUES ('antigo01', 'acme', 'nfse', 'http://127.0.0.1:9/h', 'whsec_x', :now)"
            ),
            {"now": datetime.now(UTC)},
        )
    await migrate(world.engine)
    assert await current_revision(world.engine) == head_revision()
    old = await world.hooks.get("acme", "antigo01")
    assert old is not None and not old.disabled
    async with world.engine.connect() as conn:
        indexes = await conn.run_sync(
            lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("deliveries")}
        )
    assert "ix_deliveries_hook_recent" in indexes
