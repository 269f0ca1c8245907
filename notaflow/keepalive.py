"""A lean httpx transport for the servers the consumers call at high concurrency (Focus, the
clients' webhook receivers, and the sandbox's callbacks): HTTP/1.1 keep-alive connections on
asyncio streams, handed out from a free list in O(1).

Why not httpx's default transport: httpcore's pool walks every connection it holds (with a
socket check on each idle one) each time a request starts or ends, so at 200 calls in flight
the walk, not the call, was most of the emission consumer's CPU. This keeps httpx's client
API (auth, URLs, JSON, timeouts, exceptions), so the adapter code and its tests are unchanged.

Responses are parsed by httptools (llhttp, the C parser uvicorn serves with), not h11: h11's
per-event state machine and header validation were the largest part of what was left of a
call's CPU. The request head is written here (a Content-Length body, names and values checked
so nothing a caller passes can split it). Anything malformed is a RemoteProtocolError, and a
connection is reused only after a cleanly framed HTTP/1.1 response without `Connection: close`.

Behaviour kept from httpx: a connection is reused only when both sides finished the previous
exchange cleanly; failures raise httpx's own exceptions (ConnectError, ReadTimeout, ...). A
reused connection the server closed meanwhile fails the call with RemoteProtocolError, which
callers treat as transient, as with httpcore.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import httptools
import httpx

_READ_SIZE = 64 * 1024


# RFC 9110 tokens (methods, header names); a target or a header value must not hold controls,
# so nothing a caller passes can split the head.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _ProtocolError(Exception):
    """The server broke HTTP/1.1 framing (mapped to httpx.RemoteProtocolError)."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Reply(NamedTuple):
    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case
    content: bytes  # at most `max_body` bytes and a read's worth when the caller set one


# (scheme, host, port, TLS server name): a connection verified for one name is never handed
# to a call for another, even at the same address (webhooks pin the address they checked).
_Origin = tuple[bytes, str, int, str | None]
Opener = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Call(NamedTuple):
    """One `exchange`, as each of its attempts makes it."""

    origin: _Origin
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timeouts: dict[str, float | None]
    max_body: int | None


