"""NFC-e through the Emites-Client TCP sandbox, driven over HTTP in the Focus NFC-e dialect (and
one command straight from Kafka): the shapes of the official Emites-Client examples,
synchronous create and cancel, the DANFE and XML served from notaflow, the 30-minute window
(shortened here), bad input refused at the door, and Emites down."""

from __future__ import annotations

import asyncio
import copy
import io
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pypdf import PdfReader

from notaflow import topics as t
from notaflow.brdocs import valid_access_key
from notaflow.envelope import Event, decode
from notaflow.launch.broker import EmbeddedBroker, free_port, port_open
from notaflow.settings import Settings
from testkit.kafka import read_topic
from testkit.nfce_documents import (
    EMPTY_OPTIONAL_TEXTS,
    FOREIGN_ID,
    OFFICIAL_SHAPES,
    foreign_customer_mfe,
    international_with_address,
    valid_nfce,
)
from testkit.processes import Proc
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for

CNPJ = "51916585000125"
CANCEL_WINDOW = 4.0


@pytest.fixture(scope="module")
def sink() -> Iterator[ThreadedSmtpSink]:
    s = ThreadedSmtpSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, sink: ThreadedSmtpSink
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("nfce")
    emites_port = free_port()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"c{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'nf.db'}",
        consumer_retry_base=0.2,
        consumer_retry_max=0.5,
        consumer_max_attempts=5,
        emites_host="127.0.0.1",
        emites_port=emites_port,
        emites_cnpj=CNPJ,
        emites_timeout=5.0,
        nfce_wait=8.0,
        **sink.settings(),
        smtp_pause=0.05,
    )
    emites = Proc(
        ["sandbox", "emites", "--port", str(emites_port), "--cnpj", CNPJ,
         "--cancel-window", str(CANCEL_WINDOW)],
        settings.env(), tmp, "sandbox-emites",
    )  # fmt: skip
    wait_for(lambda: port_open("127.0.0.1", emites_port), 15)
    s = Stack(settings, tmp, consumers=("emission", "cancellation", "notification")).start()
    s.procs.insert(0, emites)
    yield s
    s.stop()


