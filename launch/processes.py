"""Composition root for the production processes: builds settings-driven objects and wires the
ingress, the consumers and the sandbox. The only core module (with the CLI and the dev stack)
that imports them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

import uvicorn

from notaflow import tracing
from notaflow.bus import Bus, ensure_topics
from notaflow.errors import ConfigurationError
from notaflow.launch.consumer_names import CONSUMERS
from notaflow.replies import ReplyListener, ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import (
    DeliveryStore,
    DocumentStore,
    HookStore,
    RetryLedger,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.topics import Topics

log = logging.getLogger("notaflow")

# Seconds the notification consumer keeps an idle SMTP connection for its next send.
SMTP_KEEP_ALIVE = 10.0


def configure_logging(level: str, fmt: str = "text", service: str = "notaflow") -> None:
    if fmt == "json":
        from notaflow.logs import configure_json_logging

        configure_json_logging(level, service)
    else:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from notaflow.logs import redact_every_handler

        redact_every_handler()  # the text format is as clean as the JSON one (issue 19)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO ("HTTP Request: POST ..."): a formatted line per note
    # and per webhook in the consumers. Kept for NOTAFLOW_LOG_LEVEL=DEBUG.
    if level.upper() != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_ingress(settings: Settings) -> None:
    # Every request allocates a few hundred short-lived objects; collecting the young
    # generation every 700 allocations showed up in the profile. Long-lived start-up objects
    # are frozen out of the collector's way.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # The database's fallback threads (SQLite batches under lock contention, aiosqlite) need
    # the GIL briefly per statement; with the default 5 ms switch interval each such hand-off
    # held up the busy event loop and every call in flight.
    sys.setswitchinterval(0.0005)
    from prometheus_client import CollectorRegistry

    from notaflow.ingress.app import create_app
    from notaflow.ingress.auth import TenantCache
    from notaflow.ingress.deps import IngressDeps
    from notaflow.ingress.intake import Intake
    from notaflow.ingress.server_limits import server_options
    from notaflow.logs import redact_every_handler
    from notaflow.metrics import Metrics

    engine = create_engine(settings.database_url, **settings.database_options())
    tenants = TenantStore(engine)
    documents = DocumentStore(engine)
    metrics = Metrics(CollectorRegistry())
    bus = Bus(settings, metrics)
    topics = Topics(settings.kafka_topic_prefix)
    waiters = ReplyWaiters()
    deps = IngressDeps(
        settings=settings,
        engine=engine,
        bus=bus,
        documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands),
        nfce_intake=Intake(documents, bus, topics.nfce_commands),
        tenants=tenants,
        tenant_cache=TenantCache(tenants),
        topics=topics,
        hooks=HookStore(engine),
        waiters=waiters,
        replies=ReplyListener(settings, topics.replies, waiters),
    )
    config = uvicorn.Config(
        create_app(deps, metrics=metrics),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Open requests may wait up to sync_email_wait (60 s): a shorter grace cut them.
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        server_header=False,
        log_config=None,  # uvicorn's loggers go through ours (configure_logging)
        **server_options(
            settings.ingress_max_header_bytes,
            settings.ingress_header_timeout,
            settings.ingress_keep_alive_timeout,
            settings.ingress_max_concurrency,
        ),
    )
    redact_every_handler()  # whatever handlers uvicorn's config installed
    server = _FlushingServer(config)
    try:
        if settings.ops_port:
            sockets = [
                listen(settings.host, settings.port),
                listen(settings.host, settings.ops_port),
            ]
            await server.serve(sockets=sockets)
        else:
            await server.serve()
    finally:
        tracing.shutdown()


class _FlushingServer(uvicorn.Server):
    """uvicorn re-raises the SIGTERM it caught once it has shut down, which ends the process
    on the spot: the spans still in the batch exporter are sent before that."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        tracing.shutdown()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn binds its own (SO_REUSEADDR, IPv4 or IPv6)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def records_in_flight(settings: Settings, name: str) -> int:
    """The runner's window. Emission and cancellation call Focus, whose client holds the calls
    in flight to the concurrency limit by itself, so their window is wider: a record takes a
    call slot only for the call, and its database reads and writes and its lifecycle event
    happen while other records' calls are out. The other consumers' work (SMTP, webhooks, the
    database) has no such limit of its own, so their window is the limit."""
    if settings.consumer_window > 0:
        return settings.consumer_window
    if name in ("emission", "cancellation"):
        return 4 * settings.consumer_concurrency
    return settings.consumer_concurrency


