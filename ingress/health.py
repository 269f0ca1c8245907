"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow.ingress.deps import deps
from notaflow.ingress.openapi_parts import Description, json_response
from notaflow.ingress.responses import FastJSONResponse


async def healthz(request: Request) -> Response:
    # Answering at all proves the event loop turns.
    return FastJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    d = deps(request)
    kafka = await d.bus.ready()
    try:
        async with asyncio.timeout(2):
            async with d.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        database = True
    except Exception:
        database = False
    ok = kafka and database
    return FastJSONResponse(
        {"status": "ready" if ok else "not_ready", "kafka": kafka, "database": database},
        status_code=200 if ok else 503,
    )


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]

_TAGS, _READINESS = ["Operação"], {"$ref": "#/components/schemas/Readiness"}
OPENAPI = Description(
    paths={
        "/healthz": {
            "get": {
                "tags": _TAGS,
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {
                    "200": json_response(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "Vivo"
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "tags": _TAGS,
                "operationId": "readyz",
                "summary": "Readiness: Kafka e banco de dados acessíveis",
                "security": [],
                "responses": {
                    "200": json_response(_READINESS, "Pronto"),
                    "503": json_response(_READINESS, "Não pronto"),
                },
            }
        },
    },
    schemas={
        "Readiness": {
            "type": "object",
            "required": ["status", "kafka", "database"],
            "properties": {
                "status": {"enum": ["ready", "not_ready"]},
                "kafka": {"type": "boolean"},
                "database": {"type": "boolean"},
            },
        },
    },
)
