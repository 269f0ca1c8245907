"""Kafka wiring: the producer the ingress and consumers publish with, and topic creation.

A 2xx from the ingress means the record is acknowledged by every in-sync replica (acks=all), so
`publish` and `publish_many` wait for the acks and raise `BusUnavailable` (HTTP 503) for every
Kafka failure. `Publisher` is what the consumers need of a bus: `Bus` here, or the in-memory one
of `notaflow.testing` in unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from notaflow import tracing
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, ConfigurationError
from notaflow.metrics import Metrics
from notaflow.settings import Settings

log = logging.getLogger(__name__)


_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the default partitioner's hash), as `aiokafka.partitioner.murmur2`
    computes it, in half the time: whole little-endian words at once instead of byte by byte
    (it is paid for every record the ingress publishes). tests/unit checks they agree."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    unpack = _WORDS.get(words)
    if unpack is None:
        unpack = _WORDS[words] = struct.Struct(f"<{words}I").unpack_from
    for k in unpack(data):
        k = (k * 0x5BD1E995) & 0xFFFFFFFF
        h = ((h * 0x5BD1E995) & 0xFFFFFFFF) ^ (((k ^ (k >> 24)) * 0x5BD1E995) & 0xFFFFFFFF)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * 0x5BD1E995) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by producers, consumers and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    mechanism = settings.kafka_sasl_mechanism
    if mechanism:
        opts["sasl_mechanism"] = mechanism
        if mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
            opts.update(
                sasl_plain_username=settings.kafka_sasl_username,
                sasl_plain_password=settings.kafka_sasl_password,
            )
        elif mechanism == "GSSAPI":
            opts["sasl_kerberos_service_name"] = settings.kafka_sasl_kerberos_service_name
        elif mechanism == "OAUTHBEARER":
            opts["sasl_oauth_token_provider"] = FileTokenProvider(
                settings.kafka_sasl_oauth_token_file
            )
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        opts["ssl_context"] = ssl_context(settings)
    return opts


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers: the CA file when given (a private CA such as Strimzi's), else the
    system's; a client certificate for mutual TLS; the host name check unless turned off."""
    from aiokafka.helpers import create_ssl_context

    try:
        context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"Kafka TLS files cannot be loaded: {exc}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


class FileTokenProvider(AbstractTokenProvider):
    """SASL/OAUTHBEARER token read from a file at every authentication, so a token the platform
    rotates in place (a projected service-account token, a sidecar's output) is picked up."""

    def __init__(self, path: str) -> None:
        if not path:
            raise ConfigurationError(
                "NOTAFLOW_KAFKA_SASL_MECHANISM=OAUTHBEARER needs "
                "NOTAFLOW_KAFKA_SASL_OAUTH_TOKEN_FILE"
            )
        self._path = Path(path)

    async def token(self) -> str:
        return (await asyncio.to_thread(self._path.read_text)).strip()


class Publisher(Protocol):
    """What a consumer publishes with: events, batches of them, and raw records (dead letters).
    Every method raises BusUnavailable when the records were not acknowledged."""

    async def publish(self, topic: str, event: Event, key: bytes) -> None: ...

    async def publish_many(self, topic: str, records: list[tuple[bytes, Event]]) -> None: ...

    async def publish_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None: ...


