"""Integration: the billing routes in-process (the production `create_app` with the real
broker, SQLite and PostgreSQL), the billing consumers fed from Kafka, a real SMTP server.

The app is built by `ingress.app.create_app`; until the wiring diff adds the billing routes
there, the test appends them to the same app (same error handlers), so it runs either way.
"""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pypdf
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow import billing as b
from notaflow.bus import Bus, ensure_topics
from notaflow.consumers.billing import BillingEvents, BillingMailer, DunningJob
from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
from notaflow.envelope import decode
from notaflow.errors import Transient
from notaflow.ingress import hubsoft_financeiro, wuro
from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.intake import Intake
from notaflow.replies import ReplyWaiters
from notaflow.sandbox.smtp_sink import SmtpSink
from notaflow.settings import Settings
from notaflow.store import DocumentStore, HookStore, TenantStore, create_engine, migrate
from notaflow.store.invoices import (
    BillingConfigStore,
    DunningStore,
    InvoiceDeliveryStore,
    InvoiceStore,
)
from notaflow.topics import Topics

CPF = "52998224725"


@dataclass
class World:
    settings: Settings
    engine: AsyncEngine
    bus: Bus
    http: httpx.AsyncClient
    token: str
    app_id: str
    app_secret: str
    sink: SmtpSink
    mailer: BillingMailer
    events: BillingEvents

    @property
    def prefix(self) -> str:
        return self.settings.kafka_topic_prefix

    def hubsoft(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def wuro(self) -> dict[str, str]:
        return {"X-APP-ID": self.app_id, "X-APP-SECRET": self.app_secret}

    async def drain(self, topic: str, count: int, timeout: float = 15.0) -> list[Any]:
        """The first `count` records of `topic` (each test has its own prefix)."""
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        out: list[Any] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len(out) < count and loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(records)
        finally:
            await consumer.stop()
        assert len(out) >= count, f"{len(out)} of {count} records on {topic}"
        return out


@pytest.fixture
async def world(settings: Settings, database_url: str) -> AsyncIterator[World]:
    settings = settings.replace(
        database_url=database_url,
        billing_link_secret="link-" + uuid.uuid4().hex,
    )
    engine = create_engine(database_url)
    await migrate(engine)
    topics = Topics(settings.kafka_topic_prefix)
    await ensure_topics(settings, [topics.billing_events, topics.billing_commands])
    tenants = TenantStore(engine)
    token = await tenants.create("acme", "ACME Telecom", ["51916585000125"])
    app_id, app_secret = await BillingConfigStore(engine).create_app("acme")
    bus = Bus(settings)
    await bus.start()
    await bus.wait_connected(30)
    documents = DocumentStore(engine)
    deps = IngressDeps(
        settings=settings, engine=engine, bus=bus, documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands, topics.lifecycle),
        nfce_intake=Intake(documents, bus, topics.nfce_commands, topics.lifecycle),
        tenants=tenants, tenant_cache=TenantCache(tenants), topics=topics,
        hooks=HookStore(engine), waiters=ReplyWaiters(),
    )  # fmt: skip
    app = create_app(deps, manage_resources=False)
    paths = {getattr(r, "path", "") for r in app.routes}
    for route in (*hubsoft_financeiro.routes, *wuro.routes):
        if route.path not in paths:  # not wired yet: same app, same error handlers
            app.router.routes.append(route)
    sink = SmtpSink(None)
    await sink.start()
    mailer = Mailer(
        SmtpConfig(host="127.0.0.1", port=int(sink.port), sender_address="faturas@acme.example",
                   sender_name="ACME Telecom", pause_between_sends=0, local_hostname="test")
    )  # fmt: skip
    billing_mailer = BillingMailer(
        engine, InvoiceStore(engine), BillingConfigStore(engine), InvoiceDeliveryStore(engine),
        mailer, settings.public_url,
    )  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield World(settings, engine, bus, http, token, app_id, app_secret, sink,
                    billing_mailer, BillingEvents(InvoiceStore(engine)))  # fmt: skip
    await sink.stop()
    await bus.stop()
    documents.close()
    await engine.dispose()


