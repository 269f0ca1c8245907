"""A lean httpx transport for a provider we call at high concurrency: HTTP/1.1 keep-alive
connections on asyncio streams, handed out from a free list in O(1).

Why not httpx's default transport: httpcore's pool walks every connection it holds (with a
socket check on each idle one) each time a request starts or ends, so at 200 calls in flight
the walk, not the call, was most of the emission consumer's CPU. This keeps httpx's client
API (auth, URLs, JSON, timeouts, exceptions), so the adapter code and its tests are unchanged.

The HTTP/1.1 framing is done here, not by h11: its per-event state machine and header
validation were the largest part of what was left of a call's CPU. What a client needs of it is
small: a request head with a Content-Length body; a response framed by Content-Length, chunked
transfer coding or the end of the connection, 1xx interim responses skipped. Anything else
malformed is a RemoteProtocolError, and a connection is reused only after a cleanly framed
HTTP/1.1 response without `Connection: close`.

Behaviour kept from httpx: a connection is reused only when both sides finished the previous
exchange cleanly; failures raise httpx's own exceptions (ConnectError, ReadTimeout, ...). A
reused connection the server closed meanwhile fails the call with RemoteProtocolError, which
callers treat as transient, as with httpcore.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import NamedTuple

import httpx

_READ_SIZE = 64 * 1024


# RFC 9110 tokens (methods, header names); a target or a header value must not hold controls,
# so nothing a caller passes can split the head.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY = frozenset((204, 304))


class _ProtocolError(Exception):
    """The server broke HTTP/1.1 framing (mapped to httpx.RemoteProtocolError)."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Reply(NamedTuple):
    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case
    content: bytes


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """At most `max_connections` connections in use at once (more callers wait, bounded by the
    pool timeout); up to that many kept alive between calls, most recently used first.

    `exchange` is the same call without httpx's request and response objects, for a caller
    on a hot path that builds its requests itself; its errors are httpx's, without `request`.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, max_connections: int = 1000):
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[bytes, str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        body = await request.aread()
        try:
            reply = await self.exchange(
                url.raw_scheme,
                url.host,
                url.port or (443 if url.scheme == "https" else 80),
                request.method.encode("ascii"),
                url.raw_path,
                list(request.headers.raw),
                body,
                request.extensions.get("timeout", {}),
            )
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(
            reply.status_code,
            headers=reply.headers,
            stream=httpx.ByteStream(reply.content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reply.reason},
            request=request,
        )

    async def exchange(
        self,
        scheme: bytes,
        host: str,
        port: int,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> Reply:
        origin = (scheme, host, port)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no free connection") from exc
        conn: _Connection | None = None
        try:
            conn = await self._checkout(origin, timeouts.get("connect"))
            return await self._exchange(conn, origin, method, target, headers, body, timeouts)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            self._slots.release()

    async def _checkout(self, origin: tuple[bytes, str, int], timeout: float | None) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        scheme, host, port = origin
        tls = (self._ssl or ssl.create_default_context()) if scheme == b"https" else None
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, limit=_READ_SIZE
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {where}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {where}: {exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        conn: _Connection,
        origin: tuple[bytes, str, int],
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> Reply:
        conn.writer.write(_request_head(method, target, headers, body) + body)
        try:
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write") from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc)) from exc
        try:
            async with asyncio.timeout(timeouts.get("read")):
                reply, reusable = await _read_response(conn.reader, method)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("read") from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response."
                if not exc.partial
                else "Server disconnected in the middle of a response."
            ) from exc
        except (_ProtocolError, asyncio.LimitOverrunError, ValueError) as exc:
            raise httpx.RemoteProtocolError(f"malformed response: {exc}") from exc
        if reusable:
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()
        return reply

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request line and headers. The body is sent whole with a Content-Length: a
    Transfer-Encoding the caller set (httpx does for streamed content, read whole by now)
    is replaced by it."""
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise httpx.LocalProtocolError("illegal method or target")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    length = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue
        if lower == b"content-length":
            if length:
                continue
            length, value = True, str(len(body)).encode("ascii")
        if not _TOKEN.fullmatch(name) or _VALUE_BAD.search(value):
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        parts += (name, b": ", value, b"\r\n")
    if body and not length:
        parts += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def _read_response(reader: asyncio.StreamReader, method: bytes) -> tuple[Reply, bool]:
    """One response (1xx interim ones skipped) and whether the connection may be reused."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise _ProtocolError(f"status line {lines[0][:100]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise _ProtocolError(f"header line {line[:100]!r}")
            headers.append((name.lower(), value.strip(b" \t")))
        if status == 101:
            raise _ProtocolError("unexpected protocol switch")
        if status >= 200:
            break
    reusable = version == b"HTTP/1.1"
    chunked, length = False, None
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            reusable = False
        elif name == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            if not chunked:
                raise _ProtocolError(f"transfer-encoding {value[:100]!r}")
        elif name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise _ProtocolError(f"content-length {value[:100]!r}")
            length = int(value)
    if method == b"HEAD" or status in _NO_BODY:
        content = b""
    elif chunked:
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _ProtocolError("chunk not followed by CRLF")
        content = b"".join(chunks)
    elif length is not None:
        content = await reader.readexactly(length)
    else:
        content = await reader.read()  # framed by the end of the connection
        reusable = False
    return Reply(status, reason, headers, content), reusable
