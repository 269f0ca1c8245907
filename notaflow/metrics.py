"""Prometheus metrics of every notaflow process, defined once.

`Metrics(registry)` registers the whole set on the registry it is given: production passes one
registry per process, tests build their own so no two tests share counters. Names follow
Prometheus conventions: the `notaflow_` prefix, the unit in the name (`_seconds`), `_total` on
counters. Labels are bounded by construction: routes are templates (`/v2/nfse/{ref}`, never the
raw path), outcomes and kinds come from fixed sets, and nothing is labelled by tenant or ref.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = [
    "CONSUMER_OUTCOMES",
    "DELIVERY_OUTCOMES",
    "EMAIL_OUTCOMES",
    "Metrics",
    "render",
]

CONSUMER_OUTCOMES = ("processed", "failed", "retried", "dead_lettered")
EMAIL_OUTCOMES = ("sent", "failed", "retried")
DELIVERY_OUTCOMES = ("delivered", "failed", "retried")

# An ingress answer is a few ms (validation, claim, acks=all publish); the synchronous routes
# (cancellation, HubSoft's e-mail) wait up to 10-60 s, hence the long tail.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# acks=all on a healthy cluster is milliseconds; the publish timeout (5 s) bounds the top.
PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Provider calls (Focus, SMTP, hooks) take 100 ms to the 30 s timeout; handlers include them.
SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def build_labels() -> dict[str, str]:
    """notaflow_build_info's labels: the installed release and the Python running it."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("notaflow")
    except PackageNotFoundError:
        release = "unknown"
    return {"version": release, "python": platform.python_version()}


def _makers(
    registry: CollectorRegistry,
) -> tuple[Callable[..., Counter], Callable[..., Gauge], Callable[..., Histogram]]:
    """Counter, Gauge and Histogram, each registered on `registry`."""

    def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    def histogram(
        name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=registry)

    return counter, gauge, histogram


