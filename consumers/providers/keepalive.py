"""A lean httpx transport for a provider we call at high concurrency: HTTP/1.1 keep-alive
connections on asyncio streams, parsed by h11, handed out from a free list in O(1).

Why not httpx's default transport: httpcore's pool walks every connection it holds (with a
socket check on each idle one) each time a request starts or ends, so at 200 calls in flight
the walk, not the call, was most of the emission consumer's CPU. This keeps httpx's client
API (auth, URLs, JSON, timeouts, exceptions), so the adapter code and its tests are unchanged.

Behaviour kept from httpx: a connection is reused only when both sides finished the previous
exchange cleanly; failures raise httpx's own exceptions (ConnectError, ReadTimeout, ...). A
reused connection the server closed meanwhile fails the call with RemoteProtocolError, which
callers treat as transient, as with httpcore.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h11
import httpx

_READ_SIZE = 64 * 1024


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    state: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """At most `max_connections` connections in use at once (more callers wait, bounded by the
    pool timeout); up to that many kept alive between calls, most recently used first."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, max_connections: int = 1000):
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.raw_scheme, url.raw_host, port)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no free connection", request=request) from exc
        conn: _Connection | None = None
        try:
            conn = await self._checkout(origin, url.host, request, timeouts.get("connect"))
            return await self._exchange(conn, request, origin, timeouts)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            self._slots.release()

    async def _checkout(
        self, origin: tuple[bytes, bytes, int], host: str, request: httpx.Request, timeout: float
    ) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        tls = (self._ssl or ssl.create_default_context()) if origin[0] == b"https" else None
        where = f"{host}:{origin[2]}"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, origin[2], ssl=tls, limit=_READ_SIZE
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {where}", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {where}: {exc}", request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        conn: _Connection,
        request: httpx.Request,
        origin: tuple[bytes, bytes, int],
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        body = await request.aread()
        state = conn.state
        try:
            data = state.send(
                h11.Request(
                    method=request.method,
                    target=request.url.raw_path,
                    headers=list(request.headers.raw),
                )
            )
            if body:
                data += state.send(h11.Data(data=body))
            data += state.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        conn.writer.write(data)
        try:
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc), request=request) from exc
        try:
            async with asyncio.timeout(timeouts.get("read")):
                response, content = await self._read_response(conn)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("read", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
            request=request,
        )

    @staticmethod
    async def _read_response(conn: _Connection) -> tuple[h11.Response, bytes]:
        state = conn.state
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                data = await conn.reader.read(_READ_SIZE)
                if not data and state.their_state is h11.SEND_RESPONSE:
                    raise h11.RemoteProtocolError("Server disconnected without sending a response.")
                state.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                if response is None:
                    raise h11.RemoteProtocolError("no response")
                return response, b"".join(chunks)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
