"""Reading request bodies with a size limit, for every dialect."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request


class BodyTooLarge(Exception):
    pass


class BodyNotJson(Exception):
    def __init__(self, unsupported_type: bool) -> None:
        super().__init__("body is not JSON")
        self.unsupported_type = unsupported_type


# Clients copied from Focus's examples send JSON as form-urlencoded (curl -d), with no type at
# all (requests' data=, curl -T) or as text: the body decides, not the header. Only types that
# can never carry our JSON are refused up front.
_NEVER_JSON = ("multipart/", "application/xml", "text/xml", "image/", "audio/", "video/")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # ASCII digits only ("²".isdigit() too) and short enough for int(); else count as we read.
    if declared is not None and declared.isascii() and declared.isdigit() and len(declared) < 19:
        if int(declared) > limit:
            raise BodyTooLarge
        return await request.body()  # the server enforces Content-Length
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, empty: Any = None) -> Any:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith(_NEVER_JSON):
        raise BodyNotJson(unsupported_type=True)
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty is not None:
            return empty
        raise BodyNotJson(unsupported_type=False)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyNotJson(unsupported_type=False) from exc
