"""A note's hook and its e-mail go out side by side: a hook receiver that takes its time (up to
the sender's timeout) does not hold the tomador's e-mail back. Real HTTP receiver and SMTP
server on loopback, a real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
from notaflow.consumers.providers.webhooks import WebhookSender
from notaflow.envelope import Event
from notaflow.lifecycle import AUTHORIZED
from notaflow.nfse import normalize_nfse
from notaflow.settings import Settings
from notaflow.store import (
    DeliveryStore,
    DocumentStore,
    HookStore,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.store.deliveries import SENT
from testkit.receiver import Receiver, ReceiverServer, Reply
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.smtp import ThreadedSmtpSink

CNPJ = "51916585000125"
SLOW = 3.0  # seconds the hook receiver takes to answer


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Receiver, ThreadedSmtpSink]]:
    hook_server, sink = ReceiverServer(), ThreadedSmtpSink().start()
    yield hook_server.start(), sink
    hook_server.stop()
    sink.stop()


@dataclass
class World:
    consumer: NotificationConsumer
    documents: DocumentStore
    deliveries: DeliveryStore
    receiver: Receiver
    sink: ThreadedSmtpSink

    async def authorized(self, address: str) -> tuple[asyncio.Task[None], str]:
        """A note to `address`, authorized: the consumer's handling of its lifecycle event (a
        task) and the event's id."""
        ref = uuid.uuid4().hex[:12]
        document = with_valid_cnpjs(JSON_EXAMPLE)  # seed 001's note, from our prestador
        document["tomador"]["email"] = address
        document = normalize_nfse(document)
        claim = await self.documents.claim(
            "acme", "nfse", ref, CNPJ, document, uuid.uuid4().hex, "test"
        )
        await self.documents.transition(claim.document_id, 1, AUTHORIZED, "test")
        data = {"tenant": "acme", "kind": "nfse", "id": claim.document_id, "ref": ref,
                "status": AUTHORIZED}  # fmt: skip
        event = Event(type=t.NFSE_STATUS, source="test", data=data, status=AUTHORIZED)
        return asyncio.create_task(self.consumer.on_status(event)), event.id

    def mails_to(self, address: str) -> int:
        return sum(address in m.rcpt_tos for m in self.sink.received())


@pytest.fixture
async def world(
    tmp_path: Path, servers: tuple[Receiver, ThreadedSmtpSink]
) -> AsyncIterator[World]:
    receiver, sink = servers
    receiver.reset()
    engine = create_engine(f"sqlite:///{tmp_path / 'apart.db'}")
    await migrate(engine)
    tenants = TenantStore(engine)
    await tenants.create("acme", "ACME", [CNPJ])
    hooks = HookStore(engine)
    await hooks.create("acme", "nfse", receiver.url(), "segredo", cnpj=CNPJ)
    settings = Settings()
    mailer = Mailer(
        SmtpConfig(host="127.0.0.1", port=sink.port, sender_address="notaflow@ours.test",
                   pause_between_sends=0, local_hostname="notaflow", timeout=5)
    )  # fmt: skip
    documents = DocumentStore(engine)
    deliveries = DeliveryStore(engine)
    async with WebhookSender(allow_private=True, timeout=10) as sender:
        consumer = NotificationConsumer(
            documents, tenants, hooks, deliveries, mailer, sender,
            Bus(settings),  # never started: nothing here publishes
            t.Topics(settings.kafka_topic_prefix),
            NotificationSettings(public_url="http://notaflow.test", hook_schedule=(60.0,)),
        )  # fmt: skip
        yield World(consumer, documents, deliveries, receiver, sink)
    await mailer.aclose()
    documents.close()
    await engine.dispose()


async def test_a_slow_hook_does_not_hold_the_email_back(world: World) -> None:
    world.receiver.script.append(Reply(200, delay=SLOW))
    address = f"t-{uuid.uuid4().hex[:6]}@example.com"
    started = time.monotonic()
    handling, event_id = await world.authorized(address)
    while world.mails_to(address) == 0:
        assert not handling.done(), "the handler ended without e-mailing"
        assert time.monotonic() - started < SLOW, "the e-mail waited for the hook"
        await asyncio.sleep(0.01)
    assert not handling.done(), "the hook's answer is still on its way"
    await asyncio.wait_for(handling, 10)
    assert time.monotonic() - started >= SLOW
    assert len(world.receiver.seen) == 1 and world.mails_to(address) == 1
    mail = await world.deliveries.by_key(f"email:{event_id}:{address}")
    assert mail is not None and mail.status == SENT
