"""The ingress application: routes of every dialect, error rendering, resource lifetime."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress import focus_hooks, focus_nfce, focus_nfse, health, hubsoft, provider_webhooks
from ingress.deps import IngressDeps
from ingress.errors import FocusError, IngressError
from ingress.observability import MetricsMiddleware, metrics_route, openapi_routes
from notaflow.metrics import Metrics

log = logging.getLogger(__name__)


async def _ingress_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IngressError)
    if exc.status_code >= 500:
        log.warning("%s %s answered %d: %s", request.method, request.url.path, exc.status_code, exc)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return FocusError(404, "nao_encontrado", "Recurso não encontrado").response()
    if exc.status_code == 405:
        return FocusError(405, "metodo_nao_permitido", "Método HTTP não permitido").response()
    return FocusError(exc.status_code, "requisicao_invalida", str(exc.detail)).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {"codigo": "erro_interno", "mensagem": "Erro interno; nada foi registrado."}
    return JSONResponse(body, status_code=500)


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

    app = Starlette(
        routes=[
            *health.routes,
            *focus_nfse.routes,
            *focus_hooks.routes,
            *focus_nfce.routes,
            *provider_webhooks.routes,
            *hubsoft.routes,
            *openapi_routes(),
            *([metrics_route(metrics.registry)] if metrics else []),
        ],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)] if metrics else [],
        exception_handlers={
            IngressError: _ingress_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.deps = d
    return app
