"""Limits the ingress's HTTP server applies before any request reaches the application (issue
19): how large a request head may be, how long a connection may take to deliver it.

uvicorn's httptools protocol has neither: a 16 MiB header was buffered whole, and a connection
that sends nothing (or one header byte a second) was held until the file-descriptor limit. The
subclass below counts the bytes of each request head as they arrive and times its delivery;
past either limit it answers (431 / 408) and closes the connection. Idle keep-alive connections
and the concurrency bound are uvicorn's own settings (`timeout_keep_alive`, `limit_concurrency`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 16_384
    head_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout, self._head_too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Only the head's bytes count: a body that arrives in the same read is not a head.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.max_head_bytes:
                self._refuse(b"431 Request Header Fields Too Large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a keep-alive connection's next request
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        body = status[4:]
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.transport.close()


def limited_protocol(max_head_bytes: int, head_timeout: float) -> type[Any]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )


def server_options(
    max_head_bytes: int, head_timeout: float, keep_alive_timeout: float, max_concurrency: int
) -> dict[str, Any]:
    """uvicorn.Config keyword arguments enforcing the ingress's connection limits."""
    return {
        "http": limited_protocol(max_head_bytes, head_timeout),
        "h11_max_incomplete_event_size": max_head_bytes,  # if h11 is ever chosen instead
        "timeout_keep_alive": keep_alive_timeout,
        "limit_concurrency": max_concurrency or None,
    }
