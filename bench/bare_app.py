"""The baselines of the ingress benchmark: a bare Starlette endpoint that parses the same JSON
body and answers 202, served two ways:

- `default`: what a user would deploy instead, `uvicorn.run(app, host=..., port=...)` with
  uvicorn's defaults (uvloop and httptools where installed, access log on, `server` header);
- `quiet`: uvicorn's defaults but for the access log (off, as the ingress has it): the
  strictest baseline;
- `asyncio`: held to the asyncio loop (`uvicorn.Server(...).serve()` inside `asyncio.run`),
  httptools, no access log, no `server` header: the pair the ingress is compared with when it
  is started with `--loop asyncio`, so that ratio compares the work done per request only;
- `asgi`: no Starlette at all, a bare ASGI callable doing the same (read the body, parse it,
  answer 202) under uvicorn's defaults without the access log: the least any endpoint costs
  under uvicorn, which the floor benchmark (`bench/floor.py`) counts for each request the
  ingress serves.

    python bench/bare_app.py PORT [default|quiet|asyncio|asgi]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

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

_ACCEPTED_HEADERS = [(b"content-type", b"application/json")]


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    document = json.loads(body)
    answer = json.dumps(
        {"cnpj_prestador": document["prestador"]["cnpj"], "status": "processando_autorizacao"}
    ).encode()
    headers = [*_ACCEPTED_HEADERS, (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "default"
    if mode == "default":
        uvicorn.run(app, host="127.0.0.1", port=port)
    elif mode == "asgi":
        uvicorn.run(bare_asgi, host="127.0.0.1", port=port, access_log=False)
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
