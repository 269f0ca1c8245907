"""A tenant's own SMTP server (issue 15): its notes' e-mails leave through its server with its
From address, other tenants' through the global server; a changed account takes over at once
(after the cache's TTL); a disabled one fails the e-mail with the reason and never falls back
to the global server. Real SMTP servers (the project's aiosmtpd sink), a real database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from notaflow import topics as t
from notaflow.account_keys import SecretBox, new_key
from notaflow.accounts import ANY_CNPJ, AccountResolver, Provider
from notaflow.bus import Bus
from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
from notaflow.consumers.providers.mailer_accounts import MailerByTenant
from notaflow.consumers.providers.webhooks import WebhookSender
from notaflow.envelope import Event
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
from notaflow.store.accounts import AccountStore
from notaflow.store.deliveries import SENT
from notaflow.store.tables import deliveries
from testkit.smtp import ThreadedSmtpSink

A, B = "51916585000125", "07504505000132"


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[ThreadedSmtpSink, ThreadedSmtpSink]]:
    ours, theirs = ThreadedSmtpSink().start(), ThreadedSmtpSink().start()
    yield ours, theirs
    ours.stop()
    theirs.stop()


@dataclass
class World:
    consumer: NotificationConsumer
    documents: DocumentStore
    accounts: AccountStore
    ours: ThreadedSmtpSink
    theirs: ThreadedSmtpSink

    engine: Any

    async def email(self, tenant: str, cnpj: str, to: str) -> tuple[str, str | None]:
        """E-mail a copy of a new note of `cnpj` to `to` (POST /v2/nfse/REF/email, as the
        consumer gets it): the delivery's status and last error."""
        ref = uuid.uuid4().hex[:12]
        prestador = {"cnpj": cnpj, "inscricao_municipal": "1", "codigo_municipio": "4106902"}
        document = normalize_nfse(
            {
                "data_emissao": "2026-05-27T10:00:00-03:00",
                "prestador": prestador,
                "tomador": {"cnpj": "11222333000181", "razao_social": "Cliente"},
                "servico": {"aliquota": 3, "discriminacao": "Consultoria", "iss_retido": "false",
                            "item_lista_servico": "0107", "valor_servicos": "1.00"},
            }
        )  # fmt: skip
        await self.documents.claim(tenant, "nfse", ref, cnpj, document, uuid.uuid4().hex, "t")
        data = {"tenant": tenant, "ref": ref, "emails": [to]}
        await self.consumer.on_email(Event(type=t.NFSE_EMAIL, source="test", data=data))
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(deliveries.c.status, deliveries.c.last_error).where(
                        deliveries.c.target == to
                    )
                )
            ).one()
        return row.status, row.last_error


def to(sink: ThreadedSmtpSink, address: str) -> list[Any]:
    return [m for m in sink.received() if address in m.rcpt_tos]


@pytest.fixture
async def world(
    tmp_path: Path, sinks: tuple[ThreadedSmtpSink, ThreadedSmtpSink]
) -> AsyncIterator[World]:
    ours, theirs = sinks
    engine = create_engine(f"sqlite:///{tmp_path / 'smtp.db'}")
    await migrate(engine)
    tenants = TenantStore(engine)
    await tenants.create("acme", "ACME", [A])
    await tenants.create("beta", "Beta", [B])
    settings = Settings(smtp_host="127.0.0.1", smtp_port=ours.port, smtp_security="none")
    accounts = AccountStore(engine, SecretBox([new_key()]))
    resolver = AccountResolver(accounts, settings, ttl=0)
    template = SmtpConfig(
        host="127.0.0.1", port=ours.port, sender_address="notaflow@ours.test",
        pause_between_sends=0, local_hostname="notaflow",
    )  # fmt: skip
    documents = DocumentStore(engine)
    bus = Bus(settings)  # never started: nothing here publishes
    async with WebhookSender(allow_private=True, timeout=5) as sender:
        consumer = NotificationConsumer(
            documents, tenants, HookStore(engine), DeliveryStore(engine),
            MailerByTenant(Mailer(template), resolver, template), sender, bus,
            t.Topics(settings.kafka_topic_prefix),
            NotificationSettings(public_url="http://notaflow.test", hook_schedule=(60.0,)),
        )  # fmt: skip
        yield World(consumer, documents, accounts, ours, theirs, engine)
    documents.close()
    await engine.dispose()


async def test_each_tenant_sends_through_its_own_server(world: World) -> None:
    await world.accounts.create(
        "beta", ANY_CNPJ, Provider.SMTP,
        {"host": "127.0.0.1", "port": world.theirs.port, "security": "none",
         "sender": "notas@beta.test", "sender_name": "Beta Notas"},
    )  # fmt: skip
    a = f"a-{uuid.uuid4().hex[:6]}@example.com"
    b = f"b-{uuid.uuid4().hex[:6]}@example.com"
    assert await world.email("acme", A, a) == (SENT, None)
    assert await world.email("beta", B, b) == (SENT, None)
    assert len(to(world.ours, a)) == 1 and to(world.theirs, a) == []
    assert len(to(world.theirs, b)) == 1 and to(world.ours, b) == []
    [mail_b] = to(world.theirs, b)
    assert "notas@beta.test" in str(mail_b.message["From"])
    assert "Beta Notas" in str(mail_b.message["From"])
    assert "notaflow@ours.test" in str(to(world.ours, a)[0].message["From"])

    # The account changes (another server): the next e-mail goes there.
    await world.accounts.rotate(
        "beta", ANY_CNPJ, Provider.SMTP, None,
        {"host": "127.0.0.1", "port": world.ours.port, "security": "none",
         "sender": "notas@beta.test"},
    )  # fmt: skip
    b2 = f"b2-{uuid.uuid4().hex[:6]}@example.com"
    assert await world.email("beta", B, b2) == (SENT, None)
    assert len(to(world.ours, b2)) == 1


async def test_a_disabled_smtp_account_never_falls_back_to_the_global_server(world: World) -> None:
    await world.accounts.create(
        "beta", ANY_CNPJ, Provider.SMTP,
        {"host": "127.0.0.1", "port": world.theirs.port, "security": "none",
         "sender": "notas@beta.test"},
    )  # fmt: skip
    await world.accounts.disable("beta", ANY_CNPJ, Provider.SMTP)
    b = f"off-{uuid.uuid4().hex[:6]}@example.com"
    status, error = await world.email("beta", B, b)
    assert status != SENT and error is not None and "desabilitada" in error
    assert to(world.ours, b) == [] and to(world.theirs, b) == []
