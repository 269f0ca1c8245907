"""consumers.providers.emites against sandbox.emites over real TCP on 127.0.0.1.

Each test gets a fresh sandbox on a free port (the kernel picks it), so numbering and notes
start over and behaviours flipped by one test never leak into another.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pypdf import PdfReader

from notaflow.brdocs import access_key_check_digit, valid_access_key
from notaflow.consumers.providers.emites import EmitesClient, EmitesReply
from notaflow.emites_wire import Frame, FrameDecoder, encode_frame
from notaflow.errors import Permanent, Transient
from notaflow.launch.broker import free_port
from notaflow.nfce import normalize_nfce
from notaflow.sandbox import emites_rules as rules
from notaflow.sandbox.emites import EmitesSandbox, EmitesSandboxConfig, serve_emites_sandbox
from testkit.nfce_documents import FOREIGN_ID, OFFICIAL_SHAPES, SPEC_KEYS, valid_nfce

MOTIVO = "Desistência do comprador"


@pytest.fixture
async def sandbox() -> AsyncIterator[EmitesSandbox]:
    server = EmitesSandbox(EmitesSandboxConfig())
    await server.start("127.0.0.1", 0)
    yield server
    await server.aclose()


@pytest.fixture
async def client(sandbox: EmitesSandbox) -> AsyncIterator[EmitesClient]:
    emites = EmitesClient(
        "127.0.0.1", sandbox.port, pool_size=4, connect_timeout=2, request_timeout=3
    )
    yield emites
    await emites.aclose()


def document(codigo: str = "P1", **changes: Any) -> dict[str, Any]:
    """What the emission consumer sends: a normalised document; `codigo` tags product 0."""
    raw = valid_nfce(**changes)
    raw["produtos"][0]["codigo_produto"] = codigo
    return normalize_nfce(raw)


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


async def raw_exchange(port: int, data: bytes, timeout: float = 2.0) -> list[Frame] | None:
    """Send raw bytes; the frames answered, or None if the sandbox closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        decoder = FrameDecoder()
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return None
                if frames := decoder.feed(chunk):
                    return frames
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- happy path ---------------------------------------------------------------------------


async def test_create_then_cancel(client: EmitesClient) -> None:
    sent = document()
    reply = await client.create_nfce(sent)

    assert reply.status == "sucesso", reply.erros
    assert (reply.numero, reply.serie) == ("1", "1")
    key = reply.chave_acesso
    assert key is not None and valid_access_key(key)
    assert key[:2] == "53" and key[6:20] == "22769530000131" and key[20:22] == "65"
    assert (key[22:25], key[25:34]) == ("001", "000000001")
    assert reply.numero_protocolo is not None and len(reply.numero_protocolo) == 15
    assert reply.numero_protocolo.isdigit()
    assert reply.data_emissao is not None and reply.data_emissao.endswith("Z")
    assert reply.codigo_verificacao
    assert reply.danfe_url and reply.xml_url and key in reply.danfe_url
    assert reply.erros == {}

    # The request is echoed, with taxes per product; the blobs are out of `body`.
    assert reply.body["natureza_operacao"] == sent["natureza_operacao"]
    assert [p["codigo_produto"] for p in reply.body["produtos"]] == ["P1", "P2"]
    assert all("tributacao" in p for p in reply.body["produtos"])
    assert "danfe" not in reply.body and "xml" not in reply.body
    assert reply.body["resposta_emissao"]["chave_acesso"] == key

    # A real DANFE: a PDF naming the number, series, key, issuer, items and total.
    assert reply.danfe is not None and reply.danfe.startswith(b"%PDF")
    text = pdf_text(reply.danfe)
    assert "000000001" in text and "Série 001" in text
    assert " ".join(key[i : i + 4] for i in range(0, 44, 4)) in text
    assert "22769530000131" in text
    assert "Cerveja pilsen 350 ml" in text and "Pão de queijo" in text
    assert "30,50" in text

    assert reply.xml is not None
    root = ET.fromstring(reply.xml)
    ns = {"nfe": "http://www.portalfiscal.inf.br/nfe"}
    assert root.findtext(".//nfe:chNFe", namespaces=ns) == key
    assert root.findtext(".//nfe:nProt", namespaces=ns) == reply.numero_protocolo

    cancel = await client.cancel_nfce(key, MOTIVO)
    assert cancel.status == "cancelada", cancel.erros
    assert cancel.chave_acesso == key
    assert cancel.cancel_xml_url and key in cancel.cancel_xml_url
    assert cancel.numero_protocolo and len(cancel.numero_protocolo) == 15
    assert cancel.numero_protocolo != reply.numero_protocolo
    assert cancel.danfe is None

    again = await client.cancel_nfce(key)
    assert again.status == "cancelamento_rejeitado"
    assert again.erros["rejeicao"][0].startswith("218 - ")


