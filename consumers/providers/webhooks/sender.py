"""One attempt of one webhook delivery: `WebhookSender.deliver`, the I/O shell around the pure
parts (`notaflow.webhook_signing`, `policy`, `schedule`). It never raises for anything the
network or the receiver does: it answers a `DeliveryResult`.

SSRF and DNS rebinding: the host is resolved once and every address checked (`policy`); the
delivery is then sent to the checked address itself, so a second resolution cannot swap in an
internal address: plain `http` keeps the name in the `Host` header; `https` also sends the name
as SNI and verifies the certificate against the name (httpcore's `sni_hostname`), on a
connection that is closed after the delivery, because httpx's pool is keyed by the address and
must not hand a connection verified for one name to a delivery for another.
"""

from __future__ import annotations

import asyncio
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
    resolve_and_check,
)
from notaflow.errors import Transient
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


_BODY_READ_LIMIT = 64 * 1024


class WebhookSender:
    """Delivers one attempt of one webhook. Owns its client unless one is given."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        allow_private: bool = False,
        timeout: float = 10,
        user_agent: str = "notaflow-webhooks",
        resolver: Resolver | None = None,
    ) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would reach what the SSRF check refused
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._allow_private = allow_private
        self._timeout = timeout
        self._user_agent = user_agent
        self._resolver = resolver

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

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
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(target.signing_secret, delivery_id, timestamp, body),
        }
        try:
            if target.authorization is not None:
                name = target.authorization_header or "Authorization"
                check_auth_header(name, target.authorization)
                headers[name] = target.authorization
            async with asyncio.timeout(self._timeout):
                response = await self._send(target.url, headers, body)
        except DestinationRefused as exc:
            return result(ok=False, error=str(exc), refused=True)
        except Transient as exc:
            return result(ok=False, error=str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return result(ok=False, error=f"timeout after {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return result(ok=False, error=f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return result(ok=True, status_code=status)
        return result(ok=False, status_code=status, error=f"HTTP {status}")

    async def _send(self, url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        addresses = await resolve_and_check(url, self._allow_private, self._resolver)
        parsed = httpx.URL(url)
        sni: str | None = None
        if literal(parsed.host) is not None:
            targets = [parsed]
        else:
            # Pinned to the checked addresses; the name stays in the Host header (and, for
            # https, in SNI and the certificate check).
            headers = {**headers, "Host": parsed.netloc.decode("ascii")}
            targets = [parsed.copy_with(host=address) for address in addresses]
            if parsed.scheme == "https":
                sni = parsed.raw_host.decode("ascii")  # IDNA-encoded, as SNI wants it
                headers["Connection"] = "close"
        for fallback in targets[:-1]:
            try:
                return await self._post(fallback, headers, body, sni)
            except httpx.ConnectError:
                continue  # e.g. an IPv6 address without an IPv6 route: try the next one
        return await self._post(targets[-1], headers, body, sni)

    async def _post(
        self, url: httpx.URL, headers: dict[str, str], body: bytes, sni: str | None = None
    ) -> httpx.Response:
        request = self._client.build_request(
            "POST",
            url,
            headers=headers,
            content=body,
            timeout=self._timeout,
            extensions={"sni_hostname": sni} if sni else None,
        )
        response = await self._client.send(request, stream=True, follow_redirects=False)
        # The status is all we need, but a response closed before its end closes its
        # connection too: a short answer is read through so the connection goes back to the
        # pool (one TCP connection, and its httpcore objects, per hook otherwise), while a
        # receiver answering more than _BODY_READ_LIMIT does not make us read it all.
        read = 0
        try:
            if not response.is_stream_consumed:  # else built in memory (a mock transport): read
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > _BODY_READ_LIMIT:
                        break
        finally:
            await response.aclose()
        return response
