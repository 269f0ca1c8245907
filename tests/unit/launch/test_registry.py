"""The consumer registry (launch/registry.py) is the one place consumer names exist: the CLI,
the dev stack and the Helm chart agree with it, and each builder wires exactly the topics the
registry declares for it (built here with real objects that open no socket)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.launch import devstack
from notaflow.launch.cli import _parser
from notaflow.launch.registry import CONSUMERS, Resources, Wired
from notaflow.metrics import Metrics
from notaflow.settings import Settings
from notaflow.store import DocumentStore, create_engine, migrate
from notaflow.topics import Topics

CHART = Path(__file__).resolve().parents[3] / "helm" / "notaflow"


def consume_choices() -> list[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    consume = sub.choices["consume"]
    return list(next(a for a in consume._actions if a.dest == "name").choices)


def test_the_cli_offers_the_registered_consumers() -> None:
    assert consume_choices() == list(CONSUMERS)
    with pytest.raises(SystemExit):
        _parser().parse_args(["consume", "audit-log"])


def test_the_dev_stack_starts_every_registered_consumer_as_the_cli_parses_it() -> None:
    commands = devstack.consumer_commands()
    assert [name for name, _ in commands] == [f"consumer-{n}" for n in CONSUMERS]
    parsed = [_parser().parse_args(args) for _, args in commands]
    assert [(a.command, a.name) for a in parsed] == [("consume", n) for n in CONSUMERS]


def test_the_chart_knows_the_registered_consumers_and_their_topics() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["consumers"]["propertyNames"]["enum"] == list(CONSUMERS)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["consumers"]
    assert list(values) == list(CONSUMERS)
    # The chart's topics (KEDA's lag triggers) are the ones the consumer reads, unprefixed.
    unprefixed = Topics("")
    for name, builder in CONSUMERS.items():
        assert tuple(values[name]["topics"]) == builder.topics(unprefixed), name


def make_resources(
    tmp_path: Path, closing: contextlib.AsyncExitStack, stopping: asyncio.Event
) -> Resources:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        emites_cnpj="51916585000125",  # the NFC-e clients are built too
        smtp_host="127.0.0.1",
        consumer_concurrency=7,
    )
    engine = create_engine(settings.database_url)
    documents = DocumentStore(engine)
    metrics = Metrics(CollectorRegistry())
    closing.push_async_callback(engine.dispose)
    closing.callback(documents.close)
    bus = Bus(settings, metrics)  # never started: building publishes nothing
    return Resources(settings, Topics("t."), engine, documents, metrics, bus, closing, stopping)


@pytest.fixture
async def resources(tmp_path: Path) -> Any:
    stopping = asyncio.Event()
    stopping.set()  # the notification consumer's retry loop ends before its first pass
    async with contextlib.AsyncExitStack() as closing:
        yield make_resources(tmp_path, closing, stopping)


@pytest.mark.parametrize("name", list(CONSUMERS))
async def test_each_builder_handles_exactly_its_declared_topics(
    name: str, resources: Resources
) -> None:
    builder = CONSUMERS[name]
    wired = builder.build(resources)
    assert isinstance(wired, Wired)
    assert tuple(wired.routes.topics()) == builder.topics(resources.topics)
    focus_consumer = name in ("emission", "cancellation")
    assert wired.window == (28 if focus_consumer else 7)
    assert len(wired.on_stop) == (1 if focus_consumer else 0)


async def test_the_notification_consumer_hands_invoice_mails_to_the_billing_mailer(
    resources: Resources,
) -> None:
    wired = CONSUMERS["notification"].build(resources)
    mails = wired.routes.find("t.billing.commands", t.INVOICE_MAIL)
    assert type(mails.__self__).__name__ == "BillingMailer"  # type: ignore[union-attr]
    status = wired.routes.find("t.lifecycle", t.NFSE_STATUS)
    assert type(status.__self__).__name__ == "NotificationConsumer"  # type: ignore[union-attr]


def test_the_window_setting_overrides_both_defaults(tmp_path: Path) -> None:
    from notaflow.launch.registry import plain_window, provider_window

    s = Settings(consumer_concurrency=5)
    assert (provider_window(s), plain_window(s)) == (20, 5)
    s = s.replace(consumer_window=9)
    assert (provider_window(s), plain_window(s)) == (9, 9)


async def test_unwinding_the_exit_stack_ends_the_background_loop_first(tmp_path: Path) -> None:
    # As when the health server cannot start: nothing set `stopping`, and the stack unwinds.
    stopping = asyncio.Event()

    async def build_and_unwind() -> None:
        async with contextlib.AsyncExitStack() as closing:
            res = make_resources(tmp_path, closing, stopping)
            await migrate(res.engine)
            CONSUMERS["notification"].build(res)
            await asyncio.sleep(0.05)  # the retry loop is past its first pass, waiting

    await asyncio.wait_for(build_and_unwind(), 10)  # a loop left running would hang here
    assert stopping.is_set()
