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
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import orjson

from notaflow import tracing
from notaflow.accounts import FocusCredentials
from notaflow.consumers.providers.rate_windows import RateWindows
from notaflow.consumers.providers.urls import provider_path, segment
from notaflow.errors import CredentialRefused, NotaflowError, RateLimited, Stopping, Transient
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
        _raise_mapped(what, exc)


def _raise_mapped(what: str, exc: httpx.HTTPError) -> NoReturn:
    """`map_httpx_errors`'s table applied to one caught exception (the calls below catch it
    themselves: their `finally` settles the token's reserved credit)."""
    for foreign, mapped, detail in HTTPX_ERRORS:
        if isinstance(exc, foreign):
            raise mapped(f"{what}: {detail or repr(exc)}") from exc
    raise exc


# (tenant, prestador CNPJ) -> the company's Focus credentials (its provider account's token and
# environment's base URL; `AccountResolver.focus`), or None for the client's own (the global
# NOTAFLOW_FOCUS_TOKEN of a single-company install).
FocusToken = Callable[[str, str], Awaitable[FocusCredentials | None]]
# What a call is made with: a token on the client's base URL, or a company's credentials.
Caller = str | FocusCredentials | None


@dataclass(frozen=True)
class _Site:
    """A Focus base URL taken apart once for the lean exchange (homologação or produção)."""

    url: httpx.URL
    text: str
    scheme: bytes
    host: str
    port: int
    prefix: bytes


