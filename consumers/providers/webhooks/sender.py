"""One attempt of one webhook delivery: `WebhookSender.deliver`, the I/O shell around the pure
parts (`notaflow.webhook_signing`, `policy`, `schedule`). It never raises for anything the
network or the receiver does: it answers a `DeliveryResult`.

SSRF and DNS rebinding: the host is resolved once and every address checked (`policy`); the
delivery is then sent to the checked address itself, so a second resolution cannot swap in an
internal address: plain `http` keeps the name in the `Host` header; `https` also sends the name
as SNI and verifies the certificate against the name. Connections are kept per (address,
TLS name), so one verified for a name is never handed to a delivery for another.

The POST goes through `notaflow.keepalive` (the transport the Focus adapter uses), not an
httpx client: httpx's request, response and pool objects were 13 % of the notification
consumer's CPU and most of what its cyclic collector still freed per note. No proxy is ever
used (an environment proxy would reach what the SSRF check refused), no redirect followed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from notaflow.consumers.providers.webhooks.policy import (
    DestinationRefused,
    Resolver,
    check_auth_header,
    literal,
    parsed_url,
    resolve_and_check,
)
from notaflow.errors import Transient
from notaflow.keepalive import KeepAliveTransport, Reply
from notaflow.webhook_signing import sign


@dataclass(frozen=True, kw_only=True)
class HookTarget:
    """One registered hook. Keyword-only: four adjacent strings are too easy to swap."""

    url: str
    signing_secret: str
    authorization: str | None = None
    authorization_header: str | None = "Authorization"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False  # SSRF policy or a bad hook configuration: never retry
    duration_ms: float = 0.0

    @property
    def retryable(self) -> bool:
        return not self.ok and not self.refused


def _body(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)  # compact UTF-8 JSON


# An answer is read through (so its connection is kept) up to this much; a receiver answering
# more is not read further, and its connection is dropped.
_BODY_READ_LIMIT = 64 * 1024
# Idle connections kept per receiver, and for how long (servers drop idle ones after a few
# seconds; Node's default is 5): bounded, as the receivers are the tenants' many. Beyond its
# 8, a receiver keeps more while all of them together keep fewer than the connections in use
# at once may be: a burst's connections serve the next burst.
_IDLE_PER_ORIGIN = 8
_IDLE_EXPIRY = 4.0


def hook_transport(
    max_connections: int = 100, ssl_context: ssl.SSLContext | None = None
) -> KeepAliveTransport:
    """The transport a sender owns unless given one: certifi's CAs, as httpx uses, unless
    `ssl_context` says otherwise (the hooks benchmark's receiver has its own)."""
    return KeepAliveTransport(
        ssl_context or httpx.create_ssl_context(),
        max_connections,
        max_idle_per_origin=_IDLE_PER_ORIGIN,
        max_idle=max_connections,
        idle_expiry=_IDLE_EXPIRY,
    )


class WebhookSender:
    """Delivers one attempt of one webhook. Owns its transport unless one is given."""

    def __init__(
        self,
        transport: KeepAliveTransport | None = None,
        allow_private: bool = False,
        timeout: float = 10,
        user_agent: str = "notaflow-webhooks",
        resolver: Resolver | None = None,
    ) -> None:
        self._owns_transport = transport is None
        self._transport = transport or hook_transport()
        self._allow_private = allow_private
        self._timeout = timeout
        self._timeouts: dict[str, float | None] = dict.fromkeys(
            ("connect", "read", "write", "pool"), timeout
        )
        self._user_agent = user_agent
        self._resolver = resolver

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def deliver(
        self, target: HookTarget, payload: dict[str, Any], delivery_id: str, timestamp: int
    ) -> DeliveryResult:
        """POST `payload` once. `delivery_id` must be the same for every retry of one delivery:
        receivers deduplicate on it."""
        started = time.perf_counter()

        def result(**kw: Any) -> DeliveryResult:
            return DeliveryResult(duration_ms=(time.perf_counter() - started) * 1000, **kw)

        body = _body(payload)
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", self._user_agent.encode("ascii")),
            (b"webhook-id", delivery_id.encode("ascii")),
            (b"webhook-timestamp", str(timestamp).encode("ascii")),
            (
                b"webhook-signature",
                sign(target.signing_secret, delivery_id, timestamp, body).encode("ascii"),
            ),
        ]
        try:
            if target.authorization is not None:
                name = target.authorization_header or "Authorization"
                check_auth_header(name, target.authorization)  # ASCII, no controls
                headers.append((name.encode("ascii"), target.authorization.encode("ascii")))
            async with asyncio.timeout(self._timeout):
                reply = await self._send(target.url, headers, body)
        except DestinationRefused as exc:
            return result(ok=False, error=str(exc), refused=True)
        except Transient as exc:
            return result(ok=False, error=str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return result(ok=False, error=f"timeout after {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return result(ok=False, error=f"{type(exc).__name__}: {exc}")
        status = reply.status_code
        if 200 <= status < 300:
            return result(ok=True, status_code=status)
        return result(ok=False, status_code=status, error=f"HTTP {status}")

    async def _send(self, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
        addresses = await resolve_and_check(url, self._allow_private, self._resolver)
        parsed = parsed_url(url)  # the URL the check parsed, not a second parse
        # The name (and port) the receiver knows itself by, also when the connection goes to a
        # pinned address.
        headers = [(b"Host", parsed.netloc), *headers]
        server_name = None
        if parsed.scheme == "https" and literal(parsed.host) is None:
            # https to a pinned address: the name goes in SNI and the certificate check
            # (IDNA-encoded, as SNI wants it).
            server_name = parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        for fallback in addresses[:-1]:
            try:
                return await self._post(parsed, fallback, port, headers, body, server_name)
            except httpx.ConnectError:
                continue  # e.g. an IPv6 address without an IPv6 route: try the next one
        return await self._post(parsed, addresses[-1], port, headers, body, server_name)

    async def _post(
        self,
        url: httpx.URL,
        address: str,
        port: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        server_name: str | None,
    ) -> Reply:
        # Only the status matters, but a short answer is read through so its connection is
        # kept (a new TCP connection per hook otherwise); redirects are never followed.
        # A kept connection the receiver closed while idle is retried once on a new one:
        # receivers deduplicate on webhook-id.
        return await self._transport.exchange(
            url.raw_scheme,
            address,
            port,
            b"POST",
            url.raw_path,
            headers,
            body,
            self._timeouts,
            server_hostname=server_name,
            max_body=_BODY_READ_LIMIT,
            retry_stale=True,
        )
