"""A consumer's world without Kafka: the real store (SQLite in a tmp dir), the real Focus
sandbox app reached in-process through the Focus client's transport seam (httpx's ASGI
transport: the client's own request and error mapping, no socket), and the in-memory bus of
`notaflow.testing`, which feeds the consumers' routes and keeps what they publish."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow import topics as t
from notaflow.consumers.cancellation import CancellationConsumer
from notaflow.consumers.emission import EmissionConsumer
from notaflow.consumers.providers.focus import FocusClient
from notaflow.envelope import Event
from notaflow.focus_kinds import NFSE
from notaflow.routing import Routes
from notaflow.sandbox.focus import FocusSandbox, FocusSandboxConfig, create_focus_sandbox
from notaflow.store import Document, DocumentStore, TenantStore, create_engine, migrate
from notaflow.testing import InMemoryBus, Record
from notaflow.topics import Topics
from testkit.erp_documents import PRESTADOR_CNPJ, erp_nfse

TENANT = "acme"
JUSTIFICATIVA = "Serviço não prestado ao cliente"


@dataclass
class World:
    engine: AsyncEngine
    docs: DocumentStore
    tenants: TenantStore
    bus: InMemoryBus
    topics: Topics
    focus: FocusClient
    sandbox: FocusSandbox
    emission: Routes
    cancellation: Routes

    def nfse(self, **servico: Any) -> dict[str, Any]:
        """The normalized document the ingress would put in the command."""
        doc = erp_nfse()
        doc["servico"] = {**doc["servico"], **servico}
        return NFSE.normalize(doc)

    def emit_command(
        self, ref: str, command_id: str | None = None, document: dict[str, Any] | None = None
    ) -> Event:
        return Event(
            type=t.NFSE_EMIT,
            source="test",
            data={"tenant": TENANT, "ref": ref, "nfse": document or self.nfse()},
            subject=ref,
            id=command_id or str(uuid.uuid4()),
            tenant=TENANT,
        )

    def cancel_command(self, ref: str, command_id: str | None = None) -> Event:
        return Event(
            type=t.NFSE_CANCEL,
            source="test",
            data={"tenant": TENANT, "ref": ref, "justificativa": JUSTIFICATIVA},
            subject=ref,
            id=command_id or str(uuid.uuid4()),
            tenant=TENANT,
        )

    async def send(self, event: Event) -> Record:
        """Publish a command on the NFS-e command topic, keyed by its note (not delivered)."""
        key = t.document_key(TENANT, "nfse", event.subject)
        return await self.bus.send(self.topics.nfse_commands, event, key)

    async def command(self, event: Event, routes: Routes | None = None) -> Record:
        """Publish a command on the NFS-e command topic and deliver it."""
        record = await self.send(event)
        await self.bus.deliver(routes or self.emission, record)
        return record

    async def claim(self, ref: str, event: Event) -> Document:
        """What the ingress does before it publishes: claim the ref with the command's id."""
        await self.docs.claim(
            TENANT, "nfse", ref, PRESTADOR_CNPJ, event.data["nfse"], event.id, "test"
        )
        return await self.doc(ref)

    async def doc(self, ref: str) -> Document:
        doc = await self.docs.get(TENANT, "nfse", ref)
        assert doc is not None
        return doc

    async def at_focus(self, pref: str, status: str, timeout: float = 3.0) -> dict[str, Any]:
        """Focus's answer for our provider ref, once it has reached `status`."""
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.focus.get_document(NFSE.api_path, pref)
            if reply.body.get("status") == status:
                return reply.body
            assert time.monotonic() < deadline, reply.body
            await asyncio.sleep(0.005)

    async def callback(self, body: dict[str, Any], routes: Routes | None = None) -> Record:
        """A provider callback as the ingress publishes it (keyed by the note's document),
        delivered to the emission consumer (or `routes`)."""
        doc = await self.docs.by_provider_ref(str(body["ref"]))
        key = t.document_key(TENANT, "nfse", doc.ref) if doc else b"provider:x"
        event = Event(type=t.FOCUS_NFSE_CALLBACK, source="test", data=body, subject=body["ref"])
        record = await self.bus.send(self.topics.provider_events, event, key)
        await self.bus.deliver(routes or self.emission, record)
        return record

    def statuses(self) -> list[str]:
        return [e.data["status"] for e in self.bus.events(self.topics.lifecycle)]

    def replies(self) -> list[dict[str, Any]]:
        return [e.data for e in self.bus.events(self.topics.replies)]

    def posts(self, pref: str) -> int:
        return self.sandbox.stats.posts[pref]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    engine = create_engine(f"sqlite:///{tmp_path / 'notaflow.db'}")
    await migrate(engine)
    docs, tenants = DocumentStore(engine), TenantStore(engine)
    await tenants.create(TENANT, "Acme", [PRESTADOR_CNPJ])
    app = create_focus_sandbox(FocusSandboxConfig(processing_delay=0.0))
    sandbox: FocusSandbox = app.state.sandbox
    focus = FocusClient("http://focus.test", "token", transport=httpx.ASGITransport(app=app))
    bus, topics = InMemoryBus(), Topics("t.")
    try:
        yield World(
            engine,
            docs,
            tenants,
            bus,
            topics,
            focus,
            sandbox,
            EmissionConsumer(docs, tenants, focus, bus, topics).routes(),
            CancellationConsumer(docs, focus, bus, topics).routes(),
        )
    finally:
        await focus.aclose()
        await sandbox.aclose()
        docs.close()
        await engine.dispose()