async def run_consumer(settings: Settings, name: str) -> None:
    # As in the ingress: each record allocates a few hundred short-lived objects, and the
    # young-generation collections every 700 allocations walked the in-flight records' objects
    # (hundreds of documents at full concurrency) over and over.
    gc.set_threshold(50_000, 20, 20)
    # The database's fallback threads (SQLite batches under lock contention, aiosqlite) need
    # the GIL briefly per statement; with the default 5 ms switch interval each such hand-off
    # held up the busy event loop and every call in flight.
    sys.setswitchinterval(0.0005)
    from prometheus_client import CollectorRegistry

    from notaflow.consumers.billing import BillingEvents, BillingMailer
    from notaflow.consumers.cancellation import CancellationConsumer
    from notaflow.consumers.emission import EmissionConsumer
    from notaflow.consumers.nfce import NfceCanceller, NfceEmitter
    from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
    from notaflow.consumers.providers.emites import EmitesClient
    from notaflow.consumers.providers.focus import FocusClient
    from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
    from notaflow.consumers.providers.webhooks import WebhookSender
    from notaflow.consumers.runner import Runner
    from notaflow.health import HealthServer, progress_check
    from notaflow.metrics import Metrics
    from notaflow.store.invoices import BillingConfigStore, InvoiceDeliveryStore, InvoiceStore

    if name not in CONSUMERS:
        raise SystemExit(f"unknown consumer {name!r}; choose one of {', '.join(CONSUMERS)}")
    topics = Topics(settings.kafka_topic_prefix)
    engine = create_engine(settings.database_url, **settings.database_options())
    documents = DocumentStore(engine)
    metrics = Metrics(CollectorRegistry())
    bus = Bus(settings, metrics)
    await bus.start()
    await ensure_topics(settings, topics.all())
    await bus.wait_connected(60)
    focus = FocusClient(
        settings.focus_base_url,
        settings.focus_token,
        settings.focus_timeout,
        metrics=metrics,
        max_in_flight=settings.consumer_concurrency,
    )
    webhooks = WebhookSender(
        allow_private=settings.hooks_allow_private, timeout=settings.hooks_timeout
    )
    stop_retries = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    mailer: Mailer | None = None
    # The notification consumer's stores: their batches' SQLite connections are closed below.
    deliveries, hooks = DeliveryStore(engine), HookStore(engine)
    emites = (
        EmitesClient(
            settings.emites_host,
            settings.emites_port,
            pool_size=settings.emites_pool,
            request_timeout=settings.emites_timeout,
        )
        if settings.emites_cnpj
        else None
    )
    if name == "emission":
        tenants = TenantStore(engine)
        nfce_emitter = (
            NfceEmitter(
                documents,
                tenants,
                emites,
                bus,
                topics,
                settings.emites_cnpj,
                "notaflow/consumers/emission",
            )
            if emites
            else None
        )
        emission = EmissionConsumer(documents, tenants, focus, bus, topics, nfce_emitter)
        handler = emission.handle
        subscribed = [topics.nfse_commands, topics.nfce_commands, topics.provider_events]
    elif name == "cancellation":
        canceller = (
            NfceCanceller(documents, emites, bus, topics, "notaflow/consumers/cancellation")
            if emites
            else None
        )
        cancellation = CancellationConsumer(documents, focus, bus, topics, canceller)
        handler, subscribed = cancellation.handle, [topics.nfse_commands, topics.nfce_commands]
    elif name == "billing":
        handler, subscribed = BillingEvents(InvoiceStore(engine)).handle, [topics.billing_events]
    else:
        mailer = (
            Mailer(
                SmtpConfig(
                    host=settings.smtp_host,
                    port=settings.smtp_port,
                    security=settings.smtp_security,  # type: ignore[arg-type]
                    username=settings.smtp_username or None,
                    password=settings.smtp_password or None,
                    timeout=settings.smtp_timeout,
                    sender_address=settings.smtp_sender,
                    sender_name=settings.smtp_sender_name,
                    pause_between_sends=settings.smtp_pause,
                    local_hostname="notaflow",
                    # Sends are serialised per server: a connection kept for the next one
                    # saves the handshake, EHLO and QUIT of every e-mail.
                    keep_alive=SMTP_KEEP_ALIVE,
                )
            )
            if settings.smtp_host
            else None
        )
        notification = NotificationConsumer(
            documents,
            TenantStore(engine),
            hooks,
            deliveries,
            mailer,
            webhooks,
            bus,
            topics,
            NotificationSettings(
                public_url=settings.public_url,
                hook_schedule=tuple(
                    float(x) for x in settings.hooks_retry_schedule.split(",") if x.strip()
                ),
            ),
            metrics,
        )
        billing_mailer = BillingMailer(
            engine,
            InvoiceStore(engine),
            BillingConfigStore(engine),
            InvoiceDeliveryStore(engine),
            mailer,
            settings.public_url,
        )

        async def notify(record: Any) -> None:
            if record.topic == topics.billing_commands:
                await billing_mailer.handle(record)
            else:
                await notification.handle(record)

        handler = notify
        subscribed = [topics.lifecycle, topics.nfse_commands, topics.billing_commands]
        background.append(asyncio.create_task(notification.run_retries(stop_retries)))
    runner = Runner(
        settings,
        name,
        subscribed,
        handler,
        bus,
        topics.dead_letter,
        concurrency=records_in_flight(settings, name),
        metrics=metrics,
        ledger=RetryLedger(engine),
    )
    health = HealthServer(
        settings.health_host,
        settings.health_port,
        progress_check(lambda: runner.stats, settings.health_max_idle, runner.busy),
        metrics.registry,
    )
    await health.start()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        runner.stop()
        focus.stop_calls()  # records still waiting for a call slot are left for redelivery
        stop_retries.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("consumer %s started (%s)", name, settings.kafka_bootstrap)
    from notaflow.consumers.assignment import TopicsNotCoPartitioned

    try:
        await runner.run()
    except TopicsNotCoPartitioned as exc:
        # An operator's mistake, not a bug: one line saying what to fix, no traceback.
        raise SystemExit(f"notaflow consume {name}: refusing to start: {exc}") from None
    finally:
        stop_retries.set()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await webhooks.aclose()
        if mailer is not None:
            await mailer.aclose()
        await focus.aclose()
        if emites is not None:
            await emites.aclose()
        await bus.stop()
        documents.close()
        deliveries.close()
        hooks.close()
        await engine.dispose()
        await health.stop()
        tracing.shutdown()
        log.info("consumer %s stopped: %s", name, runner.stats)


