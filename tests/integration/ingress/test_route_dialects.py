"""Every route that reads a body answers a body error in its own dialect, through that
dialect's object (`ingress.dialects`): too large, not JSON, a type that never carries JSON.
The routes are walked from the app, so a new route that reads a body some other way, or a
body-less one nobody listed, fails here. The hot route (`POST /v2/nfse`) is among them."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.body import BodyError, BodyNotJson, BodyTooLarge
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.dialects import FOCUS, HUBSOFT, HUBSOFT_FINANCEIRO, WURO, Dialect, render
from notaflow.settings import Settings
from notaflow.store import TenantStore, create_engine
from notaflow.store.db import migrate
from notaflow.store.invoices import BillingConfigStore
from notaflow.store.operators import OperatorStore

LIMIT = 1000
TOKEN = "tok-dialects"
HOOK_SECRET = "hook-secret"

# POST and DELETE routes that read no body (their answers come from the store): listed so a
# new route is a decision, not an omission.
BODYLESS = {("POST", "/v2/nfse/{ref}/hook"), ("POST", "/v2/nfsen/{ref}/hook"),
            ("DELETE", "/v2/hooks/{id}"),
            ("POST", "/admin/v1/accounts/{tenant}/{cnpj}/{provider}/disable"),
            ("POST", "/admin/v1/accounts/{tenant}/{cnpj}/{provider}/enable")}  # fmt: skip

BAD_BODIES: list[tuple[str, bytes, str, BodyError]] = [
    ("too large", b"x" * (LIMIT + 1), "application/json", BodyTooLarge()),
    ("not JSON", b"{not json", "application/json", BodyNotJson(False)),
    ("XML", b"<nfse/>", "application/xml", BodyNotJson(True)),
]


def dialect_of(path: str) -> Dialect:
    if path == "/api/v1/integracao/faturas/eventos":
        return HUBSOFT_FINANCEIRO
    if path.startswith("/api/v1/"):
        return HUBSOFT
    if path.startswith("/api/v3.2/"):
        return WURO
    return FOCUS


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    path: Path = tmp_path_factory.mktemp("dialects") / "nf.db"
    engine = create_engine(f"sqlite:///{path}")
    await migrate(engine)
    tenants = TenantStore(engine)
    await tenants.create("t1", "Tenant", ["51916585000125"], token=TOKEN)
    app_id, secret = await BillingConfigStore(engine).create_app("t1")
    operator = await OperatorStore(engine).create("dialects")
    settings = Settings(max_body_bytes=LIMIT, focus_webhook_secret=HOOK_SECRET)
    deps = IngressDeps(
        settings=settings, engine=engine, bus=None, documents=None,  # type: ignore[arg-type]
        intake=None, nfce_intake=None, tenants=tenants,  # type: ignore[arg-type]
        tenant_cache=TenantCache(tenants), topics=None, hooks=None,  # type: ignore[arg-type]
        waiters=None,  # type: ignore[arg-type]
    )  # fmt: skip
    app = create_app(deps, manage_resources=False)
    assert getattr(app, "hot", None) is not None  # POST /v2/nfse goes by the hot route here
    credentials = {
        "authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),
        "x-app-id": app_id,
        "x-app-secret": secret,
    }
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://ingress", headers=credentials
    ) as c:
        c.app_routes = [r for r in app.routes if isinstance(r, Route)]  # type: ignore[attr-defined]
        c.operator = operator  # type: ignore[attr-defined]
        yield c
    await engine.dispose()


def body_routes(c: httpx.AsyncClient) -> list[tuple[str, str]]:
    found = [
        (method, route.path)
        for route in c.app_routes  # type: ignore[attr-defined]
        for method in sorted(route.methods or ())
        if method in ("POST", "PUT", "PATCH", "DELETE") and (method, route.path) not in BODYLESS
    ]
    return found


def url_of(path: str) -> str:
    url = path.replace("{ref}", "r1").replace("{uid}", "u1").replace("{id}", "1")
    url = url.replace("{tenant}", "t1").replace("{cnpj}", "51916585000125")
    url = url.replace("{provider}", "focus")
    return url + "?ref=r1" if url in ("/v2/nfse", "/v2/nfsen", "/v2/nfce") else url


async def test_every_route_that_reads_a_body_answers_body_errors_in_its_dialect(
    client: httpx.AsyncClient,
) -> None:
    # Focus's Basic and HubSoft's Bearer carry the same tenant token.
    routes = body_routes(client)
    assert len(routes) >= 11, routes  # the walk found the app's routes
    assert ("POST", "/v2/nfse") in routes and ("POST", "/api/v3.2/invoice/{uid}/mail") in routes
    for method, path in routes:
        dialect = dialect_of(path)
        headers = {}
        if dialect in (HUBSOFT, HUBSOFT_FINANCEIRO):
            headers = {"authorization": f"Bearer {TOKEN}"}
        if path.startswith("/webhooks/"):  # Focus's callbacks carry the hook's secret
            headers = {Settings().focus_webhook_header: HOOK_SECRET}
        if path.startswith("/admin/"):  # the admin API takes an operator's token
            headers = {"authorization": f"Bearer {client.operator}"}  # type: ignore[attr-defined]
        for what, content, content_type, error in BAD_BODIES:
            expected = render(dialect.body_error(error, LIMIT))
            r = await client.request(
                method, url_of(path), content=content,
                headers={**headers, "content-type": content_type},
            )  # fmt: skip
            where = f"{method} {path}: {what}"
            assert r.status_code == expected.status_code, (where, r.text)
            assert r.content == bytes(expected.body), (where, r.text)
            assert r.headers["content-type"] == "application/json", where
