"""End to end: the production processes (`notaflow migrate`, `tenant create`, `billing-app`,
`ingress`, `consume billing`, `consume notification`, `dunning`), driven over HTTP, with a real
SMTP server.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest

from notaflow import billing as b
from notaflow.launch.broker import EmbeddedBroker
from notaflow.settings import Settings
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for

CPF = "52998224725"


class World:
    def __init__(self, stack: Stack, sink: ThreadedSmtpSink, app_id: str, secret: str) -> None:
        self.stack, self.sink, self.app_id, self.secret = stack, sink, app_id, secret

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base, timeout=15)

    def hubsoft(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.token}"}

    def wuro(self) -> dict[str, str]:
        return {"X-APP-ID": self.app_id, "X-APP-SECRET": self.secret}

    def mails(self, subject_part: str) -> list[Any]:
        return [m for m in self.sink.received() if subject_part in str(m.message["Subject"])]


@pytest.fixture(scope="module")
def world(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("billing-e2e")
    sink = ThreadedSmtpSink(tmp / "outbox").start()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'billing.db'}",
        consumer_retry_base=0.2,
        consumer_retry_max=1.0,
        **sink.settings(),
        smtp_sender="faturas@acme.example",
        smtp_pause=0.05,
    ).replace(billing_link_secret="link-" + uuid.uuid4().hex)
    stack = Stack(settings, tmp, consumers=("billing", "notification")).start()
    try:
        out = stack.run("billing-app", "acme").splitlines()
        app_id = next(x.split()[-1] for x in out if x.startswith("X-APP-ID"))
        secret = next(x.split()[-1] for x in out if x.startswith("X-APP-SECRET"))
        yield World(stack, sink, app_id, secret)
    finally:
        stack.stop()
        sink.stop()


def event(eid: str, kind: str, when: str, uid: str, **inv: Any) -> dict[str, Any]:
    invoice = {"uid": uid, "number": f"N-{uid}", "valor": "89.90", "data_emissao": "2026-03-01",
               "data_vencimento": "2026-03-10",
               "lines": [{"descricao": "Plano Fibra 300MB", "valor_unitario": 89.9}],
               "linha_digitavel": "75691.31662 01006.726101 27476.400018 2 76380000001023",
               "customer": {"cpf_cnpj": CPF, "codigo_cliente": "1099", "nome": "Maria Souza",
                            "email": f"{uid.lower()}@cliente.example"}, **inv}  # fmt: skip
    return {"event_id": eid, "type": kind, "occurred_at": when, "invoice": invoice}


def financeiro(w: World, **params: str) -> list[dict[str, Any]]:
    with w.http() as c:
        r = c.get("/api/v1/integracao/cliente/financeiro", headers=w.hubsoft(),
                  params={"busca": "cpf_cnpj", "termo_busca": CPF, **params})  # fmt: skip
    assert r.status_code == 200, r.text
    faturas: list[dict[str, Any]] = r.json()["faturas"]
    return faturas


def post_events(w: World, events: list[dict[str, Any]]) -> None:
    with w.http() as c:
        r = c.post("/api/v1/integracao/faturas/eventos", json=events, headers=w.hubsoft())
    assert r.status_code == 202, r.text


def test_events_out_of_order_then_wuro_mail_with_pdf(world: World) -> None:
    w = world
    post_events(w, [
        event("p1", "paid", "2026-03-09T10:00:00Z", "E2E1"),
        event("i1", "issued", "2026-03-01T10:00:00Z", "E2E1"),
        event("i1", "issued", "2026-03-01T10:00:00Z", "E2E1"),
        event("i2", "issued", "2026-03-01T10:00:00Z", "E2E2"),
        event("d1", "issued", "2026-03-01T10:00:00Z", "DRAFT", state="draft"),
    ])  # fmt: skip
    try:
        wait_for(lambda: len(financeiro(w, apenas_pendente="nao")) == 2, 30, 0.2)
    except TimeoutError as exc:
        raise AssertionError(w.stack.logs()) from exc
    pending = financeiro(w)
    assert [f["data_pagamento"] for f in pending] == [None]
    everything = financeiro(w, apenas_pendente="nao")
    assert sorted(str(f["data_pagamento"]) for f in everything) == ["09/03/2026", "None"]

    with w.http() as c:
        r = c.post("/api/v3.2/invoice/DRAFT/mail", json={}, headers=w.wuro())
        assert r.status_code == 400 and r.json()["error"]["code"] == "invoice_draft"
        r = c.post("/api/v3.2/invoice/E2E2/mail", json={"joinPdf": True}, headers=w.wuro())
        assert r.status_code == 200, r.text
        with_pdf = r.json()
        body = {"subject": "Sem anexo [facture-numero]", "to": "outro@cliente.example"}
        r = c.post("/api/v3.2/invoice/E2E2/mail", headers=w.wuro(), json=body)
        assert r.status_code == 200, r.text
    assert with_pdf["subject"] == "Fatura N-E2E2 - ACME"
    try:
        wait_for(lambda: len(w.mails("N-E2E2")) == 2, 30, 0.2)
    except TimeoutError as exc:
        raise AssertionError(w.stack.logs()) from exc
    [mail] = w.mails("Fatura N-E2E2")
    assert mail.rcpt_tos == ["e2e2@cliente.example"]
    [pdf] = [
        p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"
    ]
    text = pypdf.PdfReader(io.BytesIO(pdf.get_payload(decode=True))).pages[0].extract_text()
    for expected in ("FATURA Nº N-E2E2", "Maria Souza", "529.982.247-25", "Plano Fibra 300MB",
                     "R$ 89,90", "10/03/2026", "75691.31662 01006.726101"):  # fmt: skip
        assert expected in text, expected
    [plain] = w.mails("Sem anexo N-E2E2")
    assert plain.rcpt_tos == ["outro@cliente.example"]
    assert not list(plain.message.iter_attachments())


def test_dunning_twice_sends_once(world: World) -> None:
    w = world
    due = (b.today_brasilia() - timedelta(days=4)).isoformat()
    post_events(w, [event("late1", "issued", "2026-03-01T10:00:00Z", "LATE", data_vencimento=due)])
    wait_for(lambda: any(f["data_vencimento"] for f in financeiro(w, data_inicio=due)), 30, 0.2)
    w.stack.run("dunning")
    w.stack.run("dunning")
    try:
        wait_for(lambda: w.mails("Lembrete: fatura N-LATE"), 30, 0.2)
    except TimeoutError as exc:
        raise AssertionError(w.stack.logs()) from exc
    time.sleep(2)  # a second reminder, if any, would have arrived by now
    assert len(w.mails("Lembrete: fatura N-LATE")) == 1
