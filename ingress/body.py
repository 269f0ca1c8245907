"""Reading request bodies with a size limit, for every dialect."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from notaflow.errors import NotaflowError


class BodyError(NotaflowError):
    """A body the ingress cannot read; the route's dialect renders it (`ingress.dialects`)."""


class BodyTooLarge(BodyError):
    pass


class BodyNotJson(BodyError):
    def __init__(self, unsupported_type: bool) -> None:
        super().__init__("body is not JSON")
        self.unsupported_type = unsupported_type


# Clients copied from Focus's examples send JSON as form-urlencoded (curl -d), with no type at
# all (requests' data=, curl -T) or as text: the body decides, not the header. Only types that
# can never carry our JSON are refused up front.
_NEVER_JSON = ("multipart/", "application/xml", "text/xml", "image/", "audio/", "video/")


def _trusted_length(declared: str | None, limit: int) -> bool:
    """True when the declared Content-Length can be relied on (the server enforces it); raises
    BodyTooLarge when it is over the limit. ASCII digits only ("²".isdigit() too) and short
    enough for int(); otherwise the body is counted as it is read."""
    if declared is not None and declared.isascii() and declared.isdigit() and len(declared) < 19:
        if int(declared) > limit:
            raise BodyTooLarge
        return True
    return False


async def read_body(request: Request, limit: int) -> bytes:
    if _trusted_length(request.headers.get("content-length"), limit):
        return await request.body()  # the server enforces Content-Length
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """`read_body` for a raw ASGI handler: the same limit, the same ClientDisconnect."""
    counted = not _trusted_length(content_length, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                if counted:
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_json_type(content_type: str) -> None:
    """Raises BodyNotJson for a Content-Type that can never carry our JSON."""
    if content_type.lower().startswith(_NEVER_JSON):
        raise BodyNotJson(unsupported_type=True)


def parse_json(raw: bytes, empty: Any = None) -> Any:
    if not raw.strip():
        if empty is not None:
            return empty
        raise BodyNotJson(unsupported_type=False)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyNotJson(unsupported_type=False) from exc


async def read_json(request: Request, limit: int, empty: Any = None) -> Any:
    check_json_type(request.headers.get("content-type", ""))
    return parse_json(await read_body(request, limit), empty)
