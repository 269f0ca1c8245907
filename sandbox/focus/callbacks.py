"""Hook deliveries, as Focus makes them: one JSON POST per status change with the note's GET
body and the hook's `authorization` in its `authorization_header` (default `Authorization`); a
non-2xx answer or a network error is retried after each delay of `callback_retry_delays`, then
given up. A receiver that refused a connection is not dialled again for
`callback_refused_pause` seconds: attempts due meanwhile count as failed without a connection (a
stopped ingress would otherwise cost a connect per note and retry). When the sandbox stops,
callbacks still pending are given up at once rather than retried."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from notaflow.keepalive import KeepAliveTransport
from notaflow.sandbox.focus.hooks import Hook
from notaflow.sandbox.focus.state import Shared


class Callbacks:
    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._client: KeepAliveTransport | None = None
        # Receiver origin -> monotonic time of its last refused connection.
        self._refused: dict[str, float] = {}

    def send(self, hooks: list[Hook], body: Mapping[str, Any]) -> None:
        """Deliver `body` to each hook in the background."""
        for hook in hooks:
            self._shared.background.spawn(self._deliver(hook, body))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> KeepAliveTransport:
        if self._client is None:
            concurrency = self._shared.config.callback_concurrency
            self._client = KeepAliveTransport(max_connections=concurrency)
        return self._client

    async def _deliver(self, hook: Hook, body: Mapping[str, Any]) -> None:
        stats = self._shared.stats
        headers: dict[str, str] = {}
        if hook.authorization is not None:
            headers[hook.authorization_header or "Authorization"] = hook.authorization
        try:
            for wait in (0.0, *self._shared.config.callback_retry_delays):
                await asyncio.sleep(wait)
                if await self._post(hook.url, body, headers):
                    stats.callbacks["sent"] += 1
                    return
                stats.callbacks["failed"] += 1
        except asyncio.CancelledError:
            if not self._shared.background.stopping:
                raise
        stats.callbacks["given_up"] += 1

    async def _post(self, url: str, body: Mapping[str, Any], headers: dict[str, str]) -> bool:
        origin = _origin(url)
        refused_at = self._refused.get(origin)
        if refused_at is not None:
            if time.monotonic() - refused_at < self._shared.config.callback_refused_pause:
                return False
            del self._refused[origin]
        parts = urlsplit(url)
        scheme = parts.scheme.encode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        raw_headers = [
            (b"Host", parts.netloc.encode("idna")),
            (b"Content-Type", b"application/json"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timeout = self._shared.config.callback_timeout
        timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": None}
        try:
            reply = await self._http().exchange(
                scheme, parts.hostname or "", port, b"POST", target.encode(), raw_headers,
                payload, timeouts,
            )  # fmt: skip
        except httpx.ConnectError:
            self._refused[origin] = time.monotonic()
            return False
        except (httpx.HTTPError, UnicodeError):
            return False
        return 200 <= reply.status_code < 300


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
