"""An NFC-e whose outcome was recorded by a process that died before its lifecycle event went
out: the create's redelivery, or a cancel reaching the note first, sends it. The real store
(SQLite), the Emites sandbox over TCP on 127.0.0.1, the in-memory bus of `notaflow.testing`
(its `deliver_dying`: the process dies at the handler's first publish)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notaflow import topics as t
from notaflow.consumers.nfce import NfceCanceller, NfceEmitter
from notaflow.consumers.providers.emites import EmitesClient
from notaflow.envelope import Event
from notaflow.lifecycle import AUTHORIZED, CANCELLED
from notaflow.routing import Routes
from notaflow.sandbox.emites import EmitesSandbox, EmitesSandboxConfig
from notaflow.store import DocumentStore, TenantStore, create_engine, migrate
from notaflow.testing import InMemoryBus, Record
from testkit.nfce_documents import VALID_CNPJ, valid_nfce

TENANT = "loja"


@dataclass
class Shop:
    docs: DocumentStore
    bus: InMemoryBus
    topics: t.Topics
    emission: Routes
    cancellation: Routes

    async def send(self, event_type: str, ref: str, **data: object) -> Record:
        event = Event(
            type=event_type,
            source="test",
            data={"tenant": TENANT, "ref": ref, **data},
            subject=ref,
            id=str(uuid.uuid4()),
            tenant=TENANT,
        )
        return await self.bus.send(
            self.topics.nfce_commands, event, t.document_key(TENANT, "nfce", ref)
        )

    def lifecycle(self) -> list[Event]:
        return self.bus.events(self.topics.lifecycle)


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    sandbox = EmitesSandbox(EmitesSandboxConfig())
    await sandbox.start("127.0.0.1", 0)
    emites = EmitesClient("127.0.0.1", sandbox.port, pool_size=2, connect_timeout=2)
    engine = create_engine(f"sqlite:///{tmp_path / 'notaflow.db'}")
    await migrate(engine)
    docs, tenants = DocumentStore(engine), TenantStore(engine)
    await tenants.create(TENANT, "Loja", [VALID_CNPJ])
    bus, topics = InMemoryBus(), t.Topics("t.")
    emitter = NfceEmitter(docs, tenants, emites, bus, topics, VALID_CNPJ, t.SOURCE_EMISSION)
    canceller = NfceCanceller(docs, emites, bus, topics, t.SOURCE_CANCELLATION)
    emission, cancellation = Routes(), Routes()
    emission.add(topics.nfce_commands, t.NFCE_CREATE, emitter.create)
    cancellation.add(topics.nfce_commands, t.NFCE_CANCEL, canceller.cancel)
    try:
        yield Shop(docs, bus, topics, emission, cancellation)
    finally:
        await emites.aclose()
        await sandbox.aclose()
        docs.close()
        await engine.dispose()


async def test_the_redelivered_create_sends_the_authorization_it_recorded(shop: Shop) -> None:
    create = await shop.send(t.NFCE_CREATE, "v1", nfce=valid_nfce())
    await shop.bus.deliver_dying(shop.emission, create)
    doc = await shop.docs.get(TENANT, "nfce", "v1")
    assert doc is not None and doc.status == AUTHORIZED
    assert shop.lifecycle() == []

    await shop.bus.deliver(shop.emission, create)
    (event,) = shop.lifecycle()
    assert (event.data["status"], event.id) == (
        AUTHORIZED,
        f"nfce-{doc.id}-{doc.attempt}-{AUTHORIZED}",
    )
    (answer,) = shop.bus.events(shop.topics.replies)
    assert answer.data["note"]["status"] == AUTHORIZED

    # Delivered once more: the same event (downstream keeps one), not a new one.
    await shop.bus.deliver(shop.emission, create)
    assert [e.id for e in shop.lifecycle()] == [event.id, event.id]


async def test_a_cancel_first_sends_the_lost_authorization_then_its_own(shop: Shop) -> None:
    create = await shop.send(t.NFCE_CREATE, "v2", nfce=valid_nfce())
    await shop.bus.deliver_dying(shop.emission, create)
    cancel = await shop.send(t.NFCE_CANCEL, "v2", motivo="Desistência do comprador")
    await shop.bus.deliver(shop.cancellation, cancel)
    assert [e.data["status"] for e in shop.lifecycle()] == [AUTHORIZED, CANCELLED]
    # The create's redelivery now finds the note cancelled: that (final) state goes out
    # again, never the older authorization after it.
    await shop.bus.deliver(shop.emission, create)
    assert [e.data["status"] for e in shop.lifecycle()] == [AUTHORIZED, CANCELLED, CANCELLED]
