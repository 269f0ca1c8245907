"""Errors the routes do not raise themselves are still answered in the dialect of the route, in
the shape `/openapi.json` declares, and never leak the exception: Focus `{codigo, mensagem}`,
HubSoft `{status: "error", msg}`, Wuro `{error: {code, message}}`. A database that cannot be
reached is a 503 with Retry-After (sending the request again is the remedy); a database that
answers but fails the statement (here: never migrated) is a 500."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from ingress.app import create_app
from ingress.auth import TenantCache
from ingress.deps import IngressDeps
from ingress.observability import openapi_document
from notaflow.settings import Settings
from notaflow.store import TenantStore, create_engine

BASIC = {"Authorization": "Basic " + base64.b64encode(b"tok:").decode()}
BEARER = {"Authorization": "Bearer tok"}
WURO = {"X-APP-ID": "app", "X-APP-SECRET": "secret"}

# (method, path, OpenAPI path, headers, JSON body, the body's dialect keys)
CASES: list[tuple[str, str, str, dict[str, str], Any, set[str]]] = [
    ("GET", "/v2/nfse/abc1", "/v2/nfse/{ref}", BASIC, None, {"codigo", "mensagem"}),
    (
        "POST",
        "/api/v1/integracao/cliente/nota_fiscal/enviar_email",
        "/api/v1/integracao/cliente/nota_fiscal/enviar_email",
        BEARER,
        {"id_nota_fiscal": 1, "tipo_documento": "nfse"},
        {"status", "msg"},
    ),
    (
        "GET",
        "/api/v1/integracao/cliente/financeiro?busca=cpf_cnpj&termo_busca=11144477735",
        "/api/v1/integracao/cliente/financeiro",
        BEARER,
        None,
        {"status", "msg"},
    ),
    (
        "POST",
        "/api/v3.2/invoice/u1/mail",
        "/api/v3.2/invoice/{uid}/mail",
        WURO,
        {"to": ["a@example.com"], "subject": "Fatura", "content": "Olá"},
        {"error"},
    ),
]


async def client_on(url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = create_engine(url)
    tenants = TenantStore(engine)
    deps = IngressDeps(
        settings=Settings(), engine=engine, bus=None, documents=None,  # type: ignore[arg-type]
        intake=None, nfce_intake=None, tenants=tenants,  # type: ignore[arg-type]
        tenant_cache=TenantCache(tenants), topics=None, hooks=None,  # type: ignore[arg-type]
        waiters=None,  # type: ignore[arg-type]
    )  # fmt: skip
    app = create_app(deps, manage_resources=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client
    await engine.dispose()


@pytest.fixture
async def unreachable(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # A real engine on a database file that cannot be opened, as when the volume is gone.
    async for client in client_on(f"sqlite:///{tmp_path / 'missing-dir' / 'gone.db'}"):
        yield client


@pytest.fixture
async def unmigrated(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # A database that answers, without the schema: every statement fails as a bug would.
    async for client in client_on(f"sqlite:///{tmp_path / 'empty.db'}"):
        yield client


def declared(openapi_path: str, method: str, status: int) -> Draft202012Validator:
    """The schema `/openapi.json` gives this operation's `status`, its `#/components/...`
    references resolved against the document's components."""
    doc = openapi_document()
    response = doc["paths"][openapi_path][method.lower()]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


@pytest.mark.parametrize(("method", "url", "openapi_path", "headers", "body", "keys"), CASES)
async def test_a_bug_is_a_500_in_the_routes_dialect(
    unmigrated: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    method: str,
    url: str,
    openapi_path: str,
    headers: dict[str, str],
    body: Any,
    keys: set[str],
) -> None:
    with caplog.at_level(logging.ERROR, logger="ingress.app"):
        r = await unmigrated.request(method, url, headers=headers, json=body)
    assert r.status_code == 500
    answer = r.json()
    assert set(answer) == keys
    declared(openapi_path, method, 500).validate(answer)
    assert "no such table" not in r.text and "OperationalError" not in r.text
    # The operator sees what happened; the client does not.
    assert any("unhandled error" in rec.getMessage() and rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize(("method", "url", "openapi_path", "headers", "body", "keys"), CASES)
async def test_a_database_out_of_reach_is_a_503_in_the_routes_dialect(
    unreachable: httpx.AsyncClient,
    method: str,
    url: str,
    openapi_path: str,
    headers: dict[str, str],
    body: Any,
    keys: set[str],
) -> None:
    r = await unreachable.request(method, url, headers=headers, json=body)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    answer = r.json()
    assert set(answer) == keys
    declared(openapi_path, method, 503).validate(answer)
    assert "gone.db" not in r.text
