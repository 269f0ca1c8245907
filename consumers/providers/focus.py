"""Focus NFe HTTP adapter (NFS-e): emit, query, cancel, register hooks.

The transport is a seam (`httpx.AsyncClient(transport=...)`), so the adapter is tested against
the sandbox over real sockets and, in unit tests, against `httpx.MockTransport`.
Every httpx error is mapped to the error tree in one place, `map_httpx_errors` (HTTPX's own
`map_httpcore_exceptions` is the model); nothing foreign leaks out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from opentelemetry.trace import SpanKind

from notaflow import tracing
from notaflow.consumers.providers.urls import on_provider_host, segment
from notaflow.errors import NotaflowError, Permanent, RateLimited, Stopping, Transient
from notaflow.keepalive import KeepAliveTransport
from notaflow.metrics import Metrics

# httpx's exceptions -> the tree's, and how the message ends; the first row that matches wins.
# Transport failures, undecodable bodies, redirect loops: none is the document's fault, so all
# are worth another try.
HTTPX_ERRORS: tuple[tuple[type[httpx.HTTPError], type[NotaflowError], str | None], ...] = (
    (httpx.TimeoutException, Transient, "timeout"),
    (httpx.HTTPError, Transient, None),  # None: the exception's repr
)


@contextlib.contextmanager
def map_httpx_errors(what: str) -> Iterator[None]:
    """The one place the Focus adapter translates httpx's exceptions (`what`: "Focus GET
    /v2/nfse/x", the start of the message)."""
    try:
        yield
    except httpx.HTTPError as exc:
        for foreign, mapped, detail in HTTPX_ERRORS:
            if isinstance(exc, foreign):
                raise mapped(f"{what}: {detail or repr(exc)}") from exc
        raise


@dataclass(frozen=True)
class FocusReply:
    status_code: int
    body: dict[str, Any]


class RateLimitGate:
    """Honours Focus's `Rate-Limit-*` headers: when the window is spent, callers wait for the
    reset instead of collecting 429s (100 requests per minute per token in production)."""

    def __init__(self) -> None:
        self._resume_at = 0.0

    async def wait(self) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def observe(self, headers: Mapping[str, str]) -> None:
        """`headers` as httpx's, or a dict with the names in lower case."""
        remaining = headers.get("rate-limit-remaining")
        reset = headers.get("rate-limit-reset")
        try:
            if remaining is not None and reset is not None and int(remaining) <= 0:
                self._resume_at = max(self._resume_at, time.monotonic() + float(reset))
        except ValueError:
            pass

    def block_for(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)


class FocusClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        max_connections: int = 1000,
        max_in_flight: int | None = None,
    ) -> None:
        self._metrics = metrics
        # The consumer's concurrency limit (NOTAFLOW_CONSUMER_CONCURRENCY) is enforced here,
        # around the exchange itself, rather than by the runner around a whole record: the
        # record's bookkeeping before and after the call (database, lifecycle event) then
        # overlaps other calls instead of holding one of the provider's slots idle.
        self._calls = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._stopping = False
        # The connections must not bound the calls lower than that, and must all stay alive
        # (a new one per call costs a handshake, with TLS a lot more): 1,000 is above any sane
        # NOTAFLOW_CONSUMER_CONCURRENCY.
        # No `auth=` here: the token is attached by `_send` alone, which only ever addresses the
        # configured base's host (`consumers/providers/urls.py`), so no path a provider or a
        # forged callback names can carry it elsewhere.
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            # A transport handed in is a test seam; ours keeps `max_connections` alive.
            transport=transport or _transport(base_url, max_connections),
            headers={"User-Agent": "notaflow"},
        )
        self._gate = RateLimitGate()
        # The calls below skip the client's per-request machinery (URL merging, auth flow,
        # cookies, redirects, a log line each): at hundreds of notes per second it was the
        # largest part of the emission consumer's CPU. What it would have added is fixed per
        # client, so it is worked out once here: the same headers, credentials and timeouts.
        self._transport = self._client._transport
        self._base = base_url.rstrip("/")
        template = self._client.build_request("GET", "/")
        credentials = base64.b64encode(f"{token}:".encode()).decode("ascii")
        self._headers: list[tuple[bytes, bytes]] = [
            *template.headers.raw,
            (b"Authorization", f"Basic {credentials}".encode("latin-1")),
        ]
        self._timeouts = template.extensions["timeout"]
        # Our own transport takes the request as bytes, without httpx's objects around it.
        self._raw = self._transport if isinstance(self._transport, KeepAliveTransport) else None
        base = httpx.URL(self._base)
        self._base_url = base
        self._scheme = base.raw_scheme
        self._host = base.host
        self._port = base.port or (443 if base.scheme == "https" else 80)
        self._prefix = base.raw_path.rstrip(b"/")

    def stop_calls(self) -> None:
        """Signal-safe: calls not yet started (waiting for a slot) raise Stopping instead of
        starting; calls in flight finish."""
        self._stopping = True

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _take_turn(self) -> None:
        """Wait for the rate-limit window and a call slot, or raise Stopping: a shutdown must
        not wait for the records queued behind the limit (up to the runner's window) to have
        their calls made first. Every turn taken is given back with `_end_turn`."""
        await self._gate.wait()
        if self._calls is None:
            return
        if not self._stopping:
            await self._calls.acquire()
            if not self._stopping:
                try:
                    # Again: a 429 may have closed the window while this call waited for its
                    # slot (hundreds wait at once), and it must not go out into the same limit.
                    await self._gate.wait()
                except BaseException:
                    self._calls.release()
                    raise
                return
            self._calls.release()  # the next waiter wakes and leaves too
        raise Stopping("Focus: consumer stopping, call not started")

    def _end_turn(self) -> None:
        if self._calls is not None:
            self._calls.release()

    async def _request(
        self, method: str, url: str, json: Any = None, params: dict[str, str] | None = None
    ) -> FocusReply:
        await self._take_turn()
        try:
            return await self._timed(method, url, json, params)
        finally:
            self._end_turn()

    async def _timed(
        self, method: str, url: str, json: Any, params: dict[str, str] | None
    ) -> FocusReply:
        if self._metrics is None:
            return await self._call(method, url, json, params)
        operation = f"{method} {'/'.join(url.split('/')[:3])}"  # bounded: no refs in labels
        with self._metrics.provider_call("focus", operation):
            return await self._call(method, url, json, params)

    async def _call(
        self, method: str, url: str, json: Any, params: dict[str, str] | None
    ) -> FocusReply:
        with map_httpx_errors(f"Focus {method} {url}"):
            if tracing.enabled():
                attributes: dict[str, Any] = {
                    "peer.service": "focus",
                    # The token travels in the Authorization header, never in the URL.
                    **tracing.http_client_attributes(
                        method, url if "://" in url else self._base + url
                    ),
                }
                with tracing.span(method, kind=SpanKind.CLIENT, **attributes) as current:
                    status, headers, content = await self._send(method, url, json, params)
                    if current is not None:
                        current.set_attribute("http.response.status_code", status)
            else:
                status, headers, content = await self._send(method, url, json, params)
        self._gate.observe(headers)
        if status == 429:
            retry_after = _seconds(headers.get("retry-after")) or _seconds(
                headers.get("rate-limit-reset")
            )
            self._gate.block_for(retry_after or 1.0)
            raise RateLimited("Focus rate limit reached", retry_after=retry_after or 1.0)
        if status >= 500:
            raise Transient(f"Focus {method} {url}: HTTP {status}")
        try:
            body = orjson.loads(content) if content else {}
        except ValueError as exc:
            raise Transient(f"Focus {method} {url}: body is not JSON") from exc
        if not isinstance(body, dict):
            body = {"data": body}
        if status in (401, 403):
            # Our own credentials are wrong: no retry fixes that, an operator must.
            raise Permanent(f"Focus refused our token: {body.get('mensagem', status)}")
        return FocusReply(status, body)

    async def _send(
        self, method: str, url: str, json: Any, params: dict[str, str] | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One API exchange: `url` is a path of our own making under the configured base."""
        raw_path = self._prefix + url.encode("ascii")
        if params:
            raw_path += b"?" + "&".join(
                f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items()
            ).encode("ascii")
        return await self._exchange(method, raw_path, json)

    async def _exchange(
        self, method: str, raw_path: bytes, json: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """One exchange straight on the transport, the request as the client would build it:
        the status, the headers (names in lower case) and the decoded body. The host is always
        the configured base's: this is the only place the token is attached."""
        headers = self._headers.copy()
        content = b""
        if json is not None:
            content = orjson.dumps(json)
            headers.append((b"Content-Type", b"application/json"))
        for name, value in tracing.trace_fields().items():
            # Baggage stays inside notaflow: it may carry the client's own data, and Focus is a
            # third party. traceparent and tracestate are for exactly this hop.
            if value and name != "baggage":
                headers.append((name.encode("ascii"), value.encode("ascii", "replace")))
        if self._raw is not None:
            if content or method in ("POST", "PUT", "PATCH"):
                headers.append((b"Content-Length", str(len(content)).encode("ascii")))
            reply = await self._raw.exchange(
                self._scheme,
                self._host,
                self._port,
                method.encode("ascii"),
                raw_path,
                headers,
                content,
                self._timeouts,
            )
            fields = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in reply.headers
            }
            if "content-encoding" not in fields:
                return reply.status_code, fields, reply.content
            # Compressed: httpx's decoders, as the client would have applied them.
            resp = httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)
            return reply.status_code, fields, resp.read()
        request = httpx.Request(
            method,
            self._base_url.copy_with(raw_path=raw_path),
            headers=headers,
            content=content,
            extensions={"timeout": self._timeouts},
        )
        resp = await self._transport.handle_async_request(request)
        resp.request = request
        try:
            await resp.aread()
        finally:
            await resp.aclose()
        fields = {name.lower(): value for name, value in resp.headers.items()}
        return resp.status_code, fields, resp.content

    async def emit_nfse(self, ref: str, document: dict[str, Any]) -> FocusReply:
        return await self._request("POST", "/v2/nfse", json=document, params={"ref": ref})

    async def get_nfse(self, ref: str) -> FocusReply:
        return await self._request("GET", f"/v2/nfse/{segment(ref)}")

    async def cancel_nfse(self, ref: str, justificativa: str) -> FocusReply:
        return await self._request(
            "DELETE", f"/v2/nfse/{segment(ref)}", json={"justificativa": justificativa}
        )

    # Any NFS-e kind by Focus's path for it (`notaflow.focus_kinds`: /v2/nfse, /v2/nfsen): the
    # NFS-e Nacional is the same exchange as the municipal note on its own path.
    async def emit_document(self, api_path: str, ref: str, document: dict[str, Any]) -> FocusReply:
        return await self._request("POST", api_path, json=document, params={"ref": ref})

    async def get_document(self, api_path: str, ref: str) -> FocusReply:
        return await self._request("GET", f"{api_path}/{ref}")

    async def cancel_document(self, api_path: str, ref: str, justificativa: str) -> FocusReply:
        return await self._request(
            "DELETE", f"{api_path}/{ref}", json={"justificativa": justificativa}
        )

    async def download(self, path: str) -> bytes:
        """A file Focus names by path (`caminho_xml_nota_fiscal`), on the same lean exchange as
        the API calls. The path is resolved on the configured host or refused (ForeignPath):
        it may come from a callback, and the exchange carries our token."""
        target = on_provider_host(self._base_url, path)
        await self._take_turn()
        try:
            with map_httpx_errors(f"Focus GET {target.path}"):
                status, _, content = await self._exchange("GET", target.raw_path, None)
        finally:
            self._end_turn()
        if status >= 400:
            raise Transient(f"Focus GET {target.path}: HTTP {status}")
        return content

    async def register_hook(
        self, url: str, authorization: str, header: str = "Authorization", event: str = "nfse"
    ) -> FocusReply:
        """Register our provider-webhook route, unless a hook with that URL already exists."""
        listing = await self._request("GET", "/v2/hooks")
        hooks = listing.body.get("data", []) if listing.status_code == 200 else []
        for hook in hooks if isinstance(hooks, list) else []:
            if hook.get("url") == url and hook.get("event") == event and not hook.get("deleted"):
                return FocusReply(200, hook)
        return await self._request(
            "POST",
            "/v2/hooks",
            json={
                "event": event,
                "url": url,
                "authorization": authorization,
                "authorization_header": header,
            },
        )


def _transport(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """The lean keep-alive transport, unless an HTTP(S)_PROXY variable routes this provider
    through a proxy: then httpx's own (which honours them, as the default client did)."""
    host = httpx.URL(base_url).host
    proxies = urllib.request.getproxies()
    if any(k in proxies for k in ("http", "https", "all")) and not urllib.request.proxy_bypass(
        host
    ):
        return httpx.AsyncHTTPTransport(
            proxy=proxies.get("https") or proxies.get("all") or proxies.get("http"),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
    return KeepAliveTransport(httpx.create_ssl_context(), max_connections)


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