@pytest.mark.parametrize("shape", sorted(OFFICIAL_SHAPES))
async def test_the_wire_carries_the_official_shapes(client: EmitesClient, shape: str) -> None:
    """What the sandbox read off the wire (it echoes the request) is the normalised document:
    integer codes as JSON integers, the foreign id as sent, no "" (the sandbox refuses one)."""
    sent = normalize_nfce(OFFICIAL_SHAPES[shape]())
    reply = await client.create_nfce(sent)
    assert reply.status == "sucesso", reply.erros
    echoed = {k: v for k, v in reply.body.items() if k in sent}
    echoed["produtos"] = [
        {k: v for k, v in p.items() if k != "tributacao"} for p in echoed["produtos"]
    ]
    assert echoed == sent
    cliente = reply.body["cliente"]
    if shape == "foreign-customer-mfe":
        assert (cliente["cpf_cnpj"], cliente["pessoa_fisica_juridica"]) == (FOREIGN_ID, "foreign")
    else:
        assert cliente["endereco"]["codigo_municipio"] == 5300108
        assert type(cliente["endereco"]["codigo_pais"]) is int
        assert type(reply.body["indicador_presenca"]) is int


async def test_numbers_are_sequential_per_series(client: EmitesClient) -> None:
    first = [await client.create_nfce(document()) for _ in range(3)]
    assert [r.numero for r in first] == ["1", "2", "3"]
    other = await client.create_nfce({**document(), "serie": 7})
    assert (other.serie, other.numero) == ("7", "1")
    assert other.chave_acesso is not None and other.chave_acesso[22:25] == "007"
    assert (await client.create_nfce(document())).numero == "4"
    assert len({r.chave_acesso for r in first}) == 3


async def test_sefaz_rejection_ncm_00(client: EmitesClient) -> None:
    sent = document()
    sent["produtos"][0]["ncm"] = "00"
    reply = await client.create_nfce(sent)
    assert reply.status == "rejeitada"
    assert reply.erros == {"rejeicao": ["471 - Rejeição: Informado NCM=00 indevidamente"]}
    assert reply.chave_acesso is None and reply.danfe is None
    assert reply.body["produtos"][0]["ncm"] == "00"  # echoed


async def test_sandbox_validates_on_its_own(client: EmitesClient) -> None:
    # Sent without notaflow.nfce in between: the sandbox answers field by field.
    raw = valid_nfce(produtos=None, indicador_presenca=7)
    raw["cliente"]["email"] = ""
    reply = await client.create_nfce(raw)
    assert reply.status == "rejeitada"
    assert reply.erros["produtos"] == ["não pode ser nulo"]
    assert reply.erros["cliente.email"] == ["não pode ser vazio"]
    assert "indicador_presenca" in reply.erros


async def test_payments_below_the_total_are_refused(client: EmitesClient) -> None:
    sent = document()
    sent["forma_pagamento"][0]["valor_do_pagamento"] = 10
    reply = await client.create_nfce(sent)
    assert reply.status == "rejeitada"
    assert reply.erros["rejeicao"][0].startswith("865 - ")


# --- cancellation window and rejections ---------------------------------------------------


