"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow.ingress.deps import deps
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
