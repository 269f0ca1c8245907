"""NFC-e through the Emites-Client TCP sandbox, driven over HTTP in the Focus NFC-e dialect:
synchronous create and cancel, the DANFE and XML served from notaflow, the 30-minute window
(shortened here), bad input refused at the door, and Emites down."""

from __future__ import annotations

import copy
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from notaflow.brdocs import valid_access_key
from notaflow.broker import EmbeddedBroker, free_port, port_open
from notaflow.settings import Settings
from tests.emites import valid_nfce
from tests.support import Proc, Stack, ThreadedSmtpSink, wait_for

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
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="none",
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
