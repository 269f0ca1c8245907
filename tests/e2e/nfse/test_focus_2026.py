"""Focus as ERP integrations speak it in 2026, through the production processes on SQLite and
PostgreSQL: documents built from records (nulls, falses, ABRASF flags, the IBS/CBS group, a
foreign tomador with nif, fields Focus does not document) are accepted, reach the provider
field for field, are authorized, re-sent (422), cancelled, and both XMLs are fetched without
credentials. The same document published straight to Kafka is carried the same way. An NFS-e
Nacional (`/v2/nfsen`) goes the same way, with its client hook (event nfsen) and the e-mail to
its tomador."""

from __future__ import annotations

import asyncio
import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow import topics as t
from notaflow.sandbox import focus_nacional_rules as nacional
from notaflow.settings import Settings
from testkit.erp_documents import (
    ERP_NFSE,
    ERP_NFSE_FOREIGN,
    ERP_NFSEN,
    PRESTADOR_CNPJ,
    expected_at_provider,
    expected_nfsen_at_provider,
    servico_xml_ns,
)
from testkit.receiver import Receiver, ReceiverServer
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for
from tests.e2e.runtime.test_kafka_contract import consume_all, emit_record, produce

JUSTIFICATIVA = "Serviço cancelado a pedido do tomador"


class World:
    def __init__(self, stack: Stack, sink: ThreadedSmtpSink, receiver: Receiver) -> None:
        self.stack, self.sink, self.receiver = stack, sink, receiver


