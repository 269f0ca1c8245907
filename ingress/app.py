"""The ingress application: routes of every dialect, error rendering, resource lifetime."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notaflow import tracing
from notaflow.errors import IngressError
from notaflow.focus_kinds import NFSE
from notaflow.ingress import focus_nfse, health, ports, provider_webhooks, route_modules
from notaflow.ingress.body import receive_body
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.dialects import for_path, render
from notaflow.ingress.openapi import openapi_routes
from notaflow.ingress.request_metrics import MetricsMiddleware, metrics_route
from notaflow.lifecycle import XML_PREFIXES
from notaflow.metrics import Metrics
from notaflow.store.db import transient_error

log = logging.getLogger(__name__)
# The hot route's trace headers, read from the raw ASGI headers (notaflow.tracing.TRACE_HEADERS).
_TRACE_HEADERS = frozenset(name.encode() for name in tracing.TRACE_HEADERS)


async def _ingress_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngressError)
    if exc.status_code >= 500:
        log.warning("%s %s answered %d: %s", request.method, request.url.path, exc.status_code, exc)
    return render(exc)


def _in_dialect(path: str, status: int, detail: str) -> Response:
    """An error of the ingress's own (no route matched, a refused URL, a bug) in the dialect
    of the path (`ingress.dialects.for_path`)."""
    return render(for_path(path).generic(status, detail))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # No route matched (e.g. a uid with a "/"): still answer in the dialect of the path.
    return _in_dialect(request.url.path, exc.status_code, str(exc.detail))


class RefuseNul:
    """A NUL (%00) in the path or the query is never a ref, id or search term, and PostgreSQL
    refuses it in text (a 500): answered 400 before routing, in the dialect of the path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            error = HTTPException(400, "Caractere NUL (%00) na URL")
            await (await _http_error(Request(scope), error))(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The database's errors (through SQLAlchemy or straight from a driver; a refused connection is
# an OSError) are answered where they are caught, in the route's dialect, and not handed on to
# the server as the unexpected ones are: an outage would otherwise log a traceback per request
# twice over. Those that are its state (down, restarting, a lock) are a 503 with Retry-After.
_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa.exc.DBAPIError,
    sqlite3.Error,
    asyncpg.PostgresError,
    OSError,
)


# What the metrics count for a request whose client went away before it was answered (nginx's
# "client closed request"): nothing was wrong with the server, so no 500 and no traceback.
CLIENT_GONE = 499


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_GONE)  # nobody reads it: the connection is gone


async def _unexpected(request: Request, exc: Exception) -> Response:
    if transient_error(exc):
        # The database is down or restarting: the request may simply be sent again.
        log.warning("%s %s answered 503: %r", request.method, request.url.path, exc)
        response = _in_dialect(request.url.path, 503, "")
        response.headers["Retry-After"] = "5"
        return response
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _in_dialect(request.url.path, 500, "")


class TracingMiddleware:
    """A server span per request, continuing the client's `traceparent` when it sends one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # traceparent, tracestate and baggage, through the configured propagators.
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers") or []
            if k in _TRACE_HEADERS
        }
        method = scope["method"]
        with tracing.span(
            method,
            kind=SpanKind.SERVER,
            carrier=carrier or None,
            **tracing.http_server_attributes(
                method,
                traced_path(scope.get("path", "")),
                scope.get("scheme", "http"),
                ports.local_port(scope),
            ),
        ) as current:

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start" and current is not None:
                    status = int(message["status"])
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:  # semantic conventions: 4xx is the client's, not an error
                        current.set_status(StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, send_wrapper)
            route = getattr(scope.get("route"), "path", None)
            if current is not None and route:
                current.set_attribute("http.route", route)
                current.update_name(f"{method} {route}")


_NFSE_PATH = "/v2/nfse"
_CALLBACK_PATH = "/webhooks/focus/nfse"
_JSON = b"application/json"
_RECEIVED = orjson.dumps(provider_webhooks.RECEIVED)

# What a raw route makes of a request: the status and JSON body of its answer, or IngressError.
HotHandler = Callable[[Scope, Receive], Awaitable[tuple[int, bytes]]]


def _request_headers(
    scope: Scope, credential: bytes
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """One pass over the raw headers, the first occurrence winning as in Starlette's `Headers`:
    the `credential` header (lower case), Content-Type, Content-Length and the trace headers."""
    given = content_type = content_length = None
    trace: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name == credential:
            if given is None:
                given = value.decode("latin-1")
        elif name == b"content-type":
            if content_type is None:
                content_type = value.decode("latin-1")
        elif name == b"content-length":
            if content_length is None:
                content_length = value.decode("latin-1")
        elif name in _TRACE_HEADERS and name.decode() not in trace:
            trace[name.decode()] = value.decode("latin-1")
    return given, content_type, content_length, trace


def _nfse_handler(d: IngressDeps) -> HotHandler:
    """`POST /v2/nfse`: `focus_nfse.create_nfse`'s answer."""

    async def handle(scope: Scope, receive: Receive) -> tuple[int, bytes]:
        authorization, content_type, content_length, trace = _request_headers(
            scope, b"authorization"
        )
        cnpj, ref = await focus_nfse.accept_note(
            NFSE,
            d,
            authorization=authorization or "",
            query_string=scope.get("query_string", b""),
            content_type=content_type or "",
            read=lambda limit: receive_body(receive, content_length, limit),
            trace=trace,
        )
        return 202, orjson.dumps(focus_nfse.accepted_body(cnpj, ref))

    return handle


