"""The Focus sandbox over real HTTP: a uvicorn server on a free port and a real hook receiver."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notaflow.sandbox.focus import FocusSandboxConfig, create_focus_sandbox, serve_focus_sandbox

TOKEN = "tok-123"
CNPJ = "51916585000125"
JUSTIFICATIVA = "Serviço não prestado ao cliente"
FAST = {"processing_delay": 0.05, "callback_retry_delays": [0.05, 0.1]}


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Runs `app` under uvicorn on a port the OS picks; always stops it."""
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says
    # TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Receiver:
    """A hook endpoint that records every delivery and can fail the first ones."""

    url: str = ""
    fail_first: int = 0
    calls: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        async with self.arrived:
            self.calls.append((dict(request.headers), body))
            self.arrived.notify_all()
        if len(self.calls) <= self.fail_first:
            return JSONResponse({"erro": "falha simulada"}, status_code=503)
        return JSONResponse({"ok": True})

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.calls) >= count), timeout)
        return [body for _, body in self.calls]


@dataclass
class Sandbox:
    url: str
    api: httpx.AsyncClient
    anon: httpx.AsyncClient

    async def post(self, ref: str, doc: dict[str, Any]) -> httpx.Response:
        return await self.api.post("/v2/nfse", params={"ref": ref}, json=doc)

    async def wait_status(self, ref: str, status: str, timeout: float = 3.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = (await self.api.get(f"/v2/nfse/{ref}")).json()
            if body.get("status") == status or time.monotonic() > deadline:
                assert body.get("status") == status, body
                return body
            await asyncio.sleep(0.02)

    async def cancel(self, ref: str, justificativa: str = JUSTIFICATIVA) -> httpx.Response:
        return await self.api.request(
            "DELETE", f"/v2/nfse/{ref}", json={"justificativa": justificativa}
        )

    async def hook(self, url: str, **extra: Any) -> httpx.Response:
        return await self.api.post("/v2/hooks", json={"event": "nfse", "url": url, **extra})

    async def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.anon.get("/_sandbox/stats")).json()
        return body


@asynccontextmanager
async def running_sandbox(**overrides: Any) -> AsyncIterator[Sandbox]:
    config = FocusSandboxConfig(**{**FAST, **overrides})
    async with (
        serving(create_focus_sandbox(config)) as url,
        httpx.AsyncClient(base_url=url, auth=(TOKEN, "")) as api,
        httpx.AsyncClient(base_url=url) as anon,
    ):
        yield Sandbox(url, api, anon)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook_receiver = Receiver()
    app = Starlette(routes=[Route("/focus", hook_receiver.handle, methods=["POST"])])
    async with serving(app) as url:
        hook_receiver.url = f"{url}/focus"
        yield hook_receiver


def nfse(discriminacao: str = "Consultoria", cnpj: str = CNPJ, **extra: Any) -> dict[str, Any]:
    return {
        "data_emissao": "2024-05-27T10:00:00-03:00",
        "prestador": {"cnpj": cnpj, "inscricao_municipal": "12345", "codigo_municipio": "4106902"},
        "tomador": {"cnpj": "07504505000132", "razao_social": "ACME"},
        "servico": {
            "aliquota": 3,
            "discriminacao": discriminacao,
            "iss_retido": "false",
            "item_lista_servico": "0107",
            "valor_servicos": "1.00",
        },
        **extra,
    }


# -- emission ------------------------------------------------------------------------------


