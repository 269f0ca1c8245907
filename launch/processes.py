"""Process wiring: each production process (ingress, a consumer, the dunning and reconcile jobs,
the sandboxes) built from its settings. With the CLI and the dev stack, the launch layer on top
of the ingress, the consumers and the sandbox; each consumer's own wiring is its builder in
launch/registry.py."""

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
from notaflow.launch.registry import CONSUMERS, Resources
from notaflow.replies import ReplyListener, ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import (
    DocumentStore,
    HookStore,
    RetryLedger,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.topics import Topics

log = logging.getLogger("notaflow")


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


def tune_interpreter() -> None:
    """The interpreter settings of a production process (ingress or consumer), set once where
    the process starts its work: they are process-wide, and library code (the store, the bus)
    runs in tests and tools that should keep the interpreter's defaults.

    - Each request or record allocates a few hundred short-lived objects; the young-generation
      collections every 700 allocations showed up in the profile, walking the objects of
      everything in flight (hundreds of documents at full concurrency) over and over.
    - The database's fallback threads (SQLite batches under lock contention, aiosqlite) need
      the GIL briefly per statement; with the default 5 ms switch interval each such hand-off
      held up the busy event loop and every call in flight.
    """
    gc.set_threshold(50_000, 20, 20)
    sys.setswitchinterval(0.0005)


async def run_ingress(settings: Settings) -> None:
    # Long-lived start-up objects are frozen out of the collector's way.
    gc.freeze()
    tune_interpreter()
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
        intake=Intake(documents, bus, topics.nfse_commands, topics.lifecycle),
        nfce_intake=Intake(documents, bus, topics.nfce_commands, topics.lifecycle),
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


async def run_consumer(settings: Settings, name: str) -> None:
    """`notaflow consume <name>`: the resources every consumer shares, the consumer's own
    wiring from its builder (launch/registry.py), the runner, the health server, and an
    ordered shutdown."""
    tune_interpreter()
    from prometheus_client import CollectorRegistry

    from notaflow.consumers.assignment import TopicsNotCoPartitioned
    from notaflow.consumers.fairness import backlog_view
    from notaflow.consumers.runtime import Runner
    from notaflow.health import HealthServer, progress_check
    from notaflow.metrics import Metrics

    builder = CONSUMERS.get(name)
    if builder is None:
        raise SystemExit(f"unknown consumer {name!r}; choose one of {', '.join(CONSUMERS)}")
    topics = Topics(settings.kafka_topic_prefix)
    engine = create_engine(settings.database_url, **settings.database_options())
    documents = DocumentStore(engine)
    metrics = Metrics(CollectorRegistry())
    bus = Bus(settings, metrics)
    await bus.start()
    await ensure_topics(settings, topics.all())
    await bus.wait_connected(60)
    stopping = asyncio.Event()
    async with contextlib.AsyncExitStack() as closing:
        res = Resources(settings, topics, engine, documents, metrics, bus, closing, stopping)
        wired = builder.build(res)
        runner = Runner(
            settings,
            name,
            wired.routes.topics(),
            wired.routes,
            bus,
            topics.dead_letter,
            concurrency=wired.window,
            metrics=metrics,
            ledger=RetryLedger(engine),
            tenant_cap=wired.tenant_cap,
            slot_cap=wired.slot_cap,
        )
        rate = wired.credit_rate or (lambda tenant: None)
        health = HealthServer(
            settings.health_host,
            settings.health_port,
            progress_check(lambda: runner.stats, settings.health_max_idle, runner.busy),
            metrics.registry,
            # Who waits, and when it drains at its company's Focus credits (issue 15).
            views={b"/backlog": lambda: backlog_view(runner.backlog(), rate)},
        )
        await health.start()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            runner.stop()
            for hook in wired.on_stop:
                hook()
            stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        log.info("consumer %s started (%s)", name, settings.kafka_bootstrap)
        try:
            await runner.run()
        except TopicsNotCoPartitioned as exc:
            # An operator's mistake, not a bug: one line saying what to fix, no traceback.
            raise SystemExit(f"notaflow consume {name}: refusing to start: {exc}") from None
        finally:
            stopping.set()
            await closing.aclose()  # background loops first, then the clients (see Resources)
            await bus.stop()
            documents.close()
            await engine.dispose()
            await health.stop()
            tracing.shutdown()
            log.info("consumer %s stopped: %s", name, runner.stats)


async def run_dunning(settings: Settings) -> int:
    """One dunning pass (`notaflow dunning`, e.g. a daily CronJob); safe beside other replicas."""
    from notaflow.billing.links import Links
    from notaflow.consumers.billing.dunning import DunningJob
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
        from notaflow.store.accounts import account_resolver

        reconciler = Reconciler(
            documents,
            focus,
            bus,
            Topics(settings.kafka_topic_prefix),
            account_resolver(engine, settings).focus,
        )
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
