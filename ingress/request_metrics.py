"""Request metrics of the ingress: `MetricsMiddleware` and `GET /metrics`.

`MetricsMiddleware` is pure ASGI (no BaseHTTPMiddleware: it would buffer and cost a task per
request). It labels by the *template* of the route Starlette's router matched, which the router
records in `scope["route"]`, so `/v2/nfse/pedido123` counts as `/v2/nfse/{ref}` and a scan of
random paths adds one series, `unmatched`, not thousands. The metrics themselves are defined
once, in `notaflow.metrics`.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notaflow.ingress.openapi_parts import Description
from notaflow.metrics import Metrics, render

__all__ = ["OPENAPI", "UNMATCHED", "MetricsMiddleware", "metrics_route", "route_template"]

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route the router matched (also on 405), or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED
    # Inside a Mount the matched route's path is relative; the mount prefix is in root_path.
    app_root = scope.get("app_root_path", "")
    root = scope.get("root_path", "")
    prefix = root[len(app_root) :] if root.startswith(app_root) else ""
    return prefix + path


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started is answered 500 upstream
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route, method = route_template(scope), scope["method"]
            self.metrics.http_requests_total.labels(route, method, str(status)).inc()
            self.metrics.http_request_duration_seconds.labels(route, method).observe(
                time.perf_counter() - start
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # the answer is out; background tasks after it are not its latency

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()


def metrics_route(registry: CollectorRegistry, path: str = "/metrics") -> Route:
    async def metrics_endpoint(request: Request) -> Response:
        data, content_type = render(registry)
        return Response(data, headers={"Content-Type": content_type})

    return Route(path, metrics_endpoint, methods=["GET"], name="metrics")


OPENAPI = Description(
    paths={
        "/metrics": {
            "get": {
                "tags": ["Operação"],
                "operationId": "metrics",
                "summary": "Métricas Prometheus",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Formato de exposição de texto do Prometheus",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
)