def test_create_download_cancel(stack: Stack, sink: ThreadedSmtpSink) -> None:
    with stack.client() as c:
        r = c.post("/v2/nfce", params={"ref": "v1"}, json=valid_nfce())
        assert r.status_code == 201, r.text
        note = r.json()
        assert note["status"] == "autorizado" and note["cnpj_emitente"] == CNPJ
        assert valid_access_key(note["chave_nfe"]) and note["chave_nfe"][20:22] == "65"
        assert len(note["protocolo"]) == 15 and note["numero"] and note["serie"]
        pdf = c.get(note["caminho_danfe"])
        assert pdf.headers["content-type"] == "application/pdf"
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
        assert note["numero"] in text
        assert c.get(note["caminho_xml_nota_fiscal"]).content.startswith(b"<")
        assert c.get("/v2/nfce/v1").json()["status"] == "autorizado"
        again = c.post("/v2/nfce", params={"ref": "v1"}, json=valid_nfce())
        assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")
        short = c.request("DELETE", "/v2/nfce/v1", json={"justificativa": "curta"})
        assert short.status_code == 400
        cancelled = c.request(
            "DELETE", "/v2/nfce/v1", json={"justificativa": "Cliente desistiu da compra"}
        )
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelado")
        twice = c.request(
            "DELETE", "/v2/nfce/v1", json={"justificativa": "Cliente desistiu da compra"}
        )
        assert (twice.status_code, twice.json()["codigo"]) == (400, "nfe_cancelada")

    # The customer gets the authorized note with its DANFE attached, then the cancellation.
    def to_customer() -> list[Any]:
        return [m for m in sink.received() if "jose@example.com" in m.rcpt_tos]

    mails = wait_for(lambda: len(to_customer()) >= 2 and to_customer(), 15)
    authorized = next(m.message for m in mails if "autorizada" in str(m.message["Subject"]))
    [attachment] = list(authorized.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content().startswith(b"%PDF")
    assert note["chave_nfe"] in authorized.get_body(("plain",)).get_content()
    assert any("cancelada" in str(m.message["Subject"]) for m in mails)


def test_cancel_after_the_window_is_refused_501(stack: Stack) -> None:
    with stack.client() as c:
        assert c.post("/v2/nfce", params={"ref": "late1"}, json=valid_nfce()).status_code == 201
        time.sleep(CANCEL_WINDOW + 1)
        r = c.request(
            "DELETE", "/v2/nfce/late1", json={"justificativa": "Cliente desistiu da compra"}
        )
        body = r.json()
        assert body["status"] == "erro_cancelamento", body
        assert body["erros"][0]["mensagem"].startswith("501")
        assert c.get("/v2/nfce/late1").json()["status"] == "autorizado"


def test_sefaz_rejection_and_bad_input(stack: Stack) -> None:
    doc = valid_nfce()
    doc["produtos"][0]["ncm"] = "00"
    with stack.client() as c:
        r = c.post("/v2/nfce", params={"ref": "rej1"}, json=doc)
        assert r.status_code == 422, r.text
        assert r.json()["status"] == "erro_autorizacao"
        assert any(e["mensagem"].startswith("471") for e in r.json()["erros"])
        bad = copy.deepcopy(valid_nfce())
        bad["indicador_presenca"] = 7
        r = c.post("/v2/nfce", params={"ref": "bad1"}, json=bad)
        assert r.status_code == 400 and "indicador_presenca" in r.json()["mensagem"]
        r = c.post("/v2/nfce", params={"ref": "bad2"}, json={**valid_nfce(), "produtos": []})
        assert r.status_code == 400 and "produtos" in r.json()["mensagem"]
        assert c.get("/v2/nfce/bad1").status_code == 404


# --- the shapes of the official Emites-Client examples ------------------------------------

NS = {"n": "http://www.portalfiscal.inf.br/nfe"}


def _issue_fetch_cancel(c: httpx.Client, ref: str, document: dict[str, Any]) -> ET.Element:
    """POST the document, check the authorized note and its DANFE, cancel it; the XML Emites
    returned (what the sandbox read off the wire) for the caller to look into."""
    r = c.post("/v2/nfce", params={"ref": ref}, json=document)
    assert r.status_code == 201, r.text
    note = r.json()
    assert note["status"] == "autorizado" and valid_access_key(note["chave_nfe"])
    pdf = c.get(note["caminho_danfe"])
    assert pdf.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert note["numero"] in text
    xml = ET.fromstring(c.get(note["caminho_xml_nota_fiscal"]).content)
    cancelled = c.request(
        "DELETE", f"/v2/nfce/{ref}", json={"justificativa": "Cliente desistiu da compra"}
    )
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelado"), cancelled.text
    return xml


@pytest.mark.parametrize("shape", sorted(OFFICIAL_SHAPES))
def test_official_shapes_are_authorized_and_cancelled(stack: Stack, shape: str) -> None:
    document = OFFICIAL_SHAPES[shape]()
    with stack.client() as c:
        xml = _issue_fetch_cancel(c, "of" + shape.replace("-", ""), document)
    dest = xml.find(".//n:dest", NS)
    assert dest is not None
    if shape == "foreign-customer-mfe":
        assert dest.findtext("n:idEstrangeiro", namespaces=NS) == FOREIGN_ID
    else:
        # The IBGE and BACEN codes reached Emites, whichever JSON type the client wrote.
        assert dest.findtext("n:CPF", namespaces=NS) == "02558352482"
        assert dest.findtext("n:enderDest/n:cMun", namespaces=NS) == "5300108"
        assert dest.findtext("n:enderDest/n:cPais", namespaces=NS) == "1058"


def test_empty_optional_texts_are_omitted_and_said_so(stack: Stack) -> None:
    # The sandbox, like Emites-Client, refuses any "" it receives: the 201 shows none left.
    with stack.client() as c:
        r = c.post(
            "/v2/nfce",
            params={"ref": "ofavisos"},
            json=OFFICIAL_SHAPES["empty-optional-texts"](),
        )
        assert r.status_code == 201, r.text
        avisos = r.json()["avisos"]
    named = {aviso.split('"')[1] for aviso in avisos}
    assert named == {*EMPTY_OPTIONAL_TEXTS, "produtos.0.informacoes_adicionais"}
    assert all("omitido no envio à Emites-Client" in aviso for aviso in avisos)
    with stack.client() as c:
        assert c.get("/v2/nfce/ofavisos").json()["avisos"] == avisos  # kept with the note


def test_foreign_customer_abroad_is_sefaz_s_call(stack: Stack) -> None:
    """The official international example: the door takes it, Emites takes it, and SEFAZ
    refuses a foreign country in an internal operation (511), as it would for real."""
    with stack.client() as c:
        r = c.post("/v2/nfce", params={"ref": "ofintl"}, json=international_with_address())
        assert r.status_code == 422, r.text
        assert r.json()["status"] == "erro_autorizacao"
        assert [e["mensagem"][:3] for e in r.json()["erros"]] == ["511"]
        # In a delivery that is not presencial, a foreign customer is refused too (722).
        r = c.post("/v2/nfce", params={"ref": "ofintl2"},
                   json={**foreign_customer_mfe(), "indicador_presenca": 4})  # fmt: skip
        assert [e["mensagem"][:3] for e in r.json()["erros"]] == ["722"], r.text


def create_on_kafka(stack: Stack, ref: str, document: dict[str, Any]) -> t.Topics:
    """NFCE_CREATE published by a producer that skips the HTTP door; the stack's topics."""
    event = Event(
        type=t.NFCE_CREATE,
        source="test/producer",
        data={"tenant": "acme", "ref": ref, "nfce": document},
        subject=ref,
        id=str(uuid.uuid4()),
        tenant="acme",
    )
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    key = t.document_key("acme", "nfce", ref)
    asyncio.run(_publish(stack.settings.kafka_bootstrap, topics.nfce_commands, key, event))
    return topics


async def _publish(bootstrap: str, topic: str, key: bytes, event: Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, event.value(), key=key, headers=event.headers())
    finally:
        await producer.stop()


def test_a_command_straight_to_kafka_takes_the_same_shapes(stack: Stack) -> None:
    """A producer that skips the HTTP door and publishes NFCE_CREATE itself: digit-string
    codes, "" texts and a foreign customer are normalised by the consumer the same way."""
    document = foreign_customer_mfe()
    document["indicador_presenca"] = "1"
    document["produtos"][0]["codigo_origem_produto"] = "0"
    ref = "ofkafka1"
    create_on_kafka(stack, ref, document)
    with stack.client() as c:
        note = wait_for(
            lambda: (n := c.get(f"/v2/nfce/{ref}").json()).get("status") == "autorizado" and n, 20
        )
        xml = ET.fromstring(c.get(note["caminho_xml_nota_fiscal"]).content)
    assert xml.findtext(".//n:dest/n:idEstrangeiro", namespaces=NS) == FOREIGN_ID
    assert xml.findtext(".//n:ide/n:indPres", namespaces=NS) == "1"
    # The "" the producer sent is said with the note, as the HTTP answer says it.
    assert note["avisos"] == [
        'Parâmetro "produtos.0.informacoes_adicionais" vazio: omitido no envio à Emites-Client'
    ]


def test_a_command_straight_to_kafka_re_sends_the_error_it_takes_the_ref_from(
    stack: Stack,
) -> None:
    """SEFAZ rejected the first attempt; a producer re-creates the ref straight on Kafka. The
    consumer that takes the ref sends the rejection's event again before anything of the new
    attempt (its writer may have died before sending it), under the same id."""
    rejected = valid_nfce()
    rejected["produtos"][0]["ncm"] = "00"
    ref = "rekafka1"
    with stack.client() as c:
        assert c.post("/v2/nfce", params={"ref": ref}, json=rejected).status_code == 422
    topics = create_on_kafka(stack, ref, valid_nfce())

    def of_the_note() -> list[Event]:
        records = read_topic(stack.settings.kafka_bootstrap, topics.lifecycle)
        return [e for r in records if (e := decode(r.headers, r.value)).subject == ref]

    events = wait_for(lambda: (e := of_the_note()) and e[-1].status == "autorizado" and e, 20)
    first, again, *later = events
    assert first.status == again.status == "erro_autorizacao" and first.id == again.id
    assert first.id.endswith("-1-erro_autorizacao")
    assert later and all(e.id.split("-")[2] == "2" for e in later)


# Last: it stops the Emites sandbox the other tests use.
def test_emites_down_leaves_a_consistent_state(stack: Stack) -> None:
    emites = next(p for p in stack.procs if p.name == "sandbox-emites")
    emites.stop()
    with stack.client() as c:
        r = c.post("/v2/nfce", params={"ref": "down1"}, json=valid_nfce())
        # Nothing reached Emites: the note stays in processing (retried), never half-issued.
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "processando_autorizacao"
        assert c.get("/v2/nfce/down1").json()["status"] == "processando_autorizacao"
    assert httpx.get(f"{stack.base}/healthz").status_code == 200