@pytest.fixture
def world(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[World]:
    sink = ThreadedSmtpSink(tmp_path / "outbox").start()
    receiver_server = ReceiverServer()
    receiver = receiver_server.start()
    s = Stack(
        settings.replace(
            database_url=database_url,
            cancel_wait=10.0,
            **sink.settings(),
            smtp_sender="nfse@notaflow.test",
            smtp_pause=0.05,
            hooks_allow_private=True,
            hooks_retry_schedule="0.3,0.6,1",
        ),
        tmp_path,
        sandbox_delay=0.1,
        consumers=("emission", "cancellation", "notification"),
    ).start()
    yield World(s, sink, receiver)
    s.stop()
    receiver_server.stop()
    sink.stop()


def at_provider(stack: Stack, note_id: int, path: str = "/v2/nfse") -> dict[str, Any]:
    """What the Focus sandbox received for this note (its own GET ?completa=1)."""
    with httpx.Client(base_url=stack.sandbox, auth=("sandbox-token", ""), timeout=10) as focus:
        body: dict[str, Any] = focus.get(f"{path}/N{note_id}A1", params={"completa": 1}).json()
    return body


def test_erp_documents_end_to_end(world: World) -> None:
    municipal(world.stack)
    national(world)


def municipal(stack: Stack) -> None:
    sent = {"erp1": copy.deepcopy(ERP_NFSE), "erp2": copy.deepcopy(ERP_NFSE_FOREIGN)}
    bad_group = copy.deepcopy(ERP_NFSE)
    bad_group["servico"]["cbs_aliquota"] = None  # a CBS value without its rate
    with stack.client() as c:
        # As the ERP sends it: data=json.dumps(payload), no Content-Type, completa as a number.
        r = c.post(
            "/v2/nfse", params={"ref": "erp1", "completa": 0}, content=json.dumps(sent["erp1"])
        )
        assert r.status_code == 202, r.text
        assert c.post("/v2/nfse", params={"ref": "erp2"}, json=sent["erp2"]).status_code == 202
        assert c.post("/v2/nfse", params={"ref": "erp3"}, json=bad_group).status_code == 202
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    kafka_doc = copy.deepcopy(ERP_NFSE)
    kafka_doc["servico"]["discriminacao"] = "Publicado direto no Kafka"
    asyncio.run(
        produce(
            stack.settings.kafka_bootstrap,
            topics.nfse_commands,
            [emit_record("acme", "kerp", kafka_doc)],
        )
    )
    sent["kerp"] = kafka_doc

    for ref, document in sent.items():
        note = stack.wait_status(ref, {"autorizado"})
        with stack.client() as c:
            full = c.get(f"/v2/nfse/{ref}", params={"completa": "true"}).json()
            assert (
                "requisicao_nota_fiscal"
                not in c.get(f"/v2/nfse/{ref}", params={"completa": "False"}).json()
            )
        # GET ?completa shows the body that went to the provider, which is what the client
        # sent, field for field (known fields normalised, "no value" markers absent).
        forwarded = full["requisicao_nota_fiscal"]
        expected_at_provider(document, forwarded)
        assert at_provider(stack, note["id"])["requisicao_nota_fiscal"] == forwarded
        datetime.strptime(note["data_emissao"], "%Y-%m-%dT%H:%M:%S%z")
        # Both documents are public at their unguessable paths: no credentials.
        xml = httpx.get(stack.base + note["caminho_xml_nota_fiscal"])
        assert xml.status_code == 200, xml.text
        inf = ET.fromstring(xml.content).find(servico_xml_ns("Nfse/InfNfse"))
        assert inf is not None and inf.findtext(servico_xml_ns("CbsValor")) == "9.00"
        pdf = httpx.get(note["url_danfse"]).content
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")

    rejected = stack.wait_status("erp3", {"erro_autorizacao"})
    assert rejected["erros"][0]["codigo"] == "E310" and rejected["erros"][0]["mensagem"]

    with stack.client() as c:
        again = c.post("/v2/nfse", params={"ref": "erp1"}, json=sent["erp1"])
        assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")
        # DELETE with a JSON string body and no Content-Type, as the ERP sends it.
        r = c.request(
            "DELETE", "/v2/nfse/erp1", content=json.dumps({"justificativa": JUSTIFICATIVA})
        )
        assert r.status_code == 200 and r.json()["status"] == "cancelado", r.text
    cancelled = stack.wait_status("erp1", {"cancelado"})
    answer = httpx.get(stack.base + cancelled["caminho_xml_cancelamento"])  # no credentials
    assert answer.status_code == 200, answer.text
    root = ET.fromstring(answer.content)
    assert root.findtext(".//" + servico_xml_ns("MotivoCancelamento")) == JUSTIFICATIVA
    assert root.findtext(".//" + servico_xml_ns("Numero")) == cancelled["numero"]
    with stack.client() as c:
        bad = c.get("/v2/nfse/erp1", params={"completa": "talvez"})
        assert bad.status_code == 400 and bad.json()["codigo"] == "requisicao_invalida"

    events = asyncio.run(consume_all(stack.settings.kafka_bootstrap, topics.lifecycle, 9))
    last = [json.loads(r.value) for r in events if json.loads(r.value)["ref"] == "erp1"][-1]
    assert last["status"] == "cancelado"
    assert last["caminho_xml_cancelamento"] == cancelled["caminho_xml_cancelamento"]


def national(world: World) -> None:
    stack = world.stack
    sent = copy.deepcopy(ERP_NFSEN)
    with stack.client() as c:
        hook = c.post(
            "/v2/hooks",
            json={"event": "nfsen", "url": world.receiver.url("/nfsen"), "cnpj": PRESTADOR_CNPJ},
        )
        assert hook.status_code in (200, 201), hook.text
        r = c.post("/v2/nfsen", params={"ref": "nac1"}, content=json.dumps(sent))
        assert r.status_code == 202, r.text
        assert r.json() == {
            "cnpj_prestador": PRESTADOR_CNPJ,
            "ref": "nac1",
            "status": "processando_autorizacao",
        }
        bad = copy.deepcopy(ERP_NFSEN)
        bad["codigo_tributacao_nacional_iss"] = "410101"  # no such LC 116 item
        assert c.post("/v2/nfsen", params={"ref": "nac2"}, json=bad).status_code == 202
        refused = c.post("/v2/nfsen", params={"ref": "nac3"}, json={**bad, "tributacao_iss": 9})
        assert refused.status_code == 400 and "tributacao_iss" in refused.json()["mensagem"]

        def state(ref: str, want: str) -> dict[str, Any] | None:
            body: dict[str, Any] = c.get(f"/v2/nfsen/{ref}", params={"completa": 1}).json()
            return body if body.get("status") == want else None

        note = wait_for(lambda: state("nac1", "autorizado"), 20, 0.1)
        rejected = wait_for(lambda: state("nac2", "erro_autorizacao"), 20, 0.1)
        assert rejected["erros"][0]["codigo"] == "E0314" and rejected["erros"][0]["mensagem"]
        assert c.get("/v2/nfse/nac1").status_code == 404  # its own kind
        again = c.post("/v2/nfsen", params={"ref": "nac1"}, json=sent)
        assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")

    forwarded = note["requisicao_nota_fiscal"]
    expected_nfsen_at_provider(sent, forwarded)
    assert at_provider(stack, note["id"], "/v2/nfsen")["requisicao_nota_fiscal"] == forwarded
    chave = note["codigo_verificacao"]
    assert nacional.valid_chave(chave) and chave in note["url"]
    datetime.strptime(note["data_emissao"], "%Y-%m-%dT%H:%M:%S%z")
    assert httpx.get(note["url"]).status_code == 200  # the public consultation
    pdf = httpx.get(note["url_danfse"]).content
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    xml = httpx.get(stack.base + note["caminho_xml_nota_fiscal"])  # no credentials
    assert xml.status_code == 200 and chave.encode() in xml.content

    with stack.client() as c:
        r = c.request("DELETE", "/v2/nfsen/nac1", json={"justificativa": JUSTIFICATIVA})
        assert r.status_code == 200 and r.json()["status"] == "cancelado", r.text
        again = c.request("DELETE", "/v2/nfsen/nac1", json={"justificativa": JUSTIFICATIVA})
        assert again.json()["codigo"] == "nfe_cancelada"
        cancelled = c.get("/v2/nfsen/nac1").json()
    answer = httpx.get(stack.base + cancelled["caminho_xml_cancelamento"])  # no credentials
    assert answer.status_code == 200 and b"101101" in answer.content
    assert JUSTIFICATIVA.encode() in answer.content

    # The client hook (event nfsen) heard autorizado and cancelado, the latter with the
    # cancellation XML; the tomador got an e-mail for each.
    def hooked() -> list[dict[str, Any]] | None:
        bodies = [json.loads(s.body) for s in world.receiver.seen if s.path == "/nfsen"]
        return bodies if {b.get("status") for b in bodies} >= {"autorizado", "cancelado"} else None

    bodies = wait_for(hooked, 20, 0.1)
    last = [b for b in bodies if b["status"] == "cancelado"][-1]
    assert last["caminho_xml_cancelamento"] == cancelled["caminho_xml_cancelamento"]
    assert last["codigo_verificacao"] == chave
    mails = wait_for(
        lambda: (
            [m for m in world.sink.received() if sent["email_tomador"] in m.rcpt_tos][1:]
            and [m for m in world.sink.received() if sent["email_tomador"] in m.rcpt_tos]
        ),
        20,
        0.1,
    )
    assert len(mails) == 2
    # HubSoft's enviar_email names the national note by its id, like a municipal one.
    r = httpx.post(
        f"{stack.base}/api/v1/integracao/cliente/nota_fiscal/enviar_email",
        json={"id_nota_fiscal": str(note["id"]), "tipo_documento": "nfse"},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    [entry] = r.json()["emails_enviados"]
    assert entry["email_destino"] == sent["email_tomador"] and entry["enviado"] is True
