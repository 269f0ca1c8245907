"""The ingress's API description: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`.

Nothing is described here: every route module declares its own paths as `OPENAPI` next to its
`routes` (`ingress.openapi_parts` has the shared pieces), and `openapi_document` merges them.
A route without its entry, or an entry without its route, fails
`tests/unit/ingress/test_openapi_routes.py`, which walks the app `create_app` builds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from notaflow.ingress import health, request_metrics, route_modules
from notaflow.ingress.docs_page import docs_html
from notaflow.ingress.openapi_parts import COMMON, FOCUS_AUTH, Description, json_response

__all__ = ["DESCRIBED", "OPENAPI", "merge", "openapi_document", "openapi_routes"]

_OPS = ["Operação"]
OPENAPI = Description(
    paths={
        "/openapi.json": {
            "get": {
                "tags": _OPS,
                "operationId": "openapi",
                "summary": "Este documento",
                "security": [],
                "responses": {"200": json_response({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/docs": {
            "get": {
                "tags": _OPS,
                "operationId": "docs",
                "summary": "Este documento em HTML",
                "security": [],
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
)

# In the order the document (and /docs) lists them.
DESCRIBED: tuple[Description, ...] = (
    COMMON,
    *(m.OPENAPI for m in route_modules.PUBLIC),
    health.OPENAPI,
    request_metrics.OPENAPI,
    OPENAPI,
)


def _into(target: dict[str, Any], part: Any, what: str, *, same_ok: bool) -> None:
    for name, value in part.items():
        if name in target and not (same_ok and target[name] == value):
            raise ValueError(f"{what} {name!r} is declared twice in the OpenAPI description")
        target[name] = copy.deepcopy(value)


def merge(parts: Iterable[Description]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) of `parts`. A path belongs to one module; a component may be
    declared again only identically."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"securitySchemes": {}, "schemas": {}}
    for part in parts:
        _into(paths, part.paths, "path", same_ok=False)
        _into(components["schemas"], part.schemas, "schema", same_ok=True)
        _into(components["securitySchemes"], part.security_schemes, "scheme", same_ok=True)
    return paths, components


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every ingress route (a fresh dict per call)."""
    paths, components = merge(DESCRIBED)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notaflow ingress",
            "version": "0.1.0",
            "summary": "NFS-e e e-mails de notas nos dialetos Focus NFe e HubSoft",
            "description": "Erros do dialeto Focus: `{codigo, mensagem, erros?}`; do HubSoft: "
            '`{status: "error", msg}`.',
        },
        "tags": [
            {"name": "Focus NFS-e"},
            {"name": "Focus NFS-e Nacional"},
            {"name": "Focus NFC-e"},
            {"name": "Focus gatilhos"},
            {"name": "HubSoft"},
            {"name": "Wuro"},
            {"name": "Provedores"},
            {"name": "Operação"},
            {"name": "Admin"},
        ],
        "security": FOCUS_AUTH,
        "paths": paths,
        "components": components,
    }


# Built once per process, on the first request: the document does not change while it runs.
@cache
def _openapi_bytes() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode()


@cache
def _docs_page() -> str:
    return docs_html(openapi_document())


def openapi_routes() -> list[BaseRoute]:
    """`GET /openapi.json` and `GET /docs`."""

    async def openapi_json(request: Request) -> Response:
        return Response(_openapi_bytes(), media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(_docs_page())

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], name="openapi"),
        Route("/docs", docs, methods=["GET"], name="docs"),
    ]