def _callback_handler(d: IngressDeps) -> HotHandler:
    """`POST /webhooks/focus/nfse`: `provider_webhooks.focus_nfse_callback`'s answer, one per
    note Focus authorizes."""
    credential = d.settings.focus_webhook_header.lower().encode("latin-1")

    async def handle(scope: Scope, receive: Receive) -> tuple[int, bytes]:
        given, content_type, content_length, trace = _request_headers(scope, credential)
        await provider_webhooks.accept_callback(
            d,
            given or "",
            content_type or "",
            lambda limit: receive_body(receive, content_length, limit),
            trace,
        )
        return 200, _RECEIVED

    return handle


class HotRoute:
    """A busy POST route as a raw ASGI handler in front of Starlette: `POST /v2/nfse` and
    Focus's callbacks, two requests per note. They skip the middleware chain, the router, the
    Request and Response objects and the per-request metric label lookups (about a fifth of the
    note POST's CPU time at 64 connections). Each answers exactly what its Starlette route
    (still there for every other case) answers, records the same request metrics, and handles
    errors as the stack does: IngressError rendered in its dialect, anything else logged and
    answered 500, then re-raised to the server. Only plain requests come here (see
    `IngressApp`); with tracing on everything goes through Starlette, which owns the server
    span."""

    def __init__(self, path: str, handle: HotHandler, metrics: Metrics | None) -> None:
        self._path = path
        self._handle = handle
        self._metrics = metrics
        self._counts: dict[int, Any] = {}
        self._duration = (
            metrics.http_request_duration_seconds.labels(path, "POST") if metrics else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500  # an exception before the response started is answered 500
        started = False
        try:
            try:
                answer, body = await self._handle(scope, receive)
            except IngressError as exc:
                if exc.status_code >= 500:
                    log.warning("POST %s answered %d: %s", self._path, exc.status_code, exc)
                response = render(exc)
                status, started = response.status_code, True
                await response(scope, receive, send)
                return
            status, started = answer, True
            await send(
                {
                    "type": "http.response.start",
                    "status": answer,
                    "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except ClientDisconnect:
            # Quiet: counted, not logged, not handed to the server; answered as the Starlette
            # stack answers it (the server drops it: the connection is gone).
            status = CLIENT_GONE
            await Response(status_code=CLIENT_GONE)(scope, receive, send)
        except Exception as exc:
            if started:
                raise
            # As the Starlette stack: answered in the dialect; a database error ends there,
            # anything else goes on to the server (ServerErrorMiddleware re-raises it).
            answer_of = await _unexpected(Request(scope), exc)
            status = answer_of.status_code
            await answer_of(scope, receive, send)
            if not isinstance(exc, _DATABASE_ERRORS):
                raise
        finally:
            if self._metrics is not None and self._duration is not None:
                counter = self._counts.get(status)
                if counter is None:
                    counter = self._metrics.http_requests_total.labels(
                        self._path, "POST", str(status)
                    )
                    self._counts[status] = counter
                counter.inc()
                self._duration.observe(time.perf_counter() - start)


class IngressApp(Starlette):
    """Starlette with the hot routes in front (see `HotRoute`). A request goes to one only when
    the router would pick its Starlette route and no middleware would change the answer: exact
    path, POST, no root path, no NUL in the query (`RefuseNul`), tracing off."""

    hot: Mapping[str, HotRoute] = MappingProxyType({})  # by path; none until create_app
    # With an ops port, the hot routes must not answer there either (see ingress/ports.py).
    ops_port: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            hot = self.hot.get(scope["path"])
            if (
                hot is not None
                and not scope.get("root_path")
                and b"%00" not in scope.get("query_string", b"")
                and (not self.ops_port or ports.local_port(scope) != self.ops_port)
            ):
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    d: IngressDeps, manage_resources: bool = True, metrics: Metrics | None = None
) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_resources:
            await d.bus.start()
            if d.replies is not None:
                await d.replies.start()
        try:
            yield
        finally:
            if manage_resources:
                if d.replies is not None:
                    await d.replies.stop()
                await d.bus.stop()
                d.documents.close()
                await d.engine.dispose()

    app = IngressApp(
        routes=ports.split(
            public=[route for m in route_modules.PUBLIC for route in m.routes],
            ops=[*health.routes, *([metrics_route(metrics.registry)] if metrics else [])],
            docs=openapi_routes(),
            ops_port=d.settings.ops_port,
            public_docs=d.settings.public_docs,
        ),
        middleware=[
            *([Middleware(MetricsMiddleware, metrics=metrics)] if metrics else []),
            *([Middleware(TracingMiddleware)] if tracing.enabled() else []),
            Middleware(RefuseNul),
        ],
        exception_handlers={
            IngressError: _ingress_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            **dict.fromkeys(_DATABASE_ERRORS, _unexpected),
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.deps = d
    app.ops_port = d.settings.ops_port
    if not tracing.enabled():
        app.hot = {
            _NFSE_PATH: HotRoute(_NFSE_PATH, _nfse_handler(d), metrics),
            _CALLBACK_PATH: HotRoute(_CALLBACK_PATH, _callback_handler(d), metrics),
        }
    return app


def traced_path(path: str) -> str:
    """The path as a trace attribute: a public document's name is its only credential (the
    XML route needs none), so it never goes to the tracing backend."""
    for prefix in XML_PREFIXES.values():
        if path.startswith(prefix):
            return prefix + "***"
    return path