class _NoAnswer(Exception):
    """A call failed before any byte of an answer came back; `error` is what it raises,
    `reused` whether its connection was a kept one."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error
        self.reused = False


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """At most `max_connections` connections in use at once (more callers wait, bounded by the
    pool timeout); up to that many kept alive between calls, most recently used first.

    `exchange` is the same call without httpx's request and response objects, for a caller
    on a hot path that builds its requests itself; its errors are httpx's, without `request`.

    For many origins (client webhooks) the idle connections are bounded: every origin may keep
    `max_idle_per_origin`, and more while all origins together keep fewer than `max_idle`;
    none is kept longer than `idle_expiry` seconds (servers close idle ones after a few
    seconds: Node's default is 5), and expired ones are swept at most once per `idle_expiry`.
    A burst to one receiver keeps the connections it opened for the next (most recently used
    first, so those a smaller load leaves unused expire): with 8 kept per origin and nothing
    more, 56 of a burst of 64 hooks opened a connection again, each a TLS handshake for the
    sender and the receiver. `opener` is `asyncio.open_connection` unless a test passes its
    own.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        *,
        max_idle_per_origin: int | None = None,
        max_idle: int = 0,
        idle_expiry: float | None = None,
        opener: Opener = asyncio.open_connection,
    ):
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._max_idle = max_idle_per_origin
        self._max_idle_total = max_idle
        self._idle_count = 0  # of every origin
        self._expiry = idle_expiry
        self._swept = time.monotonic()
        self._open = opener

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
        *,
        server_hostname: str | None = None,
        max_body: int | None = None,
        retry_stale: bool = False,
    ) -> Reply:
        """One call. `server_hostname`: the TLS name (SNI and certificate) when `host` is an
        address the caller pinned. `max_body`: read no more of the answer than that (its
        connection is then not reused). `retry_stale`: a kept connection that fails before
        any byte of the answer (the server closed it while idle, racing our request) is
        retried once on a new one (the origin's other kept connections are dropped); only for
        callers whose receivers deduplicate, since the server may in rare cases have taken the
        request before it closed."""
        origin: _Origin = (scheme, host, port, server_hostname)
        call = _Call(origin, method, target, headers, body, timeouts, max_body)
        # A timer only when there is something to wait for: a free slot is taken at once (an
        # `asyncio.timeout` is a timer scheduled and cancelled, a fifth of a call's CPU).
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no free connection") from exc
        else:
            await self._slots.acquire()
        try:
            try:
                return await self._attempt(call)
            except _NoAnswer as exc:
                if not (retry_stale and exc.reused):
                    raise exc.error from exc.__cause__
                # The origin's other kept connections are as likely to be dead (the server
                # restarted, or closes idle ones after the same while): the retry opens one.
                self._drop_idle(origin)
            try:
                return await self._attempt(call)
            except _NoAnswer as exc:
                raise exc.error from exc.__cause__
        finally:
            self._slots.release()

    async def _attempt(self, call: _Call) -> Reply:
        """One call on one connection, closed on any failure; a `_NoAnswer` says whether the
        connection was a kept one."""
        conn: _Connection | None = None
        reused = False
        try:
            conn, reused = await self._checkout(call.origin, call.timeouts.get("connect"))
            return await self._exchange(conn, call)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, _NoAnswer):
                exc.reused = reused
            raise

    def _drop_idle(self, origin: _Origin) -> None:
        for conn in self._idle.pop(origin, []):
            self._idle_count -= 1
            conn.close()

    async def _checkout(self, origin: _Origin, timeout: float | None) -> tuple[_Connection, bool]:
        """A connection to `origin`, and whether it is a kept one."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not idle:
                del self._idle[origin]
            if conn.usable() and (self._expiry is None or not self._expired(conn)):
                return conn, True
            conn.close()
        scheme, host, port, server_hostname = origin
        tls = (self._ssl or ssl.create_default_context()) if scheme == b"https" else None
        where = f"{host}:{port}"
        extra: dict[str, Any] = (
            {"server_hostname": server_hostname} if tls and server_hostname else {}
        )
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._open(host, port, ssl=tls, limit=_READ_SIZE, **extra)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {where}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {where}: {exc}") from exc
        return _Connection(reader, writer), False

    def _expired(self, conn: _Connection, now: float | None = None) -> bool:
        assert self._expiry is not None
        return (time.monotonic() if now is None else now) - conn.idle_since > self._expiry

    def _checkin(self, origin: _Origin, conn: _Connection) -> None:
        if self._expiry is not None:  # no clock read per call where nothing expires (Focus)
            now = time.monotonic()
            if now - self._swept > self._expiry:
                self._sweep(now)
            conn.idle_since = now
        idle = self._idle.setdefault(origin, [])
        if (
            self._max_idle is not None
            and len(idle) >= self._max_idle
            and self._idle_count >= self._max_idle_total
        ):
            conn.close()
            return
        idle.append(conn)
        self._idle_count += 1

    def _sweep(self, now: float) -> None:
        """Close the expired idle connections of every origin (an origin called once keeps
        its connections otherwise until the server closes them)."""
        self._swept = now
        for origin, idle in list(self._idle.items()):
            kept = []
            for conn in idle:
                if self._expired(conn, now) or not conn.usable():
                    conn.close()
                    self._idle_count -= 1
                else:
                    kept.append(conn)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    async def _exchange(self, conn: _Connection, call: _Call) -> Reply:
        origin, method, target, headers, body, timeouts, max_body = call
        writer = conn.writer
        writer.write(_request_head(method, target, headers, body) + body)
        try:
            if writer.transport.get_write_buffer_size():  # the socket did not take it all
                async with asyncio.timeout(timeouts.get("write")):
                    await writer.drain()
            else:  # all written: drain only raises what the connection met, and never waits
                await writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("write") from exc
        except OSError as exc:
            raise _NoAnswer(httpx.WriteError(str(exc))) from exc
        sink = _Sink(head_only=method == b"HEAD")
        try:
            async with asyncio.timeout(timeouts.get("read")):
                reply, reusable = await _read_response(conn.reader, sink, max_body)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("read") from exc
        except OSError as exc:
            error = httpx.ReadError(str(exc))
            raise (error if sink.received else _NoAnswer(error)) from exc
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _NoAnswer(
                    httpx.RemoteProtocolError("Server disconnected without sending a response.")
                ) from exc
            raise httpx.RemoteProtocolError(
                "Server disconnected in the middle of a response."
            ) from exc
        except (_ProtocolError, asyncio.LimitOverrunError, ValueError) as exc:
            raise httpx.RemoteProtocolError(f"malformed response: {exc}") from exc
        if reusable:
            self._checkin(origin, conn)
        else:
            conn.close()
        return reply

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._idle_count = 0


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


class _Sink:
    """httptools callbacks for one response; 1xx interim responses are dropped as they end."""

    __slots__ = (
        "body",
        "body_size",
        "complete",
        "head_only",
        "headers",
        "keep_alive",
        "parser",
        "reason",
        "received",
        "status",
    )

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.keep_alive = False
        self.received = False  # any byte of the answer

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only and self.status >= 200:
            self.complete = True  # a HEAD answer has no body whatever its headers say

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # 100 Continue and friends: the real answer follows
            self.reason, self.headers, self.body = b"", [], []
            return
        # Asked now: llhttp only knows while the message is being completed.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    def release(self) -> None:
        """Drop the parser. It holds this sink's bound methods (its callbacks), so the two make a
        reference cycle that only the cyclic collector frees: at 2,000 responses a second those
        piled up into young-generation collections freeing 40-175k objects at once, 40-110 ms
        pauses that were the command-to-POST p99 (`bin/bench consumer`: 73-96 ms, 17 ms with
        the collector off). Broken here, the sink and the parser go by reference counting."""
        del self.parser


async def _read_response(
    reader: asyncio.StreamReader, sink: _Sink, max_body: int | None = None
) -> tuple[Reply, bool]:
    """One response, parsed by httptools (llhttp, the parser uvicorn serves with), and whether
    the connection may be reused: only after a cleanly framed HTTP/1.1 answer that does not ask
    to close and left no stray bytes behind. With `max_body`, reading stops once the body is
    longer (the answer is kept as far as it was read; the connection is not reused)."""
    try:
        stray = False
        while not sink.complete:
            if max_body is not None and sink.body_size > max_body:
                break
            data = await reader.read(_READ_SIZE)
            if not data:
                if sink.status >= 200 and not _framed(sink.headers):
                    break  # a body framed by the end of the connection
                # Mapped to "disconnected without a response" or "... in the middle of a response".
                raise asyncio.IncompleteReadError(b"partial" if sink.received else b"", None)
            sink.received = True
            try:
                sink.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                raise _ProtocolError("unexpected protocol switch") from exc
            except httptools.HttpParserError as exc:
                if not sink.complete:
                    raise _ProtocolError(str(exc)) from exc
                stray = True  # bytes after the answer: answer kept, connection not reused
        reusable = (
            sink.complete
            and not stray
            and not sink.head_only
            and sink.parser.get_http_version() == "1.1"
            and sink.keep_alive
        )
        return Reply(sink.status, sink.reason, sink.headers, b"".join(sink.body)), reusable
    finally:
        sink.release()


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
