"""The consumers' health endpoint: a tiny HTTP/1.1 server on `NOTAFLOW_HEALTH_PORT`.

Consumers have no web framework and need none: Kubernetes asks `GET /healthz` (200 healthy,
503 not) and Prometheus `GET /metrics`. One request per connection, answered and closed; the
request head is bounded in size and time, so a stuck or hostile client costs one short-lived
task and nothing else.

Healthy means "making progress or having nothing to do" (`progress_check`): a consumer whose
handlers hang, or that holds lag it does not work off, is restarted; an idle one is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from notaflow.metrics import render

__all__ = ["HealthServer", "ProgressStats", "progress_check"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}
_REASONS[503] = "Service Unavailable"
_COUNTERS = ("processed", "retried", "dead_lettered")
_TOO_LARGE = b"TOO-LARGE"  # no spaces: answered 400 like any malformed request line


class ProgressStats(Protocol):
    """What `progress_check` reads (consumers.runtime.Stats has it)."""

    last_progress: float  # time.monotonic() of the last finished record


def progress_check(
    stats_provider: Callable[[], ProgressStats],
    max_idle: float,
    busy: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], bool]:
    """A health check: unhealthy when the consumer has work (`busy()`: records in flight or
    lag) yet made no progress for `max_idle` seconds. A consumer with nothing to do stays
    healthy however long ago its last record was.

    Progress is a newer `last_progress` or a change of the `processed`/`retried`/
    `dead_lettered` counters when the stats have them (a record in backoff retries is alive).
    Idle time is counted from the later of the last progress and the moment work was first
    seen, so a consumer idle for an hour is not unhealthy the instant a record arrives.
    """
    busy_since: float | None = None
    counters: tuple[object, ...] | None = None
    counters_at = clock()

    def check() -> bool:
        nonlocal busy_since, counters, counters_at
        now = clock()
        stats = stats_provider()
        seen = tuple(getattr(stats, name, None) for name in _COUNTERS)
        if seen != counters:
            counters, counters_at = seen, now
        if not busy():
            busy_since = None
            return True
        if busy_since is None:
            busy_since = now
        last = max(stats.last_progress, busy_since, counters_at)
        return now - last <= max_idle

    return check


class HealthServer:
    """`GET /healthz` (200/503 from `check()`) and, given a registry, `GET /metrics`."""

    def __init__(
        self,
        host: str,
        port: int,
        check: Callable[[], bool],
        registry: CollectorRegistry | None = None,
        views: dict[bytes, Callable[[], Any]] | None = None,
    ) -> None:
        # Operator views beside the health check (e.g. the consumers' `/backlog`): a path and
        # what to answer, as JSON.
        self._views = views or {}
        self.host = host
        self._port = port
        self._check = check
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, limit=MAX_HEAD_BYTES
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError):
                return  # nothing sensible to answer: close
            except (asyncio.LimitOverrunError, ValueError):
                head = _TOO_LARGE  # the head exceeded MAX_HEAD_BYTES (the stream's limit)
            status, body, ctype = self.respond(head.split(b"\r\n", 1)[0])
            method = head.split(b" ", 1)[0]
            writer.write(_response(status, body, ctype, include_body=method != b"HEAD"))
            await writer.drain()
            if head == _TOO_LARGE:
                # Closing with unread input makes the kernel reset the connection, and the
                # client may lose the answer: read (briefly) what it still sends, then close.
                writer.write_eof()
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(1):
                        while await reader.read(65536):
                            pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    def respond(self, request_line: bytes) -> tuple[int, bytes, str]:
        """Status, body and content type for one request line (pure, apart from the check)."""
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, b'{"status":"bad_request"}', "application/json"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target in self._views and method in (b"GET", b"HEAD"):
            return 200, json.dumps(self._views[target]()).encode(), "application/json"
        if target not in (b"/healthz", b"/metrics") or (
            target == b"/metrics" and self._registry is None
        ):
            return 404, b'{"status":"not_found"}', "application/json"
        if method not in (b"GET", b"HEAD"):
            return 405, b'{"status":"method_not_allowed"}', "application/json"
        if target == b"/metrics":
            assert self._registry is not None
            data, ctype = render(self._registry)
            return 200, data, ctype
        try:
            healthy = bool(self._check())
        except Exception:
            log.exception("health check failed")
            healthy = False
        body = json.dumps({"status": "ok" if healthy else "unhealthy"}).encode()
        return (200 if healthy else 503), body, "application/json"


def _response(status: int, body: bytes, content_type: str, include_body: bool = True) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body if include_body else head
