"""Metrics: names and types by convention, the helpers, and the ingress middleware's labels."""

from __future__ import annotations

import asyncio
import platform

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from notaflow.ingress.request_metrics import UNMATCHED, MetricsMiddleware, metrics_route
from notaflow.metrics import Metrics, render


def families(registry: CollectorRegistry) -> dict[str, object]:
    data, _ = render(registry)
    return {f.name: f for f in text_string_to_metric_families(data.decode())}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_metric_follows_the_naming_conventions() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    families = list(registry.collect())
    # The standard process and Python collectors, as the default registry has them.
    standard = {m.name for m in families if m.name.startswith(("process_", "python_"))}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= standard
    assert {"python_gc_collections"} <= standard
    found = {m.name: m.type for m in families if m.name not in standard}
    # The client strips `_total` from a counter's family name; the sample keeps it.
    assert found == {
        "notaflow_build": "info",
        "notaflow_http_requests": "counter",
        "notaflow_http_request_duration_seconds": "histogram",
        "notaflow_kafka_publish_duration_seconds": "histogram",
        "notaflow_consumer_records": "counter",
        "notaflow_consumer_processing_duration_seconds": "histogram",
        "notaflow_consumer_in_flight": "gauge",
        "notaflow_consumer_lag": "gauge",
        "notaflow_provider_request_duration_seconds": "histogram",
        "notaflow_provider_errors": "counter",
        "notaflow_emails": "counter",
        "notaflow_webhook_deliveries": "counter",
        "notaflow_hooks_disabled": "counter",
        "notaflow_focus_credits": "counter",
        "notaflow_focus_downloads": "counter",
        "notaflow_focus_credential_errors": "counter",
        "notaflow_tenant_backlog": "gauge",
    }


def test_metrics_are_defined_once_per_registry() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)
    Metrics(CollectorRegistry())  # another registry (another test) is independent


def test_render_is_the_text_exposition_format() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.emails_total.labels("sent").inc()
    data, content_type = render(registry)
    assert content_type.startswith("text/plain")
    assert b'notaflow_emails_total{outcome="sent"} 1.0' in data
    assert b"# TYPE notaflow_http_request_duration_seconds histogram" in data


def test_outcomes_come_from_fixed_sets() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    for outcome in ("processed", "failed", "retried", "dead_lettered"):
        m.consumer_record("emission", outcome)
    m.email("sent")
    m.webhook_delivery("delivered")
    total = "notaflow_consumer_records_total"
    assert sample(registry, total, consumer="emission", outcome="dead_lettered") == 1
    assert sample(registry, "notaflow_emails_total", outcome="sent") == 1
    assert sample(registry, "notaflow_webhook_deliveries_total", outcome="delivered") == 1
    for call in (
        lambda: m.consumer_record("emission", "ok"),
        lambda: m.email("bounced"),
        lambda: m.webhook_delivery("maybe"),
    ):
        with pytest.raises(ValueError):
            call()


def test_processing_tracks_in_flight_and_duration_even_on_failure() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    with m.processing("emission"):
        assert sample(registry, "notaflow_consumer_in_flight", consumer="emission") == 1
    with pytest.raises(RuntimeError), m.processing("emission"):
        raise RuntimeError("boom")
    assert sample(registry, "notaflow_consumer_in_flight", consumer="emission") == 0
    count = "notaflow_consumer_processing_duration_seconds_count"
    assert sample(registry, count, consumer="emission") == 2


def test_provider_call_counts_errors_by_kind_and_reraises() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    with m.provider_call("focus", "emit"):
        pass
    with pytest.raises(TimeoutError), m.provider_call("focus", "emit"):
        raise TimeoutError
    with pytest.raises(ValueError), m.provider_call("smtp", "send", kind=lambda e: "refused"):
        raise ValueError("550")
    errors = "notaflow_provider_errors_total"
    assert sample(registry, errors, provider="focus", operation="emit", kind="TimeoutError") == 1
    assert sample(registry, errors, provider="smtp", operation="send", kind="refused") == 1
    with pytest.raises(asyncio.CancelledError), m.provider_call("focus", "emit"):
        raise asyncio.CancelledError  # a cancelled call is timed, not counted as an error
    count = "notaflow_provider_request_duration_seconds_count"
    assert sample(registry, count, provider="focus", operation="emit") == 3
    cancelled = {"provider": "focus", "operation": "emit", "kind": "CancelledError"}
    assert sample(registry, errors, **cancelled) is None


