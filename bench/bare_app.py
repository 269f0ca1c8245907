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
    from pathlib import Path

    # The repository first: this directory's ingress.py would shadow the ingress package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ingress.server_limits import server_options
    from notaflow.settings import Settings

    defaults = Settings()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
        # The ingress's own server limits (header size and timeout, keep-alive, concurrency):
        # the same server settings on both sides of the ratio.
        **server_options(
            defaults.ingress_max_header_bytes,
            defaults.ingress_header_timeout,
            defaults.ingress_keep_alive_timeout,
            defaults.ingress_max_concurrency,
        ),
    )
    asyncio.run(uvicorn.Server(config).serve())