async def test_post_processing_then_authorized_with_hook(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    hook = await sandbox.hook(receiver.url, cnpj=CNPJ, authorization="Bearer s3cret")
    assert hook.status_code == 200

    posted = await sandbox.post("nf1", nfse())
    assert posted.status_code == 202
    assert posted.json() == {
        "cnpj_prestador": CNPJ,
        "ref": "nf1",
        "status": "processando_autorizacao",
    }
    processing = (await sandbox.api.get("/v2/nfse/nf1")).json()
    assert processing == {
        "cnpj_prestador": CNPJ, "ref": "nf1", "numero_rps": "1", "serie_rps": "1",
        "status": "processando_autorizacao",
    }  # fmt: skip

    [delivered] = await receiver.wait_for(1)
    authorized = await sandbox.wait_status("nf1", "autorizado")
    assert delivered == authorized
    assert receiver.calls[0][0]["authorization"] == "Bearer s3cret"
    assert set(authorized) == {
        "cnpj_prestador", "ref", "numero_rps", "serie_rps", "tipo_rps", "status", "numero",
        "codigo_verificacao", "data_emissao", "url", "url_danfse", "caminho_xml_nota_fiscal",
    }  # fmt: skip
    assert authorized["numero"] == "1"
    assert authorized["data_emissao"].endswith("-03:00")
    assert authorized["url"] == f"{sandbox.url}/nfse/{CNPJ}/1"

    xml = await sandbox.anon.get(authorized["caminho_xml_nota_fiscal"])
    assert xml.status_code == 200 and authorized["codigo_verificacao"].encode() in xml.content
    espelho = await sandbox.anon.get(authorized["url"])
    assert espelho.status_code == 200 and "text/html" in espelho.headers["content-type"]
    danfse = await sandbox.anon.get(authorized["url_danfse"])
    assert danfse.content.startswith(b"%PDF-") and danfse.content.rstrip().endswith(b"%%EOF")

    stats = await sandbox.stats()
    assert stats["emissions"] == {"nf1": 1} and stats["authorizations"] == {"nf1": 1}
    assert stats["callbacks"] == {"sent": 1, "failed": 0, "given_up": 0, "dropped": 0}


async def test_hook_custom_header_and_company_filter(sandbox: Sandbox, receiver: Receiver) -> None:
    await sandbox.hook(receiver.url, authorization="k1", authorization_header="X-Focus-Key")
    await sandbox.hook(receiver.url, cnpj="07504505000132")  # another company: not fired
    await sandbox.post("nf1", nfse())
    await receiver.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(receiver.calls) == 1
    assert receiver.calls[0][0]["x-focus-key"] == "k1"


async def test_numero_is_sequential_per_prestador(sandbox: Sandbox) -> None:
    for ref, cnpj in [("a", CNPJ), ("b", CNPJ), ("c", "07504505000132")]:
        assert (await sandbox.post(ref, nfse(cnpj=cnpj))).status_code == 202
    numeros = [(await sandbox.wait_status(ref, "autorizado"))["numero"] for ref in "abc"]
    assert numeros == ["1", "2", "1"]


async def test_erro_then_repost_of_same_ref_allowed(sandbox: Sandbox, receiver: Receiver) -> None:
    await sandbox.hook(receiver.url)
    await sandbox.post("nf1", nfse("Teste [sandbox:erro]"))
    rejected = await sandbox.wait_status("nf1", "erro_autorizacao")
    assert rejected["erros"][0]["codigo"] == "E999"
    assert "numero" not in rejected
    assert (await receiver.wait_for(1))[0]["status"] == "erro_autorizacao"

    assert (await sandbox.post("nf1", nfse())).status_code == 202
    authorized = await sandbox.wait_status("nf1", "autorizado")
    assert authorized["numero_rps"] == rejected["numero_rps"]
    stats = await sandbox.stats()
    assert stats["emissions"] == {"nf1": 2}
    assert stats["rejections"] == {"nf1": 1} and stats["authorizations"] == {"nf1": 1}


async def test_prefeitura_rules_reach_the_get(sandbox: Sandbox) -> None:
    doc = nfse()
    doc["prestador"]["codigo_municipio"] = "5300108"
    await sandbox.post("df", doc)
    rejected = await sandbox.wait_status("df", "erro_autorizacao")
    assert rejected["erros"] == [
        {"codigo": "E145", "mensagem": "Regime Especial de Tributação ausente/inválido.",
         "correcao": None},
    ]  # fmt: skip


async def test_422_while_processing_and_after_authorization(sandbox: Sandbox) -> None:
    await sandbox.post("nf1", nfse("[sandbox:delay=0.3]"))
    again = await sandbox.post("nf1", nfse())
    assert (again.status_code, again.json()["codigo"]) == (422, "em_processamento")
    await sandbox.wait_status("nf1", "autorizado")
    again = await sandbox.post("nf1", nfse())
    assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")
    assert (await sandbox.cancel("nf1")).json() == {"status": "cancelado"}
    again = await sandbox.post("nf1", nfse())
    assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")
    assert (await sandbox.stats())["emissions"] == {"nf1": 1}


async def test_request_errors(sandbox: Sandbox) -> None:
    no_ref = await sandbox.api.post("/v2/nfse", json=nfse())
    assert (no_ref.status_code, no_ref.json()["codigo"]) == (400, "requisicao_invalida")
    not_json = await sandbox.api.post("/v2/nfse?ref=x", content=b"{nope")
    assert (not_json.status_code, not_json.json()["codigo"]) == (400, "requisicao_invalida")
    no_cnpj = await sandbox.post("x", {"prestador": {}})
    assert no_cnpj.json() == {
        "codigo": "requisicao_invalida",
        "mensagem": 'Parâmetro "prestador.cnpj" não informado',
    }
    xml = await sandbox.api.post(
        "/v2/nfse?ref=x", content=b"<a/>", headers={"content-type": "application/xml"}
    )
    assert xml.status_code == 415
    missing = await sandbox.api.get("/v2/nfse/nada")
    assert missing.json()["codigo"] == "nao_encontrado" and missing.status_code == 404
    anonymous = await sandbox.anon.get("/v2/nfse/nada")
    assert (anonymous.status_code, anonymous.json()["codigo"]) == (401, "permissao_negada")
    assert "Rate-Limit-Limit" not in anonymous.headers


async def test_unknown_token_is_403() -> None:
    async with running_sandbox(tokens={"outro"}) as sb:
        refused = await sb.api.get("/v2/nfse/x")
        assert (refused.status_code, refused.json()["codigo"]) == (403, "permissao_negada")


# -- cancellation --------------------------------------------------------------------------


async def test_cancel_outcomes(sandbox: Sandbox, receiver: Receiver) -> None:
    await sandbox.hook(receiver.url)
    await sandbox.post("ok", nfse())
    await sandbox.post("bad", nfse("[sandbox:erro]"))
    await sandbox.post("slow", nfse("[sandbox:delay=5]"))
    await sandbox.wait_status("ok", "autorizado")
    await sandbox.wait_status("bad", "erro_autorizacao")

    short = await sandbox.cancel("ok", "curta")
    assert (short.status_code, short.json()["codigo"]) == (400, "requisicao_invalida")
    cancelled = await sandbox.cancel("ok")
    assert (cancelled.status_code, cancelled.json()) == (200, {"status": "cancelado"})
    assert (await sandbox.wait_status("ok", "cancelado"))["numero"] == "1"
    bodies = await receiver.wait_for(3)
    assert sorted(b["status"] for b in bodies) == ["autorizado", "cancelado", "erro_autorizacao"]

    twice = await sandbox.cancel("ok")
    assert (twice.status_code, twice.json()["codigo"]) == (400, "nfe_cancelada")
    for ref in ("bad", "slow"):
        refused = await sandbox.cancel(ref)
        assert (refused.status_code, refused.json()["codigo"]) == (400, "nfe_nao_autorizada")
    missing = await sandbox.cancel("nada")
    assert (missing.status_code, missing.json()["codigo"]) == (404, "nao_encontrado")
    assert (await sandbox.stats())["cancellations"] == {"ok": 1}


async def test_cancel_after_window_and_refusing_prefeitura(sandbox: Sandbox) -> None:
    await sandbox.post("old", nfse())
    await sandbox.post("stuck", nfse("[sandbox:nao_cancela]"))
    await sandbox.wait_status("old", "autorizado")
    await sandbox.wait_status("stuck", "autorizado")

    refused = await sandbox.cancel("stuck")
    assert refused.status_code == 200
    assert refused.json()["status"] == "erro_cancelamento"
    assert refused.json()["erros"][0]["codigo"] == "E523"

    moved = await sandbox.anon.post("/_sandbox/clock", json={"advance": 25 * 3600})
    assert moved.json()["offset"] == 25 * 3600
    late = await sandbox.cancel("old")
    assert late.json() == {
        "status": "erro_cancelamento",
        "erros": [
            {
                "codigo": "E523",
                "mensagem": "nota que você está tentando cancelar está fora do prazo "
                "permitido para cancelamento",
                "correcao": None,
            }
        ],
    }
    assert (await sandbox.wait_status("old", "autorizado"))["status"] == "autorizado"
    assert (await sandbox.stats())["cancellations"] == {}


# -- rate limit ----------------------------------------------------------------------------


async def test_rate_limit_headers_and_429() -> None:
    clock: Callable[[], float] = lambda: 1000.0  # noqa: E731 - a frozen clock, window ends at 1020
    async with running_sandbox(rate_limit_per_minute=3, clock=clock) as sb:
        remaining = []
        for _ in range(3):
            answer = await sb.api.get("/v2/nfse/x")
            assert answer.headers["Rate-Limit-Limit"] == "3"
            assert answer.headers["Rate-Limit-Reset"] == "20"
            remaining.append(answer.headers["Rate-Limit-Remaining"])
        assert remaining == ["2", "1", "0"]
        over = await sb.api.get("/v2/nfse/x")
        assert over.status_code == 429 and over.headers["Retry-After"] == "20"
        assert over.headers["Rate-Limit-Remaining"] == "0"
        assert over.json()["codigo"] == "limite_excedido"

        await sb.anon.post("/_sandbox/clock", json={"advance": 60})
        assert (await sb.api.get("/v2/nfse/x")).headers["Rate-Limit-Remaining"] == "2"


# -- hooks ---------------------------------------------------------------------------------


async def test_hook_validations_and_management(sandbox: Sandbox) -> None:
    url = "http://127.0.0.1:9/focus"
    bad_event = await sandbox.api.post("/v2/hooks", json={"event": "boleto", "url": url})
    assert bad_event.json() == {
        "codigo": "requisicao_invalida",
        "mensagem": 'Parâmetro "event" deve ser um evento válido.',
    }
    bad_url = await sandbox.hook("ftp://x")
    assert (bad_url.status_code, bad_url.json()["mensagem"]) == (400, "URL inválida: ftp://x")

    created = [(await sandbox.hook(url, cnpj=CNPJ)).json() for _ in range(5)]
    sixth = await sandbox.hook(url, cnpj=CNPJ)
    assert (sixth.status_code, sixth.json()["codigo"]) == (400, "requisicao_invalida")
    assert (await sandbox.hook(url, cnpj="07504505000132")).status_code == 200
    assert (await sandbox.api.post("/v2/hooks", json={"event": "nfe", "url": url, "cnpj": CNPJ})
            ).status_code == 200  # fmt: skip

    first = created[0]
    assert first == {
        "id": first["id"], "url": url, "authorization": None, "authorization_header": None,
        "event": "nfse", "cnpj": CNPJ,
    }  # fmt: skip
    assert len((await sandbox.api.get("/v2/hooks")).json()) == 7
    assert (await sandbox.api.get(f"/v2/hooks/{first['id']}")).json() == first
    deleted = await sandbox.api.delete(f"/v2/hooks/{first['id']}")
    assert deleted.json() == {**first, "deleted": True}
    gone = await sandbox.api.get(f"/v2/hooks/{first['id']}")
    assert (gone.status_code, gone.json()["codigo"]) == (404, "nao_encontrado")
    assert (await sandbox.hook(url, cnpj=CNPJ)).status_code == 200


async def test_hook_retried_until_2xx(sandbox: Sandbox, receiver: Receiver) -> None:
    receiver.fail_first = 2
    await sandbox.hook(receiver.url)
    await sandbox.post("nf1", nfse())
    bodies = await receiver.wait_for(3)
    assert bodies[0] == bodies[1] == bodies[2]
    await asyncio.sleep(0.05)
    callbacks = (await sandbox.stats())["callbacks"]
    assert callbacks == {"sent": 1, "failed": 2, "given_up": 0, "dropped": 0}


async def test_hook_given_up_after_schedule(sandbox: Sandbox) -> None:
    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/focus"
    await sandbox.hook(dead)
    await sandbox.post("nf1", nfse())
    for _ in range(60):  # the schedule is 0 + 0.05 + 0.1 s; allow a slow machine 3 s
        if (await sandbox.stats())["callbacks"]["given_up"]:
            break
        await asyncio.sleep(0.05)
    assert (await sandbox.stats())["callbacks"] == {
        "sent": 0, "failed": 3, "given_up": 1, "dropped": 0,
    }  # fmt: skip


async def test_refire_hook(sandbox: Sandbox, receiver: Receiver) -> None:
    await sandbox.hook(receiver.url)
    await sandbox.post("nf1", nfse())
    await receiver.wait_for(1)
    fired = await sandbox.api.post("/v2/nfse/nf1/hook")
    assert [h["url"] for h in fired.json()] == [receiver.url]
    bodies = await receiver.wait_for(2)
    assert bodies[0] == bodies[1]


# -- scenarios -----------------------------------------------------------------------------


async def test_lost_callback_marker_and_scenario(sandbox: Sandbox, receiver: Receiver) -> None:
    await sandbox.hook(receiver.url)
    await sandbox.anon.post("/_sandbox/scenario", json={"ref": "b", "drop_callback": True})
    await sandbox.post("a", nfse("[sandbox:sem_callback]"))
    await sandbox.post("b", nfse())
    await sandbox.wait_status("a", "autorizado")
    await sandbox.wait_status("b", "autorizado")
    await asyncio.sleep(0.1)
    assert receiver.calls == []
    assert (await sandbox.stats())["callbacks"]["dropped"] == 2


async def test_http500_first_posts_are_not_accepted(sandbox: Sandbox) -> None:
    await sandbox.anon.post("/_sandbox/scenario", json={"ref": "s", "http500": 2})
    statuses = [(await sandbox.post("s", nfse())).status_code for _ in range(3)]
    assert statuses == [500, 500, 202]
    marked = [(await sandbox.post("m", nfse("[sandbox:http500=1]"))).status_code for _ in range(2)]
    assert marked == [500, 202]
    stats = await sandbox.stats()
    assert stats["http500"] == {"s": 2, "m": 1}
    assert stats["emissions"] == {"s": 1, "m": 1}


async def test_scenario_forces_outcome(sandbox: Sandbox) -> None:
    erros = [{"codigo": "E160", "mensagem": "Alíquota inválida", "correcao": "use 2%"}]
    arranged = await sandbox.anon.post(
        "/_sandbox/scenario", json={"ref": "r", "status": "erro_autorizacao", "erros": erros}
    )
    assert arranged.status_code == 200
    await sandbox.post("r", nfse())
    assert (await sandbox.wait_status("r", "erro_autorizacao"))["erros"] == erros

    await sandbox.anon.post("/_sandbox/scenario", json={"ref": "k", "status": "autorizado"})
    await sandbox.post("k", nfse("[sandbox:erro]"))
    await sandbox.wait_status("k", "autorizado")
    bad = await sandbox.anon.post("/_sandbox/scenario", json={"ref": "k", "status": "x"})
    assert bad.status_code == 400


# -- email and server ----------------------------------------------------------------------


async def test_email(sandbox: Sandbox) -> None:
    await sandbox.post("nf1", nfse())
    early = await sandbox.api.post("/v2/nfse/nf1/email", json={"emails": ["a@b.com"]})
    assert early.json()["codigo"] == "nfe_nao_autorizada"
    await sandbox.wait_status("nf1", "autorizado")
    sent = await sandbox.api.post("/v2/nfse/nf1/email", json={"emails": ["a@b.com", "c@d.com"]})
    assert (sent.status_code, sent.json()) == (200, {"emails": ["a@b.com", "c@d.com"]})
    too_many = [f"{i}@x.com" for i in range(11)]
    over = await sandbox.api.post("/v2/nfse/nf1/email", json={"emails": too_many})
    assert (over.status_code, over.json()["codigo"]) == (400, "requisicao_invalida")
    assert (await sandbox.stats())["emails"] == {"nf1": 2}


async def test_serve_focus_sandbox_returns_when_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve_focus_sandbox(FocusSandboxConfig(), "127.0.0.1", port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(200):
            try:
                stats = await client.get("/_sandbox/stats")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.01)
        assert stats.status_code == 200
    task.cancel()
    await asyncio.wait_for(task, 3)
    assert not task.cancelled()  # it shut down and returned instead of dying mid-shutdown
