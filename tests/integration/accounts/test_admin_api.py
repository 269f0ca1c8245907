"""The admin API of provider accounts (/admin/v1/accounts) on the real ingress app, a real
database and the embedded Kafka broker: operator authentication (a tenant token is no operator
token and the other way round), secrets that go in and never come out (answers, logs), bad
input answered in the Focus dialect, and a disabled account refusing new commands at the door
while the tenant's other companies go on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from notaflow import topics as t
from notaflow.account_keys import new_key
from notaflow.bus import Bus
from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.intake import Intake
from notaflow.lifecycle import AUTHORIZED
from notaflow.replies import ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import DocumentStore, TenantStore, create_engine, migrate
from notaflow.store.operators import OperatorStore
from notaflow.store.tables import provider_accounts

A, B = "51916585000125", "11222333000181"
TOKEN_A = "focus-token-A-segredo-0123456789abcdef"
TOKEN_A2 = "focus-token-A-segredo-novo-fedcba9876"
SMTP_PW = "smtp-senha-segredo-42"
SECRETS = (TOKEN_A, TOKEN_A2, SMTP_PW)


@dataclass
class World:
    http: httpx.AsyncClient
    operator: str
    tenant_token: str
    engine: Any
    operators: OperatorStore

    def admin(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.operator}"}

    async def emit(self, ref: str, cnpj: str) -> httpx.Response:
        return await self.http.post(
            f"/v2/nfse?ref={ref}", json=nfse(cnpj), auth=(self.tenant_token, "")
        )


def nfse(cnpj: str) -> dict[str, Any]:
    return {
        "data_emissao": "2026-05-27T10:00:00-03:00",
        "prestador": {"cnpj": cnpj, "inscricao_municipal": "12345", "codigo_municipio": "4106902"},
        "tomador": {"cnpj": "07504505000132", "razao_social": "ACME"},
        "servico": {
            "aliquota": 3,
            "discriminacao": "Consultoria",
            "iss_retido": "false",
            "item_lista_servico": "0107",
            "valor_servicos": "1.00",
        },
    }


async def make_world(settings: Settings) -> AsyncIterator[World]:
    engine = create_engine(settings.database_url)
    await migrate(engine)
    tenants = TenantStore(engine)
    tenant_token = await tenants.create("acme", "ACME", [A, B])
    operators = OperatorStore(engine)
    operator = await operators.create("ops")
    bus = Bus(settings)
    topics = t.Topics(settings.kafka_topic_prefix)
    documents = DocumentStore(engine)
    deps = IngressDeps(
        settings=settings, engine=engine, bus=bus, documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands, topics.lifecycle),
        nfce_intake=Intake(documents, bus, topics.nfce_commands, topics.lifecycle),
        tenants=tenants, tenant_cache=TenantCache(tenants), topics=topics,
        hooks=None, waiters=ReplyWaiters(),  # type: ignore[arg-type]
    )  # fmt: skip
    await bus.start()
    await bus.wait_connected(30)  # the door test's accepted commands go to Kafka
    transport = httpx.ASGITransport(app=create_app(deps, manage_resources=False))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield World(http, operator, tenant_token, engine, operators)
    finally:
        await bus.stop()
        documents.close()
        await engine.dispose()


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async for w in make_world(settings.replace(account_keys=new_key(), cancel_wait=0.2)):
        yield w


FOCUS_A = {
    "tenant": "acme",
    "cnpj": A,
    "provider": "focus",
    "config": {"environment": "producao"},
    "secret": TOKEN_A,
}


async def test_only_operator_tokens_reach_the_admin_api(world: World) -> None:
    http = world.http
    missing = await http.get("/admin/v1/accounts")
    assert missing.status_code == 401 and missing.json()["codigo"] == "nao_autorizado"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in (world.tenant_token, "x" * 40, "y" * 5000):
        refused = await http.get("/admin/v1/accounts", headers=world.admin(bad))
        assert refused.status_code == 403, bad[:10]
        assert refused.json()["codigo"] == "permissao_negada"
    basic = await http.get("/admin/v1/accounts", auth=(world.operator, ""))
    assert basic.status_code == 401
    # Whatever a client sends as the header is a 401, never a 500 (found by the fuzzer).
    for header in ("¿", "Bearer", "Bearer  ", "¿ x", "Basic ¿"):
        raw = header.encode("latin-1")  # as a client's bytes, not httpx's ASCII
        odd = await http.get("/admin/v1/accounts", headers={"Authorization": raw})
        assert odd.status_code == 401, header
    assert (await http.get("/admin/v1/accounts", headers=world.admin())).status_code == 200
    # An operator token is no tenant token.
    as_tenant = await http.get("/v2/nfse/x", auth=(world.operator, ""))
    assert as_tenant.status_code == 403
    assert await world.operators.revoke(world.operator)
    revoked = await http.get("/admin/v1/accounts", headers=world.admin())
    assert revoked.status_code == 403


async def test_secrets_go_in_and_never_come_out(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http, h = world.http, world.admin()
    seen: list[str] = []
    created = await http.post("/admin/v1/accounts", json=FOCUS_A, headers=h)
    assert created.status_code == 201, created.text
    seen.append(created.text)
    body = created.json()
    assert body["has_secret"] is True and body["config"] == {"environment": "producao"}
    assert "secret" not in body
    smtp = {
        "tenant": "acme",
        "cnpj": "*",
        "provider": "smtp",
        "config": {"host": "smtp.acme.test", "sender": "nf@acme.test", "username": "nf"},
        "secret": SMTP_PW,
    }
    created = await http.post("/admin/v1/accounts", json=smtp, headers=h)
    assert created.status_code == 201, created.text
    seen.append(created.text)
    listed = await http.get("/admin/v1/accounts?tenant=acme", headers=h)
    seen.append(listed.text)
    assert [(a["cnpj"], a["provider"]) for a in listed.json()["accounts"]] == [
        ("*", "smtp"),
        (A, "focus"),
    ]
    one = await http.get(f"/admin/v1/accounts/acme/{A}/focus", headers=h)
    assert one.status_code == 200 and one.json()["cnpj"] == A
    seen.append(one.text)
    rotated = await http.post(
        f"/admin/v1/accounts/acme/{A}/focus/rotate", json={"secret": TOKEN_A2}, headers=h
    )
    assert rotated.status_code == 200, rotated.text
    seen.append(rotated.text)
    duplicate = await http.post("/admin/v1/accounts", json=FOCUS_A, headers=h)
    assert duplicate.status_code == 409 and duplicate.json()["codigo"] == "conta_existente"
    seen.append(duplicate.text)
    for text in [*seen, caplog.text]:
        for secret in SECRETS:
            assert secret not in text
    async with world.engine.connect() as conn:
        stored = repr((await conn.execute(sa.select(provider_accounts))).all())
    assert not any(secret in stored for secret in SECRETS)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**FOCUS_A, "provider": "nuvem"}, 400, "provider deve ser"),
        ({**FOCUS_A, "config": {"environment": "prod"}}, 400, "environment must be"),
        ({**FOCUS_A, "secret": None}, 400, "needs its token"),
        ({**FOCUS_A, "secret": 12345}, 400, "secret deve ser um texto"),
        ({**FOCUS_A, "tenant": "nobody"}, 400, "unknown tenant"),
        ({**FOCUS_A, "cnpj": "99888777000161"}, 400, "no company"),
        ({**FOCUS_A, "extra": 1}, 400, "campo desconhecido"),
        ({k: v for k, v in FOCUS_A.items() if k != "config"}, 400, "config deve ser"),
        ([FOCUS_A], 400, "objeto JSON"),
    ],
)
async def test_bad_input_is_answered_in_the_focus_dialect(
    world: World, body: Any, status: int, message: str
) -> None:
    answer = await world.http.post("/admin/v1/accounts", json=body, headers=world.admin())
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"codigo", "mensagem"}
    assert message in answer.json()["mensagem"]
    assert "12345" not in answer.text


async def test_not_json_unknown_accounts_and_no_keys(settings: Settings) -> None:
    async for world in make_world(settings):  # no NOTAFLOW_ACCOUNT_KEYS
        http, h = world.http, world.admin()
        garbage = await http.post(
            "/admin/v1/accounts",
            content=b"{nope",
            headers={**h, "Content-Type": "application/json"},
        )
        assert garbage.status_code == 400 and garbage.json()["codigo"] == "requisicao_invalida"
        for path in ("rotate", "disable", "enable"):
            missing = await http.post(f"/admin/v1/accounts/acme/{A}/focus/{path}", headers=h)
            assert missing.status_code == 404, path
        assert (await http.get(f"/admin/v1/accounts/acme/{A}/focus", headers=h)).status_code == 404
        no_keys = await http.post("/admin/v1/accounts", json=FOCUS_A, headers=h)
        assert no_keys.status_code == 503
        assert "NOTAFLOW_ACCOUNT_KEYS" in no_keys.json()["mensagem"]
        # An account without a secret needs no key.
        emites = {"tenant": "acme", "cnpj": B, "provider": "emites",
                  "config": {"host": "127.0.0.1", "port": 9100}}  # fmt: skip
        assert (await http.post("/admin/v1/accounts", json=emites, headers=h)).status_code == 201


async def test_a_disabled_account_refuses_new_commands_at_the_door(world: World) -> None:
    http, h = world.http, world.admin()
    assert (await http.post("/admin/v1/accounts", json=FOCUS_A, headers=h)).status_code == 201
    accepted = await world.emit("antes", A)
    assert accepted.status_code == 202, accepted.text
    disabled = await http.post(f"/admin/v1/accounts/acme/{A}/focus/disable", headers=h)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    refused = await world.emit("depois", A)
    assert refused.status_code == 403, refused.text
    assert refused.json()["codigo"] == "conta_desabilitada"
    assert A in refused.json()["mensagem"]
    # Nothing was claimed: the ref is free once the account is back.
    assert (await http.get("/v2/nfse/depois", auth=(world.tenant_token, ""))).status_code == 404
    # The tenant's other company (no account: the global token) goes on.
    assert (await world.emit("outra", B)).status_code == 202
    # Cancelling a note of the disabled company is a new command too.
    cancel = await http.request(
        "DELETE",
        "/v2/nfse/antes",
        json={"justificativa": "Teste de cancelamento da nota"},
        auth=(world.tenant_token, ""),
    )
    assert cancel.status_code == 403 and cancel.json()["codigo"] == "conta_desabilitada"
    enabled = await http.post(f"/admin/v1/accounts/acme/{A}/focus/enable", headers=h)
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    assert (await world.emit("depois", A)).status_code == 202


async def test_a_disabled_smtp_account_refuses_e_mail_commands_in_each_dialect(
    world: World,
) -> None:
    http, h = world.http, world.admin()
    smtp = {"tenant": "acme", "cnpj": "*", "provider": "smtp",
            "config": {"host": "127.0.0.1", "sender": "notas@acme.example.com"}}  # fmt: skip
    assert (await http.post("/admin/v1/accounts", json=smtp, headers=h)).status_code == 201
    assert (await world.emit("mail1", A)).status_code == 202
    documents = DocumentStore(world.engine)
    try:
        doc = await documents.get("acme", "nfse", "mail1")
        assert doc is not None
        assert await documents.transition(doc.id, doc.attempt, AUTHORIZED, "test") is not None
    finally:
        documents.close()
    focus = {"emails": ["cliente@example.com"]}
    hubsoft = {"id_nota_fiscal": doc.id, "tipo_documento": "nfse",
               "email_adicional": ["cliente@example.com"]}  # fmt: skip
    hubsoft_path = "/api/v1/integracao/cliente/nota_fiscal/enviar_email"
    bearer = {"Authorization": f"Bearer {world.tenant_token}"}
    # Enabled: the Focus route takes the command (the consumer would send it).
    accepted = await http.post("/v2/nfse/mail1/email", json=focus, auth=(world.tenant_token, ""))
    assert accepted.status_code == 200, accepted.text
    assert (await http.post("/admin/v1/accounts/acme/*/smtp/disable", headers=h)).status_code == 200
    refused = await http.post("/v2/nfse/mail1/email", json=focus, auth=(world.tenant_token, ""))
    assert (refused.status_code, refused.json()["codigo"]) == (403, "conta_desabilitada")
    refused = await http.post(hubsoft_path, json=hubsoft, headers=bearer)
    assert refused.status_code == 403, refused.text
    assert refused.json()["status"] == "error" and "desabilitada" in refused.json()["msg"]