async def test_cancel_after_31_minutes_is_rejected_501(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    key = (await client.create_nfce(document())).chave_acesso
    assert key is not None
    sandbox.advance(31 * 60)
    reply = await client.cancel_nfce(key, MOTIVO)
    assert reply.status == "cancelamento_rejeitado"
    assert reply.erros == {
        "rejeicao": ["501 - Rejeicao: Prazo de Cancelamento Superior ao Previsto na Legislacao"]
    }


async def test_cancel_at_29_minutes_is_accepted(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    key = (await client.create_nfce(document())).chave_acesso
    assert key is not None
    sandbox.config.advance(29 * 60)
    assert (await client.cancel_nfce(key)).status == "cancelada"


async def test_cancel_of_a_key_never_issued(client: EmitesClient) -> None:
    reply = await client.cancel_nfce(SPEC_KEYS[0], MOTIVO)
    assert reply.status == "cancelamento_rejeitado"
    assert reply.erros["rejeicao"][0].startswith("217 - ")


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"motivo": MOTIVO}, "chave_acesso", "não pode ser nulo"),
        ({"chave_acesso": SPEC_KEYS[0][:43] + "1"}, "chave_acesso", "dígito verificador"),
        ({"chave_acesso": "123"}, "chave_acesso", "44 dígitos"),
        ({"chave_acesso": SPEC_KEYS[0], "motivo": "curto"}, "motivo", "entre 15 e 255"),
        ({"chave_acesso": SPEC_KEYS[0], "motivo": "x" * 256}, "motivo", "entre 15 e 255"),
    ],
)
async def test_sandbox_rejects_malformed_cancellations(
    sandbox: EmitesSandbox, payload: dict[str, Any], field: str, words: str
) -> None:
    frames = await raw_exchange(sandbox.port, encode_frame("CANCEL_NFCE", payload))
    assert frames is not None and len(frames) == 1
    assert frames[0].identifier == "CANCEL_NFCE"
    answer = frames[0].payload
    assert answer["status"] == "rejeitada"
    assert any(words in message for message in answer["erros"][field])


async def test_client_refuses_malformed_cancellations_without_sending(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    bad_dv = SPEC_KEYS[0][:43] + str((int(SPEC_KEYS[0][43]) + 1) % 10)
    nfe_key = SPEC_KEYS[0][:20] + "55" + SPEC_KEYS[0][22:43]
    nfe_key += access_key_check_digit(nfe_key)
    for key in (bad_dv, "123", nfe_key):
        with pytest.raises(Permanent, match="not an NFC-e access key"):
            await client.cancel_nfce(key)
    with pytest.raises(Permanent, match="motivo"):
        await client.cancel_nfce(SPEC_KEYS[0], "curto")
    assert sandbox.stats["requests"] == 0


# --- protocol edges, server side ----------------------------------------------------------


async def test_unknown_identifier_gets_an_error_frame(sandbox: EmitesSandbox) -> None:
    frames = await raw_exchange(sandbox.port, encode_frame("TESTE", '{ "teste": "teste" }'))
    assert frames is not None
    assert frames[0].identifier == "TESTE"
    assert frames[0].payload["status"] == "erro"
    assert "TESTE" in frames[0].payload["erros"]["identificador"][0]


@pytest.mark.parametrize(
    "data",
    [b"garbage\r\n", b"05:A:{}", b"6:A:xyz", b"9" * 12, b"7:CREATE_NFCE"],
)
async def test_garbage_or_oversize_input_closes_the_connection(
    sandbox: EmitesSandbox, data: bytes
) -> None:
    assert await raw_exchange(sandbox.port, data) is None
    assert sandbox.stats["garbage_received"] == 1


async def test_requests_on_one_connection_are_answered_in_order(sandbox: EmitesSandbox) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sandbox.port)
    # Pipelined, though clients should not: the sandbox still answers one by one, in order.
    writer.write(
        encode_frame("CREATE_NFCE", document("A"))
        + encode_frame("TESTE", {})
        + encode_frame("CREATE_NFCE", document("B"))
    )
    decoder = FrameDecoder()
    frames: list[Frame] = []
    async with asyncio.timeout(5):
        while len(frames) < 3:
            frames += decoder.feed(await reader.read(65536))
    writer.close()
    assert [f.identifier for f in frames] == ["CREATE_NFCE", "TESTE", "CREATE_NFCE"]
    assert [frames[0].payload["nfe_numero"], frames[2].payload["nfe_numero"]] == [1, 2]
    assert frames[2].payload["produtos"][0]["codigo_produto"] == "B"