def _site(base_url: str) -> _Site:
    url = httpx.URL(base_url.rstrip("/"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return _Site(url, str(url), url.raw_scheme, url.host, port, url.raw_path.rstrip(b"/"))


@dataclass(frozen=True)
class FocusReply:
    status_code: int
    body: dict[str, Any]


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
        windows: RateWindows | None = None,
    ) -> None:
        self._metrics = metrics
        # Credits are per token (Focus: 100 a minute each): a call waits for its own token's
        # window only, and before it takes a call slot, so a company whose window is spent
        # holds nothing another company's call could use.
        self.windows = windows or RateWindows()
        self._token = token
        self._auth: dict[str, tuple[bytes, bytes]] = {}
        self._tenant_tokens: dict[str, set[str]] = {}  # whose credits: for the backlog view
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
        # The calls below skip the client's per-request machinery (URL merging, auth flow,
        # cookies, redirects, a log line each): at hundreds of notes per second it was the
        # largest part of the emission consumer's CPU. What it would have added is fixed per
        # client, so it is worked out once here: the same headers, credentials and timeouts.
        self._transport = self._client._transport
        self._base = base_url.rstrip("/")
        template = self._client.build_request("GET", "/")
        self._headers: list[tuple[bytes, bytes]] = list(template.headers.raw)
        self._timeouts = template.extensions["timeout"]
        # Our own transport takes the request as bytes, without httpx's objects around it.
        self._raw = self._transport if isinstance(self._transport, KeepAliveTransport) else None
        # One client for every environment: a company's account names its base URL
        # (homologação or produção) and each call goes there, so all calls share one set of
        # call slots, one credit window per token and one stop, whichever host they address.
        self._site = _site(self._base)
        self._sites: dict[str, _Site] = {self._site.text: self._site}

    def tenant_rate(self, tenant: str) -> float | None:
        """Credits per second the tenant's tokens get at Focus, as their answers told (None
        before any answer named a limit)."""
        rates = [self.windows.rate(token) for token in self._tenant_tokens.get(tenant, ())]
        known = [rate for rate in rates if rate is not None]
        return sum(known) if known else None

    def stop_calls(self) -> None:
        """Signal-safe: calls not yet started (waiting for a slot) raise Stopping instead of
        starting; calls in flight finish."""
        self._stopping = True
        self.windows.stop()  # and those waiting for their token's credits

    async def aclose(self) -> None:
        await self._client.aclose()

    def _caller(self, caller: Caller) -> tuple[str, _Site]:
        """The token and the site a call goes to: a company's credentials, or a bare token
        (or None: the client's own) on the configured base URL."""
        if caller is None or isinstance(caller, str):
            return caller or self._token, self._site
        site = self._sites.get(caller.base_url.rstrip("/"))
        if site is None:
            site = _site(caller.base_url)
            if len(self._sites) < 100:  # the environments' URLs: a handful
                self._sites[site.text] = site
        return caller.token or self._token, site

    def _authorization(self, token: str) -> tuple[bytes, bytes]:
        header = self._auth.get(token)
        if header is None:
            credentials = base64.b64encode(f"{token}:".encode()).decode("ascii")
            header = (b"Authorization", f"Basic {credentials}".encode("latin-1"))
            if len(self._auth) < 100_000:  # one per company: bounded by the accounts
                self._auth[token] = header
        return header

    async def _take_turn(self) -> None:
        """Wait for a call slot, or raise Stopping: a shutdown must not wait for the records
        queued behind the limit (up to the runner's window) to have their calls made first.
        Every turn taken is given back with `_end_turn`."""
        if self._calls is None:
            return
        if not self._stopping:
            await self._calls.acquire()
            if not self._stopping:
                return
            self._calls.release()  # the next waiter wakes and leaves too
        raise Stopping("Focus: consumer stopping, call not started")

    def _end_turn(self) -> None:
        if self._calls is not None:
            self._calls.release()

    async def _request(
        self,
        method: str,
        url: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        caller: Caller = None,
        tenant: str | None = None,
        operation: str = "other",
        low_priority: bool = False,
    ) -> FocusReply:
        """One API request, paid with one of the caller's token's credits (the client's own
        token when none is given: a single-company install). The credit is waited for first,
        holding nothing; then a call slot."""
        token, site = self._caller(caller)
        if tenant is not None:
            tokens = self._tenant_tokens.setdefault(tenant, set())
            if token not in tokens and len(tokens) < 1000:
                tokens.add(token)
        if not await self.windows.acquire(token, low_priority):
            raise Stopping("Focus: consumer stopping, call not started")
        try:
            await self._take_turn()
        except BaseException:
            self.windows.release(token)
            raise
        try:
            return await self._timed(
                method, url, json, params, token, site, tenant or "", operation
            )
        finally:
            self._end_turn()

    async def _timed(
        self,
        method: str,
        url: str,
        json: Any,
        params: dict[str, str] | None,
        token: str,
        site: _Site,
        tenant: str,
        operation: str,
    ) -> FocusReply:
        if self._metrics is None:
            return await self._call(method, url, json, params, token, site, tenant, operation)
        label = f"{method} {'/'.join(url.split('/')[:3])}"  # bounded: no refs in labels
        with self._metrics.provider_call("focus", label):
            return await self._call(method, url, json, params, token, site, tenant, operation)

    async def _call(
        self,
        method: str,
        url: str,
        json: Any,
        params: dict[str, str] | None,
        token: str,
        site: _Site,
        tenant: str,
        operation: str,
    ) -> FocusReply:
        status: int | None = None
        headers: dict[str, str] = {}
        try:
            # The token travels in the Authorization header, never in the URL.
            full = url if "://" in url else site.text + url
            with tracing.client_span(method, full, **{"peer.service": "focus"}) as current:
                status, headers, content = await self._send(method, url, json, params, token, site)
                if current is not None:
                    current.set_attribute("http.response.status_code", status)
        except httpx.HTTPError as exc:
            _raise_mapped(f"Focus {method} {url}", exc)
        finally:
            # The reserved credit is settled by the answer (or kept spent: a request that
            # failed on the way may have reached Focus).
            self.windows.observe(token, status, headers)
        if status == 429:
            retry_after = _seconds(headers.get("retry-after")) or _seconds(
                headers.get("rate-limit-reset")
            )
            raise RateLimited("Focus rate limit reached", retry_after=retry_after or 1.0)
        if self._metrics is not None:
            self._metrics.focus_credit(tenant, operation)
        if status >= 500:
            raise Transient(f"Focus {method} {url}: HTTP {status}")
        try:
            body = orjson.loads(content) if content else {}
        except ValueError as exc:
            raise Transient(f"Focus {method} {url}: body is not JSON") from exc
        if not isinstance(body, dict):
            body = {"data": body}
        if status in (401, 403):
            # The company's credentials are wrong: no retry fixes that, an operator must.
            if self._metrics is not None:
                self._metrics.focus_credential_error(tenant)
            raise CredentialRefused(
                f"Focus recusou o token (HTTP {status}): {body.get('mensagem', status)}", status
            )
        return FocusReply(status, body)

    async def _send(
        self,
        method: str,
        url: str,
        json: Any,
        params: dict[str, str] | None,
        token: str,
        site: _Site,
    ) -> tuple[int, dict[str, str], bytes]:
        """One API exchange: `url` is a path of our own making under the configured base."""
        raw_path = site.prefix + url.encode("ascii")
        if params:
            raw_path += b"?" + "&".join(
                f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items()
            ).encode("ascii")
        return await self._exchange(method, raw_path, json, token, site)

    async def _exchange(
        self, method: str, raw_path: bytes, json: Any, token: str | None, site: _Site
    ) -> tuple[int, dict[str, str], bytes]:
        """One exchange straight on the transport, the request as the client would build it:
        the status, the headers (names in lower case) and the decoded body. The host is always
        the configured base's: this is the only place the token is attached (None: a request
        without credentials, a public file's download)."""
        headers = self._headers.copy()
        if token is not None:
            headers.append(self._authorization(token))
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
                site.scheme,
                site.host,
                site.port,
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
            site.url.copy_with(raw_path=raw_path),
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

    # `token` is the company's Focus token (its provider account), `tenant` names whose credits
    # the metric counts; both default to the client's own (a single-company install).

    async def emit_nfse(
        self, ref: str, document: dict[str, Any], token: Caller = None, tenant: str = ""
    ) -> FocusReply:
        return await self.emit_document("/v2/nfse", ref, document, token, tenant)

    async def get_nfse(self, ref: str, token: Caller = None, tenant: str = "") -> FocusReply:
        return await self.get_document("/v2/nfse", ref, token, tenant)

    async def cancel_nfse(
        self, ref: str, justificativa: str, token: Caller = None, tenant: str = ""
    ) -> FocusReply:
        return await self.cancel_document("/v2/nfse", ref, justificativa, token, tenant)

    # Any NFS-e kind by Focus's path for it (`notaflow.focus_kinds`: /v2/nfse, /v2/nfsen): the
    # NFS-e Nacional is the same exchange as the municipal note on its own path.
    async def emit_document(
        self,
        api_path: str,
        ref: str,
        document: dict[str, Any],
        token: Caller = None,
        tenant: str = "",
    ) -> FocusReply:
        return await self._request("POST", api_path, document, {"ref": ref}, token, tenant, "emit")

    async def get_document(
        self,
        api_path: str,
        ref: str,
        token: Caller = None,
        tenant: str = "",
        low_priority: bool = False,
    ) -> FocusReply:
        """`low_priority`: a GET that can wait (the reconciler's): it leaves the last part of
        the token's window to emissions (`RateWindows.headroom`)."""
        return await self._request(
            "GET", f"{api_path}/{segment(ref)}", None, None, token, tenant, "consult", low_priority
        )

    async def cancel_document(
        self,
        api_path: str,
        ref: str,
        justificativa: str,
        token: Caller = None,
        tenant: str = "",
    ) -> FocusReply:
        return await self._request(
            "DELETE",
            f"{api_path}/{segment(ref)}",
            {"justificativa": justificativa},
            None,
            token,
            tenant,
            "cancel",
        )

    async def download(self, path: str, token: Caller = None, tenant: str = "") -> bytes:
        """A file Focus names by path (`caminho_xml_nota_fiscal`, `caminho_xml_cancelamento`),
        on the same lean exchange as the API calls, from the company's Focus host: the path is
        resolved on that host or refused (ForeignPath), since it may come from a callback.

        Sent without credentials, as Focus serves these files and as its clients fetch them
        (focus-2026.md §1: the unguessable name is the secret). A request that carries no token
        spends none of a token's credits (§5: 100 a minute per token), so an authorized note
        costs one credit, its POST, where it cost two while the download carried the token.
        Only a host that refuses the file without credentials (401/403: a proxy, an environment
        that wants them) gets it asked again with the company's token, paid as a credit like
        any API call. The download takes a call slot: the concurrency limit bounds everything
        in flight at Focus. A 429 on an anonymous download (a limit of Focus's own) is retried
        after its Retry-After like any other, without touching the token's window."""
        caller, site = self._caller(token)
        target = provider_path(site.url, path)
        shown = target.split(b"?", 1)[0].decode("ascii", "replace")  # a query may be a signature
        await self._take_turn()
        try:
            status, headers, content = await self._fetch(target, shown, None, site)
        finally:
            self._end_turn()
        if status in (401, 403):
            status, headers, content = await self._credited_download(
                target, shown, caller, site, tenant
            )
        elif self._metrics is not None and status < 300:
            self._metrics.focus_download(tenant)
        if status == 429:
            retry_after = _seconds(headers.get("retry-after")) or _seconds(
                headers.get("rate-limit-reset")
            )
            raise RateLimited("Focus rate limit reached", retry_after=retry_after or 1.0)
        if status >= 300:  # a redirect is not followed: its page must never be kept as the XML
            raise Transient(f"Focus GET {shown}: HTTP {status}")
        return content

    async def _credited_download(
        self, target: bytes, shown: str, token: str, site: _Site, tenant: str
    ) -> tuple[int, dict[str, str], bytes]:
        """The download again with the token: a request of the token's, waiting for and
        spending one of its credits."""
        if not await self.windows.acquire(token):
            raise Stopping("Focus: consumer stopping, call not started")
        try:
            await self._take_turn()
        except BaseException:
            self.windows.release(token)
            raise
        status: int | None = None
        headers: dict[str, str] = {}
        try:
            status, headers, content = await self._fetch(target, shown, token, site)
        finally:
            self._end_turn()
            self.windows.observe(token, status, headers)
        if self._metrics is not None and status != 429:
            self._metrics.focus_credit(tenant, "download")
        return status, headers, content

    async def _fetch(
        self, target: bytes, shown: str, token: str | None, site: _Site
    ) -> tuple[int, dict[str, str], bytes]:
        """One GET of a file (the caller holds a call slot), its transport errors mapped."""
        try:
            return await self._exchange("GET", target, None, token, site)
        except httpx.HTTPError as exc:
            _raise_mapped(f"Focus GET {shown}", exc)

    async def register_hook(
        self, url: str, authorization: str, header: str = "Authorization", event: str = "nfse"
    ) -> FocusReply:
        """Register our provider-webhook route, unless a hook with that URL already exists."""
        listing = await self._request("GET", "/v2/hooks", operation="hooks")
        hooks = listing.body.get("data", []) if listing.status_code == 200 else []
        for hook in hooks if isinstance(hooks, list) else []:
            if hook.get("url") == url and hook.get("event") == event and not hook.get("deleted"):
                return FocusReply(200, hook)
        return await self._request(
            "POST",
            "/v2/hooks",
            operation="hooks",
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