class Metrics:
    """Every metric of notaflow, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        counter, gauge, histogram = _makers(registry)
        r = registry
        self.http_requests_total = counter(
            "notaflow_http_requests_total",
            "HTTP requests answered by the ingress, by route template.",
            ["route", "method", "status"],
        )
        self.http_request_duration_seconds = histogram(
            "notaflow_http_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
        )
        self.kafka_publish_duration_seconds = histogram(
            "notaflow_kafka_publish_duration_seconds",
            "Time for Kafka to acknowledge a publish (acks=all).",
            ["topic"],
            buckets=PUBLISH_BUCKETS,
        )
        self.consumer_records_total = counter(
            "notaflow_consumer_records_total",
            "Records a consumer finished, by outcome (processed|failed|retried|dead_lettered).",
            ["consumer", "outcome"],
        )
        self.consumer_processing_duration_seconds = histogram(
            "notaflow_consumer_processing_duration_seconds",
            "Time a consumer spent on one record, retries included.",
            ["consumer"],
            buckets=SLOW_BUCKETS,
        )
        self.consumer_in_flight = gauge(
            "notaflow_consumer_in_flight", "Records being handled right now.", ["consumer"]
        )
        self.consumer_lag = gauge(
            "notaflow_consumer_lag",
            "Records between the committed offset and the partition's high watermark.",
            ["consumer", "topic", "partition"],
        )
        self.provider_request_duration_seconds = histogram(
            "notaflow_provider_request_duration_seconds",
            "Time of one call to a provider (Focus, SMTP, client webhooks, Emites).",
            ["provider", "operation"],
            buckets=SLOW_BUCKETS,
        )
        self.provider_errors_total = counter(
            "notaflow_provider_errors_total",
            "Failed provider calls, by kind of failure (an exception class or an HTTP class).",
            ["provider", "operation", "kind"],
        )
        self.emails_total = counter(
            "notaflow_emails_total",
            "E-mails handed to SMTP, by outcome (sent|failed|retried).",
            ["outcome"],
        )
        self.webhook_deliveries_total = counter(
            "notaflow_webhook_deliveries_total",
            "Client webhook deliveries, by outcome (delivered|failed|retried).",
            ["outcome"],
        )
        self.hooks_disabled_total = counter(
            "notaflow_hooks_disabled_total",
            "Client webhooks disabled for failing most of their deliveries for 7 days.",
        )
        # Issue 15: Focus credits are per token (100 a minute each); what each tenant spends,
        # what a refused token costs, and who waits behind whom in the consumer.
        self.focus_credits_total = Counter(
            "notaflow_focus_credits_total",
            "Focus API requests answered (one credit each), by tenant and operation.",
            ["tenant", "operation"],
            registry=r,
        )
        self.focus_downloads_total = Counter(
            "notaflow_focus_downloads_total",
            "Files downloaded from Focus without credentials (the notes' XML: no credit), by "
            "tenant.",
            ["tenant"],
            registry=r,
        )
        self.focus_credential_errors_total = Counter(
            "notaflow_focus_credential_errors_total",
            "Focus answers 401/403 (a company's token refused), by tenant.",
            ["tenant"],
            registry=r,
        )
        self.tenant_backlog = Gauge(
            "notaflow_tenant_backlog",
            "Records this consumer process holds for a tenant (queued for its turn or running).",
            ["tenant"],
            registry=r,
        )
        self._backlog_shown: set[str] = set()
        # The series of each record, publish and provider call, by metric and label values
        # (`_series`): `labels()` takes a lock and checks its arguments each time (three calls
        # per record were 4 % of a light consumer's CPU).
        self._hot: dict[tuple[Any, tuple[str, ...]], Any] = {}
        # Which release runs where (a rollout half done shows two versions), and the standard
        # process_* (CPU, memory, file descriptors) and python_* (GC, version) series the
        # default registry would have: each process has a registry of its own.
        self.build_info = Info(
            "notaflow_build", "The notaflow release this process runs.", registry=r
        )
        self.build_info.info(build_labels())
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    # Small helpers, so callers cannot misspell an outcome into a new time series.

    def _series(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once. Only for label values bounded by
        construction (consumer names, outcomes, topics, provider operations)."""
        key = (metric, labels)
        series = self._hot.get(key)
        if series is None:
            series = self._hot[key] = metric.labels(*labels)
        return series

    def consumer_record(self, consumer: str, outcome: str) -> None:
        if outcome not in CONSUMER_OUTCOMES:
            raise ValueError(f"unknown consumer outcome {outcome!r}")
        self._series(self.consumer_records_total, consumer, outcome).inc()

    def focus_credit(self, tenant: str, operation: str) -> None:
        self.focus_credits_total.labels(tenant, operation).inc()

    def focus_download(self, tenant: str) -> None:
        self.focus_downloads_total.labels(tenant).inc()

    def focus_credential_error(self, tenant: str) -> None:
        self.focus_credential_errors_total.labels(tenant).inc()

    def set_tenant_backlog(self, backlog: dict[str, int]) -> None:
        """The tenants with records held now; one whose backlog is gone is dropped (bounded)."""
        for tenant in self._backlog_shown - backlog.keys():
            self.tenant_backlog.remove(tenant)
        for tenant, count in backlog.items():
            self.tenant_backlog.labels(tenant).set(count)
        self._backlog_shown = set(backlog)

    def email(self, outcome: str) -> None:
        if outcome not in EMAIL_OUTCOMES:
            raise ValueError(f"unknown e-mail outcome {outcome!r}")
        self.emails_total.labels(outcome).inc()

    def webhook_delivery(self, outcome: str) -> None:
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(f"unknown delivery outcome {outcome!r}")
        self.webhook_deliveries_total.labels(outcome).inc()

    def set_consumer_lag(self, consumer: str, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(consumer, topic, str(partition)).set(max(lag, 0))

    def forget_partition(self, consumer: str, topic: str, partition: int) -> None:
        """Drop a revoked partition's lag, so a partition now owned by another pod does not
        keep reporting this pod's last value."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(consumer, topic, str(partition))

    def processing(self, consumer: str) -> contextlib.AbstractContextManager[None]:
        """Around one record's handling: in-flight gauge and processing time."""
        return _Timed(
            self._series(self.consumer_processing_duration_seconds, consumer),
            self._series(self.consumer_in_flight, consumer),
        )

    def publishing(self, topic: str) -> contextlib.AbstractContextManager[None]:
        return _Timed(self._series(self.kafka_publish_duration_seconds, topic))

    def provider_call(
        self,
        provider: str,
        operation: str,
        kind: Callable[[BaseException], str] = lambda exc: type(exc).__name__,
    ) -> contextlib.AbstractContextManager[None]:
        """Time a provider call; an exception counts as an error of `kind(exc)` and propagates.
        The default kind is the exception's class name: bounded, since our adapters map every
        foreign error to a few classes of their own."""
        duration = self._series(self.provider_request_duration_seconds, provider, operation)
        return _ProviderCall(duration, self.provider_errors_total, (provider, operation), kind)


class _Timed:
    """A block's duration into a histogram series, with an in-flight gauge when given: what a
    `contextlib.contextmanager` does here, without a generator per block (2.7 against 0.8 us,
    several times a record). The series are looked up once (`labels` takes a lock)."""

    __slots__ = ("_duration", "_gauge", "_start")

    def __init__(self, duration: Any, gauge: Any = None) -> None:
        self._duration, self._gauge, self._start = duration, gauge, 0.0

    def __enter__(self) -> None:
        if self._gauge is not None:
            self._gauge.inc()
        self._start = time.perf_counter()

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        # None: an exception propagates.
        if self._gauge is not None:
            self._gauge.dec()
        self._duration.observe(time.perf_counter() - self._start)


class _ProviderCall(_Timed):
    """`_Timed`, and an exception (not a cancellation) counted by its kind."""

    __slots__ = ("_errors", "_key", "_kind")

    def __init__(
        self,
        duration: Any,
        errors: Counter,
        key: tuple[str, str],
        kind: Callable[[BaseException], str],
    ) -> None:
        super().__init__(duration)
        self._errors, self._key, self._kind = errors, key, kind

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, Exception):
            self._errors.labels(*self._key, self._kind(error)).inc()
        super().__exit__(kind, error, tb)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus's text exposition format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
