"""Errors the routes do not raise themselves are still answered in the dialect of the route, in
the shape `/openapi.json` declares, and never leak the exception: Focus `{codigo, mensagem}`,
HubSoft `{status: "error", msg}`, Wuro `{error: {code, message}}`. A database that cannot be
reached is a 503 with Retry-After (sending the request again is the remedy); a database that
answers but fails the statement (here: never migrated) is a 500."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.openapi import openapi_document
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
    # An exception handed on to the server would raise here: database errors must not be.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client
    await engine.dispose()


@dataclass
class Broken:
    client: httpx.AsyncClient
    status: int  # what every route must answer
    secret: str  # what the answer must not leak


@pytest.fixture(params=["unmigrated", "unreachable"])
async def broken(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broken]:
    if request.param == "unmigrated":
        # A database that answers, without the schema: every statement fails as a bug would
        # (500, logged with its traceback).
        url, status, secret = f"sqlite:///{tmp_path / 'empty.db'}", 500, "no such table"
    else:
        # A database file that cannot be opened, as when the volume is gone: the database's
        # state, so 503 and try again later.
        url, status, secret = f"sqlite:///{tmp_path / 'missing-dir' / 'gone.db'}", 503, "gone.db"
    async for client in client_on(url):
        yield Broken(client, status, secret)


def declared(openapi_path: str, method: str, status: int) -> Draft202012Validator:
    """The schema `/openapi.json` gives this operation's `status`, its `#/components/...`
    references resolved against the document's components."""
    doc = openapi_document()
    response = doc["paths"][openapi_path][method.lower()]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


@pytest.mark.parametrize(("method", "url", "openapi_path", "headers", "body", "keys"), CASES)
async def test_a_database_error_is_answered_in_the_routes_dialect(
    broken: Broken,
    caplog: pytest.LogCaptureFixture,
    method: str,
    url: str,
    openapi_path: str,
    headers: dict[str, str],
    body: Any,
    keys: set[str],
) -> None:
    with caplog.at_level(logging.WARNING, logger="notaflow.ingress.app"):
        r = await broken.client.request(method, url, headers=headers, json=body)
    assert r.status_code == broken.status
    answer = r.json()
    assert set(answer) == keys
    declared(openapi_path, method, broken.status).validate(answer)
    assert broken.secret not in r.text and "OperationalError" not in r.text
    if broken.status == 503:
        assert r.headers["retry-after"] == "5"
    # The operator sees what happened (a bug with its traceback); the client does not.
    logged = [rec for rec in caplog.records if rec.name == "notaflow.ingress.app"]
    if broken.status == 500:
        assert any("unhandled error" in rec.getMessage() and rec.exc_info for rec in logged)
    else:
        assert logged and all(rec.levelno == logging.WARNING for rec in logged)