class Bus:
    """One producer per process. Starts even when Kafka is down and keeps trying, so the ingress
    can come up, answer 503 and report not-ready instead of crash-looping."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._ready_at = 0.0
        self._ready = False
        self._last_batch: dict[tuple[str, int], asyncio.Future[Any]] = {}

    async def start(self) -> None:
        self._connect_task = asyncio.create_task(self._connect_forever(), name="bus-connect")

    async def wait_connected(self, timeout: float) -> None:
        if self._connect_task is not None:
            await asyncio.wait_for(asyncio.shield(self._connect_task), timeout)

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                **client_options(self._settings),
                acks="all",
                enable_idempotence=self._settings.kafka_idempotence,
                linger_ms=1,
                # Big enough for the ingress's group publishes (many records per partition).
                max_batch_size=1024 * 1024,
                request_timeout_ms=int(self._settings.kafka_publish_timeout * 1000),
                max_request_size=4 * 1024 * 1024,
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                log.warning("kafka not reachable yet: %s", exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self._ready, self._ready_at = True, time.monotonic()
            return

    async def stop(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def publish(self, topic: str, event: Event, key: bytes) -> None:
        producer = self._producer
        if producer is None:
            raise BusUnavailable("Kafka is not connected")
        try:
            # No asyncio timer per record (it showed in the hot path's profile): the producer's
            # own request_timeout_ms (= kafka_publish_timeout) bounds both the metadata wait
            # in send() and the batch's delivery.
            if tracing.enabled():
                await self._send_traced(producer, topic, event, key)
            else:
                with self._timer(topic):
                    ack = await producer.send(
                        topic, event.value(), key=key, headers=event.headers()
                    )
                    await ack
        except (KafkaError, TimeoutError, OSError) as exc:
            self._ready = False
            raise BusUnavailable(f"Kafka did not acknowledge the record: {exc!r}") from exc
        self._ready, self._ready_at = True, time.monotonic()

    async def _send_traced(
        self, producer: AIOKafkaProducer, topic: str, event: Event, key: bytes
    ) -> None:
        """`publish` under a PRODUCER span; the record's traceparent names that span, so the
        consumer's `process` span is its child. Without a current span (a CLI verb), the
        event's own trace headers are the parent (its tracestate and baggage kept)."""
        current = trace.get_current_span().get_span_context().is_valid
        with tracing.span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            carrier=None if current else {k: v for k, v in event.trace().items() if v},
            **tracing.messaging_attributes("send", topic),
        ):
            headers = tracing.with_current_traceparent(event.headers())
            with self._timer(topic):
                ack = await producer.send(topic, event.value(), key=key, headers=headers)
                await ack

    async def publish_many(self, topic: str, records: list[tuple[bytes, Event]]) -> None:
        """Publish many records and wait for every ack; raise BusUnavailable as `publish` does
        (the caller treats the whole batch as not accepted: a record acknowledged anyway is a
        harmless duplicate for the idempotent consumers)."""
        if not tracing.enabled():
            return await self._publish_many(topic, records)
        # One PRODUCER span for the batch; each record keeps the traceparent of the request it
        # came from (the batch holds several requests' records).
        with tracing.span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            **tracing.messaging_attributes("send", topic, batch=len(records)),
        ) as current:
            try:
                await self._publish_many(topic, records)
            except BusUnavailable as error:
                if current is not None:
                    current.set_status(StatusCode.ERROR, str(error))
                raise

    async def _publish_many(self, topic: str, records: list[tuple[bytes, Event]]) -> None:
        """One batch per partition and wait for every ack.

        The per-record path of `send()` costs tens of microseconds of Python per record;
        building the batches here (the default murmur2 partitioner, so keys land where any
        Kafka client would put them) makes a busy ingress pay that once per batch."""
        producer = self._producer
        if producer is None:
            raise BusUnavailable("Kafka is not connected")
        try:
            partitions = sorted(await producer.partitions_for(topic))
            batches: dict[int, list[Any]] = {}
            for key, event in records:
                partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
                open_batches = batches.setdefault(partition, [])
                batch = open_batches[-1] if open_batches else None
                value, headers = event.value(), event.headers()
                if (
                    batch is None
                    or batch.append(timestamp=None, key=key, value=value, headers=headers) is None
                ):
                    batch = producer.create_batch()
                    if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                        raise BusUnavailable("record larger than the producer's batch size")
                    open_batches.append(batch)
            # One of our batches pending per partition at a time: aiokafka's add_batch
            # subtracts the whole elapsed time on every wait, so batches queued behind several
            # others time out long before request_timeout. If Kafka failed one we queued
            # behind (after a whole request timeout), answer now with nothing sent instead of
            # spending another timeout: in an outage each request gets its 503 within about
            # two timeouts, not one more per batch queued ahead of it.
            queued = [self._last_batch.get((topic, partition)) for partition in batches]
            waiting = [f for f in queued if f is not None and not f.done()]
            if waiting:
                await asyncio.wait(waiting)
                if any(f.cancelled() or f.exception() is not None for f in waiting):
                    self._ready = False
                    raise BusUnavailable("Kafka failed the batches queued ahead of these")
            acks = []
            for partition, open_batches in batches.items():
                for batch in open_batches:
                    previous = self._last_batch.get((topic, partition))
                    if previous is not None and not previous.done():
                        await asyncio.wait([previous])
                    # Closed, the batch is sent at once: an open one lingers (linger_ms) in
                    # aiokafka's accumulator, a timer and a wake-up per partition per publish.
                    batch.close()
                    ack = await producer.send_batch(batch, topic, partition=partition)
                    self._last_batch[(topic, partition)] = ack
                    acks.append(ack)
            with self._timer(topic):
                for ack in acks:
                    await ack
        except (KafkaError, TimeoutError, OSError) as exc:
            self._ready = False
            raise BusUnavailable(f"Kafka did not acknowledge the records: {exc!r}") from exc
        self._ready, self._ready_at = True, time.monotonic()

    async def publish_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        producer = self._producer
        if producer is None:
            raise BusUnavailable("Kafka is not connected")
        try:
            async with asyncio.timeout(self._settings.kafka_publish_timeout):
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BusUnavailable(f"Kafka did not acknowledge the record: {exc!r}") from exc

    def _timer(self, topic: str) -> contextlib.AbstractContextManager[None]:
        return self._metrics.publishing(topic) if self._metrics else contextlib.nullcontext()

    async def ready(self) -> bool:
        """Cheap readiness: a recent ack proves the broker is there; otherwise ask for metadata."""
        producer = self._producer
        if producer is None:
            return False
        if self._ready and time.monotonic() - self._ready_at < 2.0:
            return True
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
        except (KafkaError, TimeoutError, OSError):
            self._ready = False
            return False
        self._ready, self._ready_at = True, time.monotonic()
        return True


async def ensure_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Create missing topics with the configured partition count (idempotent)."""
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                # Another process may create them at the same moment.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [
                            NewTopic(n, settings.kafka_partitions, settings.kafka_replication)
                            for n in missing
                        ]
                    )
            return
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise BusUnavailable(f"could not create topics: {exc!r}") from exc
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
