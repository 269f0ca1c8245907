"""Outbound webhooks: deliver a note's status change to the client's registered URLs.

Focus NFe compatible (a JSON POST carrying the static `authorization` value in the configured
header; done on any 2xx, otherwise retried after 1 min, 30 min, 1 h, 3 h and 24 h), plus a
Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) so receivers
can prove the sender and deduplicate on `webhook-id`, which stays the same across retries.

Pure parts, tested exhaustively: `sign` / `verify`, the SSRF policy (`check_destination`), the
retry schedule (`next_attempt_delay`). The I/O shell is `WebhookSender.deliver`, which never
raises for anything the network or the receiver does: it answers a `DeliveryResult`.

Errors:

    DestinationRefused (Permanent)          the URL or its addresses break the SSRF policy
    WebhookVerificationError (NotaflowError) a signature check failed (receiver side)

SSRF and DNS rebinding: the host is resolved once and every address must be public; the
policy itself is `notaflow.destinations`, also applied when a hook is created. Every delivery is
then sent to the checked address itself, so a second resolution cannot swap in an internal
address: plain `http` keeps the name in the `Host` header; `https` also sends the name as SNI
and verifies the certificate against the name (httpcore's `sni_hostname`), on a connection
that is closed after the delivery, because httpx's pool is keyed by the address and must not
hand a connection verified for one name to a delivery for another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import inspect
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from notaflow import destinations
from notaflow.errors import NotaflowError, Permanent, Transient

#: Focus NFe's retry delays, in seconds, after the first failed delivery.
RETRY_SCHEDULE: tuple[float, ...] = (60, 1800, 3600, 10800, 86400)

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300

#: (host, port) -> addresses; sync for `check_destination`, sync or async elsewhere.
SyncResolver = Callable[[str, int], Iterable[str]]
Resolver = Callable[[str, int], Iterable[str] | Awaitable[Iterable[str]]]


class DestinationRefused(Permanent):
    """The webhook URL is refused by the SSRF policy; retrying cannot help."""


class WebhookVerificationError(NotaflowError):
    """A Standard Webhooks signature check failed; the message says which part."""


# --------------------------------------------------------------------------- signatures


def _secret_key(secret: str) -> bytes:
    # `whsec_<base64>`; without the prefix the whole string is the base64 key, like the
    # official libraries (which also tolerate missing padding).
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64") from exc
    if not key:
        raise ValueError("webhook secret may not be empty")
    return key


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    digest = _digest(_secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a delivery the way a receiver should: raw body bytes, timestamp within
    ±`tolerance` seconds of `now`, any of the space-separated `v1` signatures matching."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_header = lowered.get("webhook-timestamp")
    sig_header = lowered.get("webhook-signature")
    if not (msg_id and ts_header and sig_header):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts_header)
    except ValueError:
        raise WebhookVerificationError(f"invalid webhook-timestamp {ts_header!r}") from None
    if timestamp < now - tolerance:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > now + tolerance:
        raise WebhookVerificationError("message timestamp too new")
    try:
        key = _secret_key(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    expected = _digest(key, msg_id, timestamp, body)
    for candidate in sig_header.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, given):
            return
    raise WebhookVerificationError("no matching signature found")


# --------------------------------------------------------------------------- SSRF policy


def _parse_destination(url: str) -> tuple[httpx.URL, str, int]:
    try:
        return destinations.parse_destination(url)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc


_literal = destinations.literal
_is_forbidden = destinations.is_forbidden


def _check_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    try:
        return destinations.check_addresses(host, addresses)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc
    except destinations.Unresolved as exc:
        raise Transient(str(exc)) from exc


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _loop_getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_destination(url: str, allow_private: bool, resolver: SyncResolver | None = None) -> None:
    """Raise `DestinationRefused` unless `url` is http(s), has a host and no credentials, and
    (unless `allow_private`) every address of its host is public. `resolver(host, port)`
    defaults to a blocking `socket.getaddrinfo`; DNS failure raises `Transient`."""
    _, host, port = _parse_destination(url)
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        _check_addresses(host, [str(literal)])
        return
    try:
        addresses = list((resolver or _getaddrinfo)(host, port))
    except OSError as exc:
        raise Transient(f"cannot resolve {host}: {exc}") from exc
    _check_addresses(host, addresses)


async def resolve_and_check(
    url: str, allow_private: bool, resolver: Resolver | None = None
) -> list[str]:
    """Resolve the URL's host (`resolver(host, port)`, sync or async; default
    `loop.getaddrinfo`) and answer its addresses, all checked unless `allow_private`."""
    _, host, port = _parse_destination(url)
    literal = _literal(host)
    if literal is not None:
        addresses: Iterable[str] = [str(literal)]
    else:
        try:
            answer = (resolver or _loop_getaddrinfo)(host, port)
            addresses = await answer if inspect.isawaitable(answer) else answer
            addresses = list(addresses)
        except OSError as exc:
            raise Transient(f"cannot resolve {host}: {exc}") from exc
    if allow_private:
        unique = list(dict.fromkeys(a.split("%", 1)[0] for a in addresses))
        if not unique:
            raise Transient(f"{host} did not resolve to any address")
        return unique
    return _check_addresses(host, addresses)


# --------------------------------------------------------------------------- retry schedule


def next_attempt_delay(
    attempt: int,
    schedule: Sequence[float] = RETRY_SCHEDULE,
    jitter: float = 0.1,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before retry number `attempt` (1 = the first retry), ±`jitter` of it;
    None once the schedule is exhausted: give up."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if attempt > len(schedule):
        return None
    base = float(schedule[attempt - 1])
    return base * (1 + uniform(-jitter, jitter)) if jitter else base


# --------------------------------------------------------------------------- delivery


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


def _check_auth_header(name: str, value: str) -> None:
    try:
        destinations.check_header(name, value)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc


def _body(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)  # compact UTF-8 JSON


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
                _check_auth_header(name, target.authorization)
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
        if _literal(parsed.host) is not None:
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
        # The status is all we need; do not let a receiver make us read a huge body.
        await response.aclose()
        return response