def event(eid: str, kind: str, day: int, uid: str = "F1", **inv: Any) -> dict[str, Any]:
    invoice = {
        "uid": uid,
        "number": f"N-{uid}",
        "valor": 99.9,
        "data_emissao": "2026-03-01",
        "data_vencimento": "2026-03-10",
        "customer": {"cpf_cnpj": CPF, "codigo_cliente": 1099, "nome": "João da Silva",
                     "email": "joao@cliente.example"},
        **inv,
    }  # fmt: skip
    return {"event_id": eid, "type": kind, "occurred_at": f"2026-03-{day:02d}T12:00:00-03:00",
            "invoice": invoice}  # fmt: skip


async def publish_and_apply(w: World, events: list[dict[str, Any]], offset: int = 0) -> None:
    r = await w.http.post("/api/v1/integracao/faturas/eventos", json=events, headers=w.hubsoft())
    assert r.status_code == 202, r.text
    records = await w.drain(Topics(w.prefix).billing_events, offset + len(events))
    for record in records[offset:]:
        await w.events.apply(decode(record.headers, record.value))


async def test_events_route_out_of_order_and_duplicates(world: World) -> None:
    w = world
    issued = event("e1", "issued", 1, linha_digitavel="75691.31662 01006.726101")
    updated = event("e2", "updated", 2, valor="120.00")
    paid = event("e3", "paid", 5, valor="120.00")
    order = [paid, issued, updated, paid, issued]
    random.Random(5).shuffle(order)
    await publish_and_apply(w, order)
    r = await w.http.get(
        "/api/v1/integracao/cliente/financeiro",
        params={"busca": "cpf_cnpj", "termo_busca": "529.982.247-25", "apenas_pendente": "nao"},
        headers=w.hubsoft(),
    )
    assert r.status_code == 200
    [fatura] = r.json()["faturas"]
    assert fatura["valor"] == 120 and fatura["data_pagamento"] == "05/03/2026"
    assert fatura["linha_digitavel"] == "75691.31662 01006.726101"
    # Invalid events: nothing is published, every error named.
    bad = [event("x1", "issued", 1), {"event_id": "x2", "type": "reopened"}]
    r = await w.http.post("/api/v1/integracao/faturas/eventos", json=bad, headers=w.hubsoft())
    assert r.status_code == 400 and r.json()["status"] == "error"
    assert r.json()["errors"][0].startswith("eventos[1]")
    r = await w.http.post("/api/v1/integracao/faturas/eventos", json=[], headers={})
    assert r.status_code == 401


async def seed(w: World) -> None:
    store = InvoiceStore(w.engine)
    cust = {"cpf_cnpj": CPF, "codigo_cliente": "1099", "id_cliente_servico": "77"}
    specs = [
        (36398, 132.5, "2017-10-10", "2018-07-09", {"descricao": "(+) Taxa", "valor": 12.5}),
        (43625, 12.5, "2018-06-10", None, {"descricao": "(+) 5MB-WIRELESS", "valor": 0}),
        (42338, 10, "2018-07-01", None, {"descricao": "Cobrança adicional - teste", "valor": 10}),
        (44612, 10, "2018-08-31", None, {"descricao": "Cobrança SCM", "valor": 10}),
    ]
    for i, (id_fatura, valor, due, paid, det) in enumerate(specs):
        raw = {
            "event_id": f"s{i}",
            "type": "paid" if paid else "issued",
            "occurred_at": "2018-01-01T00:00:00Z",
            "invoice": {
                "id_fatura": id_fatura,
                "nosso_numero": str(i + 1),
                "valor": valor,
                "tipo_cobranca": "debito_conta_corrente",
                "data_vencimento": due,
                "data_pagamento": paid,
                "detalhamento": det,
                "customer": cust,
            },
        }
        await store.apply("acme", b.normalize_event(raw))
    for n in range(60):  # beyond the limit
        raw = {
            "event_id": f"m{n}",
            "type": "issued",
            "occurred_at": "2018-01-01T00:00:00Z",
            "invoice": {
                "uid": f"M{n}",
                "valor": n + 1,
                "customer": {"codigo_cliente": "555"},
                "data_vencimento": (date(2019, 1, 1) + timedelta(days=n)).isoformat(),
            },
        }
        await store.apply("acme", b.normalize_event(raw))


