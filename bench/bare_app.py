"""The baseline of the ingress benchmark: a bare Starlette endpoint that parses the same JSON
body and answers 202, served exactly as `notaflow ingress` serves the real one
(`notaflow.processes.run_ingress`): `uvicorn.Server(...).serve()` inside `asyncio.run`, so the
same event loop (the standard library's: uvicorn's `loop="auto"` only applies to
`uvicorn.run`), httptools, no access log, no `server` header. Keep the two in step, so the
ratio compares the work done per request and not the servers' settings."""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse(
        {
            "cnpj_prestador": body["prestador"]["cnpj"],
            "ref": request.query_params["ref"],
            "status": "processando_autorizacao",
        },
        status_code=202,
    )


app = Starlette(routes=[Route("/v2/nfse", accept, methods=["POST"])])

if __name__ == "__main__":
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    asyncio.run(uvicorn.Server(config).serve())