async def run_dunning(settings: Settings) -> int:
    """One dunning pass (`notaflow dunning`, e.g. a daily CronJob); safe beside other replicas."""
    from notaflow.billing import Links
    from notaflow.consumers.billing import DunningJob
    from notaflow.store.invoices import BillingConfigStore, DunningStore, InvoiceStore

    topics = Topics(settings.kafka_topic_prefix)
    engine = create_engine(settings.database_url, **settings.database_options())
    bus = Bus(settings)
    await bus.start()
    try:
        await bus.wait_connected(60)
        job = DunningJob(
            engine,
            InvoiceStore(engine),
            BillingConfigStore(engine),
            DunningStore(engine),
            bus,
            topics.billing_commands,
            Links(settings.public_url, settings.billing_link_secret),
        )
        return await job.run()
    finally:
        await bus.stop()
        await engine.dispose()


async def prepare(settings: Settings, topics: bool = True) -> None:
    """Database migrations and Kafka topics: what every process expects to exist. The only
    place the schema changes (`notaflow migrate`)."""
    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    if topics:
        await ensure_topics(settings, Topics(settings.kafka_topic_prefix).all())


async def serve_until_signal(server: Coroutine[Any, Any, None]) -> None:
    """Run a sandbox server until SIGTERM/SIGINT, then cancel it (it closes cleanly)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_focus_sandbox(host: str, port: int, tokens: set[str], delay: float) -> None:
    from notaflow.sandbox.focus import FocusSandboxConfig, serve_focus_sandbox

    config = FocusSandboxConfig(tokens=tokens, processing_delay=delay)
    await serve_until_signal(serve_focus_sandbox(config, host, port))


async def run_smtp_sink(host: str, port: int, outbox: str) -> None:
    from pathlib import Path

    from notaflow.sandbox.smtp_sink import serve_smtp_sink

    await serve_until_signal(serve_smtp_sink(Path(outbox), host, port))


async def run_emites_sandbox(host: str, port: int, cnpj: str, cancel_window: float) -> None:
    from notaflow.sandbox.emites import EmitesSandboxConfig, serve_emites_sandbox

    config = EmitesSandboxConfig(emitter_cnpj=cnpj, cancel_window=cancel_window)
    await serve_until_signal(serve_emites_sandbox(config, host, port))


async def run_reconciler(settings: Settings, older_than: float, limit: int, every: float) -> None:
    from notaflow.consumers.providers.focus import FocusClient
    from notaflow.consumers.reconciler import Reconciler

    engine = create_engine(settings.database_url, **settings.database_options())
    documents = DocumentStore(engine)
    bus = Bus(settings)
    await bus.start()
    focus = FocusClient(settings.focus_base_url, settings.focus_token, settings.focus_timeout)
    try:
        await bus.wait_connected(60)
        reconciler = Reconciler(documents, focus, bus, Topics(settings.kafka_topic_prefix))
        while True:
            report = await reconciler.run_once(older_than, limit)
            log.info("reconcile: %s", report)
            print(json.dumps(dataclasses.asdict(report)), flush=True)
            if every <= 0:
                return
            await asyncio.sleep(every)
    finally:
        await focus.aclose()
        await bus.stop()
        documents.close()
        await engine.dispose()
