"""Composition root for the production processes: builds settings-driven objects and wires the
ingress, the consumers and the sandbox. The only core module (with the CLI and the dev stack)
that imports them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import uvicorn

from notaflow.bus import Bus, ensure_topics
from notaflow.settings import Settings
from notaflow.store import DocumentStore, TenantStore, create_engine, migrate
from notaflow.topics import Topics

log = logging.getLogger("notaflow")

CONSUMERS = ("emission",)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


async def run_ingress(settings: Settings) -> None:
    # The claim writer's thread needs the GIL briefly per batch; with the default 5 ms switch
    # interval it waits behind the busy event loop and every request's latency grows.
    sys.setswitchinterval(0.0005)
    from ingress.app import create_app
    from ingress.auth import TenantCache
    from ingress.deps import IngressDeps
    from ingress.intake import Intake

    engine = create_engine(settings.database_url)
    tenants = TenantStore(engine)
    documents = DocumentStore(engine)
    bus = Bus(settings)
    topics = Topics(settings.kafka_topic_prefix)
    deps = IngressDeps(
        settings=settings,
        engine=engine,
        bus=bus,
        documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands),
        tenants=tenants,
        tenant_cache=TenantCache(tenants),
        topics=topics,
    )
    config = uvicorn.Config(
        create_app(deps),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    await uvicorn.Server(config).serve()


async def run_consumer(settings: Settings, name: str) -> None:
    from consumers.emission import EmissionConsumer
    from consumers.providers.focus import FocusClient
    from consumers.runner import Runner

    if name not in CONSUMERS:
        raise SystemExit(f"unknown consumer {name!r}; choose one of {', '.join(CONSUMERS)}")
    topics = Topics(settings.kafka_topic_prefix)
    engine = create_engine(settings.database_url)
    bus = Bus(settings)
    await bus.start()
    await ensure_topics(settings, topics.all())
    await bus.wait_connected(60)
    focus = FocusClient(settings.focus_base_url, settings.focus_token, settings.focus_timeout)
    consumer = EmissionConsumer(DocumentStore(engine), TenantStore(engine), focus, bus, topics)
    runner = Runner(
        settings,
        name,
        [topics.nfse_commands, topics.provider_events],
        consumer.handle,
        bus,
        topics.dead_letter,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    log.info("consumer %s started (%s)", name, settings.kafka_bootstrap)
    try:
        await runner.run()
    finally:
        await focus.aclose()
        await bus.stop()
        await engine.dispose()
        log.info("consumer %s stopped: %s", name, runner.stats)


async def prepare(settings: Settings) -> None:
    """Database migrations and Kafka topics: what every process expects to exist."""
    engine = create_engine(settings.database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    await ensure_topics(settings, Topics(settings.kafka_topic_prefix).all())


async def run_focus_sandbox(host: str, port: int, tokens: set[str], delay: float) -> None:
    from sandbox.focus import FocusSandboxConfig, serve_focus_sandbox

    config = FocusSandboxConfig(tokens=tokens, processing_delay=delay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(serve_focus_sandbox(config, host, port))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
