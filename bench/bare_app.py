"""The baselines of the ingress benchmark: a bare Starlette endpoint that parses the same JSON
body and answers 202, served two ways:

- `default`: what a user would deploy instead, `uvicorn.run(app, host=..., port=...)` with
  uvicorn's defaults (uvloop and httptools where installed, access log on, `server` header);
- `quiet`: uvicorn's defaults but for the access log (off, as the ingress has it): the
  strictest baseline;
- `asyncio`: held to the asyncio loop (`uvicorn.Server(...).serve()` inside `asyncio.run`),
  httptools, no access log, no `server` header: the pair the ingress is compared with when it
  is started with `--loop asyncio`, so that ratio compares the work done per request only.

    python bench/bare_app.py PORT [default|quiet|asyncio]
"""

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
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "default"
    if mode == "default":
        uvicorn.run(app, host="127.0.0.1", port=port)
    elif mode == "quiet":
        uvicorn.run(app, host="127.0.0.1", port=port, access_log=False)
    else:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
        asyncio.run(uvicorn.Server(config).serve())