# --- the pool -----------------------------------------------------------------------------


async def test_50_concurrent_creates_over_4_connections(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    tags = [f"C{n:03d}" for n in range(50)]
    replies = await asyncio.gather(*(client.create_nfce(document(tag)) for tag in tags))

    assert all(reply.status == "sucesso" for reply in replies)
    # Each answer is its own request's: the echoed product code matches.
    assert [reply.body["produtos"][0]["codigo_produto"] for reply in replies] == tags
    assert sorted(int(reply.numero or 0) for reply in replies) == list(range(1, 51))
    assert len({reply.chave_acesso for reply in replies}) == 50
    # The DANFE travelled with its own answer too.
    for reply in replies[:5]:
        assert reply.danfe is not None
        assert reply.body["produtos"][0]["codigo_produto"] in pdf_text(reply.danfe)
    assert client.connections_opened <= 4
    assert sandbox.stats["connections"] == client.connections_opened


async def test_connections_are_reused(client: EmitesClient) -> None:
    for _ in range(5):
        await client.create_nfce(document())
    assert client.connections_opened == 1


# --- failures -----------------------------------------------------------------------------


async def test_dropped_connection_is_transient_and_the_next_call_reconnects(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    await client.create_nfce(document())
    sandbox.set_behaviour(drop_connections=True)
    with pytest.raises(Transient, match="closed the connection") as caught:
        await client.create_nfce(document())
    assert caught.value.retriable
    sandbox.normal()
    reply = await client.create_nfce(document("AFTER"))
    assert reply.status == "sucesso"
    assert reply.body["produtos"][0]["codigo_produto"] == "AFTER"
    assert client.connections_opened == 2


async def test_idle_connection_closed_by_the_service_is_not_picked(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    await client.create_nfce(document())
    await sandbox.aclose()  # a restart: every connection goes
    await sandbox.start("127.0.0.1", client.port)
    await asyncio.sleep(0.05)
    assert (await client.create_nfce(document())).status == "sucesso"
    assert client.connections_opened == 2


async def test_stall_times_out_and_the_connection_is_not_reused(
    sandbox: EmitesSandbox,
) -> None:
    client = EmitesClient("127.0.0.1", sandbox.port, pool_size=1, request_timeout=0.3)
    try:
        sandbox.set_behaviour(stall=True)
        with pytest.raises(Transient, match=r"no answer within 0\.3 s") as caught:
            await client.create_nfce(document("STALLED"))
        assert "check before creating it again" in str(caught.value)
        sandbox.normal()
        reply = await client.create_nfce(document("NEXT"))
        assert reply.body["produtos"][0]["codigo_produto"] == "NEXT"
        assert client.connections_opened == 2
    finally:
        await client.aclose()


async def test_a_late_answer_never_reaches_a_later_request(sandbox: EmitesSandbox) -> None:
    client = EmitesClient("127.0.0.1", sandbox.port, pool_size=1, request_timeout=0.3)
    try:
        sandbox.set_behaviour(answer_delay=0.6)
        with pytest.raises(Transient, match="no answer"):
            await client.create_nfce(document("LATE"))
        sandbox.normal()
        # Asked while the late answer is still on its way, and again after it went out.
        first = await client.create_nfce(document("FIRST"))
        await asyncio.sleep(0.5)
        second = await client.create_nfce(document("SECOND"))
        assert first.body["produtos"][0]["codigo_produto"] == "FIRST"
        assert second.body["produtos"][0]["codigo_produto"] == "SECOND"
        assert sandbox.stats["answers"] == 3  # the late one was written, to a dead socket
        assert client.connections_opened == 2
    finally:
        await client.aclose()


async def test_garbage_answer_is_transient(client: EmitesClient, sandbox: EmitesSandbox) -> None:
    sandbox.set_behaviour(garbage=True)
    with pytest.raises(Transient, match="garbage from Emites"):
        await client.create_nfce(document())
    sandbox.normal()
    assert (await client.create_nfce(document())).status == "sucesso"
    assert client.connections_opened == 2


async def test_non_latin1_payload_is_permanent_and_names_the_field(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    sent = document()
    sent["produtos"][1]["descricao"] = "Café ☕"
    with pytest.raises(Permanent, match=r"'produtos\.1\.descricao'") as caught:
        await client.create_nfce(sent)
    assert not caught.value.retriable
    assert sandbox.stats["requests"] == 0


async def test_connection_refused_is_transient() -> None:
    client = EmitesClient("127.0.0.1", free_port(), connect_timeout=1)
    with pytest.raises(Transient, match="cannot connect"):
        await client.create_nfce(document())
    await client.aclose()


async def test_answer_under_another_identifier_is_transient(sandbox: EmitesSandbox) -> None:
    # A fake service that answers every request as TESTE.
    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(encode_frame("TESTE", {"status": "sucesso"}))
        await writer.drain()
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(wrong, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = EmitesClient("127.0.0.1", port, request_timeout=2)
    try:
        with pytest.raises(Transient, match="answered as TESTE"):
            await client.create_nfce(document())
    finally:
        await client.aclose()
        server.close()


async def test_unknown_status_is_transient() -> None:
    with pytest.raises(Transient, match="unknown status"):
        EmitesReply.from_payload({"status": "autorizado"})
    with pytest.raises(Transient, match="base64"):
        EmitesReply.from_payload({"status": "sucesso", "danfe": "%%%"})


def test_reply_reads_numero_and_loose_erros() -> None:
    reply = EmitesReply.from_payload(
        {"status": "rejeitada", "numero": 12, "erros": {"a": "x", "b": ["y", 1]}}
    )
    assert reply.numero == "12"
    assert reply.erros == {"a": ["x"], "b": ["y", "1"]}


async def test_closed_client_refuses_calls(client: EmitesClient) -> None:
    await client.create_nfce(document())
    await client.aclose()
    with pytest.raises(Transient, match="client closed"):
        await client.create_nfce(document())


async def test_cancelled_caller_discards_its_connection(
    client: EmitesClient, sandbox: EmitesSandbox
) -> None:
    sandbox.set_behaviour(answer_delay=0.3)
    task = asyncio.ensure_future(client.create_nfce(document("CANCELLED")))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sandbox.normal()
    await asyncio.sleep(0.3)
    reply = await client.create_nfce(document("MINE"))
    assert reply.body["produtos"][0]["codigo_produto"] == "MINE"
    assert client.connections_opened == 2


# --- running it ---------------------------------------------------------------------------


async def test_serve_emites_sandbox_runs_until_cancelled() -> None:
    started: asyncio.Future[EmitesSandbox] = asyncio.get_running_loop().create_future()
    port = free_port()
    task = asyncio.ensure_future(
        serve_emites_sandbox(EmitesSandboxConfig(), "127.0.0.1", port, started.set_result)
    )
    server = await asyncio.wait_for(started, 5)
    assert server.port == port
    client = EmitesClient("127.0.0.1", port)
    try:
        assert (await client.create_nfce(document())).status == "sucesso"
    finally:
        await client.aclose()
    task.cancel()
    await asyncio.wait_for(task, 5)
    with pytest.raises(Transient, match="cannot connect"):
        await EmitesClient("127.0.0.1", port, connect_timeout=1).create_nfce(document())


def test_rules_access_key_layout() -> None:
    from datetime import UTC, datetime

    key = rules.access_key(rules.Emitente(), datetime(2018, 9, 1, tzinfo=UTC), 111, 128)
    assert key[:20] == SPEC_KEYS[0][:20] and key[20:34] == SPEC_KEYS[0][20:34]
    assert valid_access_key(key)