async def test_financeiro_every_parameter_and_limit(world: World) -> None:
    w = world
    await seed(w)

    async def get(**params: Any) -> httpx.Response:
        return await w.http.get("/api/v1/integracao/cliente/financeiro", params=params,
                                headers=w.hubsoft())  # fmt: skip

    async def ids(**params: Any) -> list[int]:
        r = await get(**{"busca": "codigo_cliente", "termo_busca": "1099", **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "suscess" and body["msg"] == "Dados consultados com sucesso"
        return [f["id_fatura"] for f in body["faturas"]]

    r = await get(busca="codigo_cliente", termo_busca="1099", limit="2", apenas_pendente="nao")
    assert r.json()["faturas"][0] == {
        "id_fatura": 36398, "nosso_numero": "1", "nosso_numero_dv": None,
        "linha_digitavel": None, "tipo_cobranca": "debito_conta_corrente", "valor": 132.5,
        "data_vencimento": "10/10/2017", "data_pagamento": "09/07/2018",
        "detalhamento": {"descricao": "(+) Taxa", "valor": 12.5},
    }  # fmt: skip
    assert r.json()["faturas"][1]["data_pagamento"] is None
    assert r.json()["faturas"][1]["detalhamento"]["valor"] == 0
    assert await ids() == [43625, 42338, 44612]  # default: pending, due date asc
    assert await ids(apenas_pendente="sim") == [43625, 42338, 44612]
    assert await ids(apenas_pendente="nao") == [36398, 43625, 42338, 44612]
    assert await ids(order_type="desc") == [44612, 42338, 43625]
    assert await ids(order_by="valor") == [42338, 44612, 43625]
    assert await ids(order_by="valor", order_type="desc") == [43625, 44612, 42338]
    assert await ids(data_inicio="2018-06-11") == [42338, 44612]
    assert await ids(data_fim="2018-07-01") == [43625, 42338]
    assert await ids(data_inicio="2018-07-01", data_fim="2018-07-01") == [42338]
    assert await ids(limit="1") == [43625]
    assert await ids(busca="cpf_cnpj", termo_busca=CPF) == [43625, 42338, 44612]
    assert await ids(busca="id_cliente_servico", termo_busca="77") == [43625, 42338, 44612]
    assert await ids(termo_busca="9999") == []
    many = await ids(termo_busca="555")
    assert len(many) == 20  # default limit
    assert len(await ids(termo_busca="555", limit="50")) == 50
    bad = [
        {},
        {"busca": "nome", "termo_busca": "x"},
        {"busca": "codigo_cliente"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "limit": "0"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "limit": "51"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "limit": "dez"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "apenas_pendente": "talvez"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "order_by": "id"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "order_type": "up"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "data_inicio": "10/06/2018"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "data_fim": "2018-02-30"},
        {"busca": "codigo_cliente", "termo_busca": "1099", "data_inicio": "2018-07-02",
         "data_fim": "2018-07-01"},
    ]  # fmt: skip
    for params in bad:
        r = await get(**params)
        assert r.status_code == 400, params
        assert r.json()["status"] == "error" and r.json()["msg"], params
    r = await w.http.get("/api/v1/integracao/cliente/financeiro",
                         params={"busca": "codigo_cliente", "termo_busca": "1099"})  # fmt: skip
    assert r.status_code == 401
    r = await w.http.get(
        "/api/v1/integracao/cliente/financeiro",
        headers={"Authorization": "Bearer wrong"},
        params={"busca": "codigo_cliente", "termo_busca": "1"},
    )
    assert r.status_code == 401


def pdf_text(message: EmailMessage) -> str | None:
    for part in message.iter_attachments():
        if part.get_content_type() == "application/pdf":
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            return "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages)
    return None


async def mail_through_kafka(w: World, count: int) -> list[Any]:
    for record in await w.drain(Topics(w.prefix).billing_commands, count):
        await w.mailer.send(decode(record.headers, record.value))
        await w.mailer.send(decode(record.headers, record.value))  # a redelivery sends nothing
    return list(w.sink.received)


async def test_wuro_mail_with_and_without_pdf_draft_refused(world: World) -> None:
    w = world
    lines = [{"descricao": "Plano Fibra 300MB", "quantidade": 1, "valor_unitario": "99.90"}]
    await publish_and_apply(w, [
        event("w1", "issued", 1, lines=lines, linha_digitavel="75691.31662 01006.726101 27476.4"),
        event("w2", "issued", 1, uid="D1", state="draft"),
    ])  # fmt: skip
    url = "/api/v3.2/invoice/F1/mail"
    r = await w.http.post(url, json={}, headers=w.wuro())
    assert r.status_code == 200, r.text
    first = r.json()
    assert set(first) == {"resultId", "html", "subject"}
    assert first["subject"] == "Fatura N-F1 - ACME Telecom"
    assert "João da Silva" in first["html"] and "R$ 99,90" in first["html"]
    await BillingConfigStore(w.engine).set_template(
        "acme", "send_invoice", "Sua fatura [facture-numero] de [facture-date]",
        '<p>Prezado [contact-nom], <a href="[lien-pdf]">PDF</a> [facture-montant]</p>',
    )  # fmt: skip
    r = await w.http.post(url, headers=w.wuro(), json={
        "action": "send_invoice", "to": "financeiro@cliente.example",
        "copyto": "copia@cliente.example", "replyTo": "cobranca@acme.example", "joinPdf": True,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["subject"] == "Sua fatura N-F1 de 01/03/2026"
    # Refusals: draft, unknown action, bad credentials, unknown invoice.
    r = await w.http.post("/api/v3.2/invoice/D1/mail", json={}, headers=w.wuro())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invoice_draft"
    r = await w.http.post(url, json={"action": "spam"}, headers=w.wuro())
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_action"
    r = await w.http.post(url, json={}, headers={**w.wuro(), "X-APP-SECRET": "nope"})
    assert r.status_code == 401
    r = await w.http.post("/api/v3.2/invoice/NOPE/mail", json={}, headers=w.wuro())
    assert r.status_code == 404

    received = await mail_through_kafka(w, 2)
    assert len(received) == 2
    plain, with_pdf = received
    assert plain.rcpt_tos == ["joao@cliente.example"]
    assert pdf_text(plain.message) is None
    assert sorted(with_pdf.rcpt_tos) == ["copia@cliente.example", "financeiro@cliente.example"]
    assert with_pdf.message["Reply-To"] == "cobranca@acme.example"
    assert with_pdf.message["Subject"] == "Sua fatura N-F1 de 01/03/2026"
    text = pdf_text(with_pdf.message)
    assert text is not None
    for expected in ("ACME Telecom", "51.916.585/0001-25", "FATURA Nº N-F1", "João da Silva",
                     "529.982.247-25", "01/03/2026", "10/03/2026", "Plano Fibra 300MB",
                     "R$ 99,90", "75691.31662 01006.726101 27476.4"):  # fmt: skip
        assert expected in text, expected
    # The [lien-pdf] link serves the same PDF without credentials; a forged one is refused.
    html_body = with_pdf.message.get_body(("html",))
    assert html_body is not None
    link = str(html_body.get_content()).split('href="')[1].split('"')[0].replace("&amp;", "&")
    r = await w.http.get(link.removeprefix(w.settings.public_url))
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert "Plano Fibra 300MB" in pypdf.PdfReader(io.BytesIO(r.content)).pages[0].extract_text()
    r = await w.http.get(link.removeprefix(w.settings.public_url).replace("/pdf?", "/html?"))
    assert r.status_code == 200 and "Plano Fibra 300MB" in r.text
    r = await w.http.get("/api/v3.2/invoice/D1/pdf?token=" + link.split("token=")[1])
    assert r.status_code == 403
    r = await w.http.get("/api/v3.2/invoice/F1/pdf?token=forged.token")
    assert r.status_code == 403


async def test_an_invoice_mail_locked_by_a_dead_sender_is_sent_once_its_lease_ends(
    world: World,
) -> None:
    """Another process took the e-mail and died before sending it. The command's redelivery
    finds the row locked: it fails (retried later) instead of returning as if the e-mail were
    another replica's to send, since these rows have no retry schedule of their own and the
    e-mail would be lost. Once the lease has run out, the next delivery sends it, once."""
    w = world
    await publish_and_apply(w, [event("l1", "issued", 1)])
    r = await w.http.post("/api/v3.2/invoice/F1/mail", json={}, headers=w.wuro())
    assert r.status_code == 200, r.text
    (record,) = await w.drain(Topics(w.prefix).billing_commands, 1)
    command = decode(record.headers, record.value)
    rows = InvoiceDeliveryStore(w.engine)
    invoice = await InvoiceStore(w.engine).get("acme", "F1")
    assert invoice is not None
    held = await rows.hold("acme", invoice.id, f"invoice-mail:{command.id}", "x", command.data)
    assert await rows.lock(held.id, 0.5)  # the dead sender's lease
    with pytest.raises(Transient, match="under way elsewhere"):
        await w.mailer.send(command)
    assert w.sink.received == []
    await asyncio.sleep(0.6)
    await w.mailer.send(command)
    await w.mailer.send(command)  # a later redelivery: sent already
    assert [m.rcpt_tos for m in w.sink.received] == [["joao@cliente.example"]]


async def test_dunning_run_twice_sends_once(world: World) -> None:
    w = world
    today = date(2026, 3, 20)
    await publish_and_apply(w, [
        event("d1", "issued", 1, uid="LATE3", data_vencimento="2026-03-15"),  # 5 days: step 3
        event("d2", "issued", 1, uid="LATE10", data_vencimento="2026-03-05"),  # 15 days: step 10
        event("d3", "issued", 1, uid="FRESH", data_vencimento="2026-03-19"),  # 1 day: nothing
        event("d4", "issued", 1, uid="PAID", data_vencimento="2026-03-01"),
        event("d5", "paid", 2, uid="PAID", data_vencimento="2026-03-01"),
    ])  # fmt: skip

    def job() -> DunningJob:
        links = b.Links(w.settings.public_url, w.settings.billing_link_secret)
        return DunningJob(
            w.engine,
            InvoiceStore(w.engine),
            BillingConfigStore(w.engine),
            DunningStore(w.engine),
            w.bus,
            Topics(w.prefix).billing_commands,
            links,
        )

    counts = await asyncio.gather(job().run(today), job().run(today))  # two replicas at once
    assert sorted(counts) == [0, 2] or sum(counts) == 2
    assert await job().run(today) == 0  # and again later
    received = await mail_through_kafka(w, 2)
    assert len(received) == 2
    subjects = sorted(str(m.message["Subject"]) for m in received)
    assert subjects == ["Lembrete: fatura N-LATE10 vencida em 05/03/2026",
                        "Lembrete: fatura N-LATE3 vencida em 15/03/2026"]  # fmt: skip
    assert all(pdf_text(m.message) for m in received)
    # Five days later LATE3 reaches step 10 and FRESH step 3: each once.
    assert await job().run(today + timedelta(days=5)) == 2
    assert await job().run(today + timedelta(days=5)) == 0
