"""Every route the ingress app serves has its OpenAPI operation, and every operation its route:
the description cannot drift from the routes (each route module declares both side by side).
Walks the app `create_app` builds, with and without an ops port, so a route added to the app
anywhere — a new dialect, the ops routes — is covered."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Route

from notaflow.ingress import openapi
from notaflow.ingress.app import create_app
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.openapi_parts import Description
from notaflow.ingress.ports import OnPort
from notaflow.metrics import Metrics
from notaflow.settings import Settings


def served(settings: Settings) -> set[tuple[str, str]]:
    """(path, method) of every route of the app, HEAD aside (Starlette adds it to GET)."""
    deps = IngressDeps(
        settings=settings, engine=None, bus=None, documents=None, intake=None,  # type: ignore[arg-type]
        nfce_intake=None, tenants=None, tenant_cache=None, topics=None,  # type: ignore[arg-type]
        hooks=None, waiters=None,  # type: ignore[arg-type]
    )  # fmt: skip
    app = create_app(deps, manage_resources=False, metrics=Metrics(CollectorRegistry()))
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        inner: BaseRoute = route.route if isinstance(route, OnPort) else route
        assert isinstance(inner, Route), inner
        out |= {(inner.path, m.lower()) for m in inner.methods or () if m != "HEAD"}
    return out


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(ops_port=9), Settings(ops_port=9, public_docs=False)],
    ids=["one-port", "ops-port", "ops-port-private-docs"],
)
def test_every_route_has_its_operation_and_every_operation_its_route(settings: Settings) -> None:
    routes, operations = served(settings), described(openapi.openapi_document())
    assert routes - operations == set(), "routes without an OpenAPI operation"
    assert operations - routes == set(), "OpenAPI operations without a route"
    assert len(routes) > 30  # the walk found the app's routes, not an empty list


def test_the_check_fails_for_an_undocumented_route_and_a_stale_entry() -> None:
    # The comparison above, fed a document with one operation missing and one extra.
    doc = openapi.openapi_document()
    del doc["paths"]["/v2/hooks/{id}"]["delete"]
    doc["paths"]["/v2/gone"] = {"get": {"summary": "x", "responses": {}}}
    routes, operations = served(Settings()), described(doc)
    assert routes - operations == {("/v2/hooks/{id}", "delete")}
    assert operations - routes == {("/v2/gone", "get")}


def test_a_path_belongs_to_one_module_and_a_component_is_declared_once() -> None:
    path = {"/x": {"get": {}}}
    with pytest.raises(ValueError, match="path '/x'"):
        openapi.merge([Description(paths=path), Description(paths=path)])
    same = Description(paths={}, schemas={"A": {"type": "string"}})
    assert openapi.merge([same, same])[1]["schemas"] == {"A": {"type": "string"}}
    other = Description(paths={}, schemas={"A": {"type": "integer"}})
    with pytest.raises(ValueError, match="schema 'A'"):
        openapi.merge([same, other])