def test_publish_timing_and_lag() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    with m.publishing("notaflow.nfse.commands"):
        pass
    count = "notaflow_kafka_publish_duration_seconds_count"
    assert sample(registry, count, topic="notaflow.nfse.commands") == 1
    m.set_consumer_lag("emission", "notaflow.nfse.commands", 3, 42)
    m.set_consumer_lag("emission", "notaflow.nfse.commands", 4, -1)  # never negative
    lag = "notaflow_consumer_lag"
    labels = {"consumer": "emission", "topic": "notaflow.nfse.commands"}
    assert sample(registry, lag, partition="3", **labels) == 42
    assert sample(registry, lag, partition="4", **labels) == 0
    m.forget_partition("emission", "notaflow.nfse.commands", 3)
    m.forget_partition("emission", "notaflow.nfse.commands", 3)  # twice is harmless
    assert sample(registry, lag, partition="3", **labels) is None


# --- the middleware, on an app shaped like the ingress -----------------------------------------


async def ok(request: Request) -> Response:
    return JSONResponse({"ref": request.path_params.get("ref")})


async def created(request: Request) -> Response:
    return JSONResponse({}, status_code=202)


async def missing(request: Request) -> Response:
    raise HTTPException(404)


async def broken(request: Request) -> Response:
    raise RuntimeError("unexpected")


def build(registry: CollectorRegistry) -> Starlette:
    m = Metrics(registry)
    return Starlette(
        routes=[
            Route("/v2/nfse", created, methods=["POST"]),
            Route("/v2/nfse/{ref}", ok, methods=["GET"]),
            Route("/v2/nfse/{ref}", ok, methods=["DELETE"]),
            Route("/v2/hooks/{id}", missing, methods=["GET"]),
            Route("/boom", broken),
            Mount("/api", routes=[Route("/items/{id}", ok)]),
            metrics_route(registry),
        ],
        middleware=[Middleware(MetricsMiddleware, metrics=m)],
    )


def requests(registry: CollectorRegistry, route: str, method: str, status: str) -> float | None:
    return sample(
        registry, "notaflow_http_requests_total", route=route, method=method, status=status
    )


async def test_middleware_labels_by_route_template_and_status() -> None:
    registry = CollectorRegistry()
    transport = httpx.ASGITransport(app=build(registry), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/v2/nfse?ref=a1")).status_code == 202
        for ref in ("pedido1", "pedido2", "pedido3"):
            assert (await client.get(f"/v2/nfse/{ref}")).status_code == 200
        assert (await client.delete("/v2/nfse/pedido1")).status_code == 200
        assert (await client.put("/v2/nfse/pedido1")).status_code == 405
        assert (await client.get("/v2/hooks/77")).status_code == 404
        for path in ("/nope", "/v2/nfse/a/b/c", "/wp-admin.php"):
            assert (await client.get(path)).status_code == 404
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/api/items/9")).status_code == 200
        scraped = await client.get("/metrics")

    assert requests(registry, "/v2/nfse", "POST", "202") == 1
    assert requests(registry, "/v2/nfse/{ref}", "GET", "200") == 3
    assert requests(registry, "/v2/nfse/{ref}", "DELETE", "200") == 1
    assert requests(registry, "/v2/nfse/{ref}", "PUT", "405") == 1
    assert requests(registry, "/v2/hooks/{id}", "GET", "404") == 1
    assert requests(registry, UNMATCHED, "GET", "404") == 3
    assert requests(registry, "/boom", "GET", "500") == 1
    assert requests(registry, "/api/items/{id}", "GET", "200") == 1
    count = "notaflow_http_request_duration_seconds_count"
    assert sample(registry, count, route="/v2/nfse/{ref}", method="GET") == 3
    # Bounded cardinality: no raw path ever becomes a label value.
    routes = {
        s.labels["route"]
        for m in registry.collect()
        if m.name == "notaflow_http_requests"
        for s in m.samples
    }
    assert not any("pedido" in r or r.endswith("/9") or "wp-admin" in r for r in routes)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert b'route="/v2/nfse/{ref}"' in scraped.content


async def test_middleware_passes_other_scopes_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    registry = CollectorRegistry()
    app = MetricsMiddleware(inner, Metrics(registry))
    await app({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert requests(registry, UNMATCHED, "GET", "200") is None


def test_build_info_names_the_release() -> None:
    from importlib.metadata import version

    registry = CollectorRegistry()
    Metrics(registry)
    labels = {"version": version("notaflow"), "python": platform.python_version()}
    assert sample(registry, "notaflow_build_info", **labels) == 1.0
