"""The OpenAPI document: valid OpenAPI 3.1, complete (every ingress route), resolvable, and the
HTML page rendered from it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from html.parser import HTMLParser
from typing import Any

import httpx
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from notaflow import ingress, schemas
from notaflow.ingress import focus_hooks, focus_nfse, health, hubsoft, provider_webhooks
from notaflow.ingress.docs_page import docs_html
from notaflow.ingress.openapi import openapi_document, openapi_routes


def ingress_routes() -> list[Route]:
    """The route lists of the dialect modules, plus any other `ingress` module that has one,
    so a new dialect without documentation fails here."""
    modules = [health, focus_nfse, focus_hooks, provider_webhooks, hubsoft]
    for info in pkgutil.iter_modules(ingress.__path__):
        module = importlib.import_module(f"notaflow.ingress.{info.name}")
        if isinstance(getattr(module, "routes", None), list) and module not in modules:
            modules.append(module)
    routes: list[BaseRoute] = [r for m in modules for r in m.routes]
    assert all(isinstance(r, Route) for r in routes)
    return [r for r in routes if isinstance(r, Route)]


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_ingress_route_is_described() -> None:
    paths = openapi_document()["paths"]
    missing = [
        f"{method} {route.path}"
        for route in ingress_routes()
        for method in sorted(route.methods or ())
        if method != "HEAD" and method.lower() not in paths.get(route.path, {})
    ]
    assert not missing, f"routes without OpenAPI description: {missing}"
    for path in ("/metrics", "/openapi.json", "/docs", "/healthz", "/readyz"):
        assert "get" in paths[path]


def test_operations_are_described_and_nothing_stale() -> None:
    doc = openapi_document()
    served = {(r.path, m.lower()) for r in ingress_routes() for m in (r.methods or ())}
    served |= {("/metrics", "get"), ("/openapi.json", "get"), ("/docs", "get")}
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert (path, method) in served, f"{method.upper()} {path} is documented, not served"
            assert op["summary"] and op["responses"]
            ids.append(op["operationId"])
            for name in re.findall(r"{(\w+)}", path):
                params = [*item.get("parameters", []), *op.get("parameters", [])]
                assert any(p["name"] == name and p["in"] == "path" for p in params), (path, name)
    assert len(ids) == len(set(ids))


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_reference_resolves_inside_the_document() -> None:
    doc = openapi_document()
    for ref in refs(doc):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(node, dict), ref


def test_request_bodies_reference_the_project_schemas() -> None:
    doc = openapi_document()
    components = doc["components"]["schemas"]

    def body(path: str, method: str) -> Any:
        return doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]

    assert body("/v2/nfse", "post") == {"$ref": "#/components/schemas/Nfse"}
    assert body("/webhooks/focus/nfse", "post") == {"$ref": "#/components/schemas/FocusCallback"}
    nfse = schemas.load("nfse")
    assert components["Nfse"]["required"] == nfse["required"]
    assert components["Nfse"]["$defs"].keys() == nfse["$defs"].keys()
    assert components["FocusCallback"]["properties"] == schemas.load("focus_callback")["properties"]


def test_security_and_error_shapes_per_dialect() -> None:
    doc = openapi_document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["focusBasic"] == {**schemes["focusBasic"], "type": "http", "scheme": "basic"}
    assert schemes["hubsoftBearer"]["scheme"] == "bearer"
    assert schemes["focusWebhookKey"]["type"] == "apiKey"
    assert schemes["focusWebhookKey"]["in"] == "header"
    errors = doc["components"]["schemas"]
    assert errors["FocusError"]["required"] == ["codigo", "mensagem"]
    assert errors["HubsoftError"]["properties"]["status"] == {"const": "error"}

    paths = doc["paths"]
    create = paths["/v2/nfse"]["post"]
    assert create["security"] == [{"focusBasic": []}]
    for status in ("400", "401", "403", "413", "415", "422", "503"):
        text = str(create["responses"][status])
        assert "#/components/schemas/FocusError" in text, status
    assert "empresa_nao_habilitada" in create["responses"]["400"]["description"]
    assert "nfe_autorizada" in create["responses"]["422"]["description"]
    hubsoft = paths["/api/v1/integracao/cliente/nota_fiscal/enviar_email"]["post"]
    assert hubsoft["security"] == [{"hubsoftBearer": []}]
    for status in ("400", "401", "404", "503", "504"):
        schema = hubsoft["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/HubsoftError"}
    assert paths["/webhooks/focus/nfse"]["post"]["security"] == [{"focusWebhookKey": []}]
    assert paths["/healthz"]["get"]["security"] == []


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_docs_page_lists_every_operation_and_loads_nothing() -> None:
    page = docs_html(openapi_document())
    parser = _Text()
    parser.feed(page)
    text = " ".join(parser.text)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not [v for k, v in parser.attrs if k in ("src", "href") and v and "//" in v]
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert path in text and op["summary"] in text, (method, path)
            assert f"id='{op['operationId']}'" in page
    for code in ("nao_autorizado", "permissao_negada", "servico_indisponivel", "HubsoftError"):
        assert code in text


async def test_the_routes_serve_the_document_and_the_page() -> None:
    app = Starlette(routes=openapi_routes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        spec = await client.get("/openapi.json")
        page = await client.get("/docs")
    assert spec.status_code == 200
    assert spec.headers["content-type"] == "application/json"
    assert spec.json() == openapi_document()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v2/nfse/{ref}" in page.text


def test_security_requirements_name_declared_schemes() -> None:
    # openapi-spec-validator 0.9 accepts an undeclared scheme name (and a dangling $ref): checked
    # here, as references are above.
    doc = openapi_document()
    declared = doc["components"]["securitySchemes"].keys()
    requirements = list(doc["security"])
    for item in doc["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                requirements += op.get("security", [])
    assert {name for r in requirements for name in r} <= declared
