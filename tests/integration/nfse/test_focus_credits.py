"""Focus credits per token against the sandbox over loopback (issue 15): each company's token
has its own window, a spent window holds only that token's calls (no 429 sent into it), the
credits are counted per tenant and operation, and a token Focus refuses (403) ends the note in
a final error naming the credential, counted, while another company's note goes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from notaflow import topics as t
from notaflow.accounts import AccountDisabled, Environment, FocusCredentials, Provider
from notaflow.bus import Bus, ensure_topics
from notaflow.consumers.emission import ACCOUNT_DISABLED, CREDENTIAL_ERROR, EmissionConsumer
from notaflow.consumers.providers.focus import CredentialRefused, FocusClient
from notaflow.consumers.providers.rate_windows import RateWindows
from notaflow.consumers.reconciler import Reconciler
from notaflow.envelope import Event
from notaflow.lifecycle import ERROR, PROCESSING
from notaflow.metrics import Metrics
from notaflow.nfse import normalize_nfse
from notaflow.sandbox.focus import FocusSandboxConfig, create_focus_sandbox
from notaflow.settings import Settings
from notaflow.store import DocumentStore, TenantStore, create_engine, migrate
from tests.integration.sandbox.test_focus_sandbox import CNPJ, nfse, serving

LIMIT = 5


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_each_token_waits_for_its_own_window_without_429() -> None:
    # The sandbox's minute ends half a second after the test starts, and it allows 5 a minute.
    started = time.time()
    config = FocusSandboxConfig(
        tokens={"tok-a", "tok-b"},
        processing_delay=30.0,
        rate_limit_per_minute=LIMIT,
        clock=lambda: 59.5 + (time.time() - started),
    )
    metrics = Metrics(CollectorRegistry())
    app = create_focus_sandbox(config)
    async with serving(app) as url:
        # Unpaced: the sandbox's scaled "minute" is half a second, then a real minute.
        focus = FocusClient(
            url, "tok-default", 5, metrics=metrics, max_in_flight=2, windows=RateWindows(pace=False)
        )
        try:
            t0 = time.monotonic()
            done: dict[str, float] = {}

            async def emit(token: str, tenant: str, ref: str) -> None:
                reply = await focus.emit_nfse(ref, nfse(), token=token, tenant=tenant)
                assert reply.status_code == 202, reply.body
                done[ref] = time.monotonic() - t0

            # 8 for company A (3 past its window), 2 for company B (well within its own).
            await asyncio.gather(
                *(emit("tok-a", "alpha", f"a{i}") for i in range(8)),
                *(emit("tok-b", "beta", f"b{i}") for i in range(2)),
            )
        finally:
            await focus.aclose()
        async with httpx.AsyncClient(base_url=url) as api:
            requests = (await api.get("/_sandbox/requests")).json()
    statuses = [r["status"] for r in requests]
    assert statuses.count(429) == 0, statuses
    assert len(statuses) == 10
    a_late = sorted(done[f"a{i}"] for i in range(8))[LIMIT:]
    assert min(a_late) >= 0.4  # the next minute
    assert max(done["b0"], done["b1"]) < min(a_late)  # B never waited for A's window
    assert sample(metrics, "notaflow_focus_credits_total", tenant="alpha", operation="emit") == 8
    assert sample(metrics, "notaflow_focus_credits_total", tenant="beta", operation="emit") == 2


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Any]:
    e = create_engine(database_url)
    await migrate(e)
    yield e
    await e.dispose()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    await ensure_topics(settings, t.Topics(settings.kafka_topic_prefix).all())
    b = Bus(settings)
    await b.start()
    await b.wait_connected(10)
    yield b
    await b.stop()


async def test_a_refused_token_ends_the_note_naming_the_credential(
    engine: Any, bus: Bus, settings: Settings
) -> None:
    documents, tenants = DocumentStore(engine), TenantStore(engine)
    await tenants.create("alpha", "Alpha", [CNPJ])
    await tenants.create("beta", "Beta", [CNPJ])
    tokens = {"alpha": "tok-revoked", "beta": "tok-good"}

    metrics = Metrics(CollectorRegistry())
    config = FocusSandboxConfig(tokens={"tok-good"}, processing_delay=30.0)
    topics = t.Topics(settings.kafka_topic_prefix)
    async with serving(create_focus_sandbox(config)) as url:
        # Each company's account: its own token, on the environment's base URL.
        async def token_for(tenant: str, cnpj: str) -> FocusCredentials:
            return FocusCredentials(tokens[tenant], Environment.HOMOLOGACAO, url)

        focus = FocusClient(url, "tok-default", 5, metrics=metrics)
        consumer = EmissionConsumer(documents, tenants, focus, bus, topics, focus_token=token_for)
        try:
            for tenant in ("alpha", "beta"):
                document = normalize_nfse(nfse())
                await documents.claim(tenant, "nfse", "r1", CNPJ, document, f"cmd-{tenant}", "t")
                event = Event(
                    type=t.NFSE_EMIT,
                    source="test",
                    data={"tenant": tenant, "ref": "r1", "nfse": document},
                    id=f"cmd-{tenant}",
                    tenant=tenant,
                )
                await consumer.emit(event)  # no exception: nothing to retry, nothing to DLQ
        finally:
            await focus.aclose()
        async with httpx.AsyncClient(base_url=url) as api:
            posts = (await api.get("/_sandbox/requests")).json()
    refused = await documents.get("alpha", "nfse", "r1")
    accepted = await documents.get("beta", "nfse", "r1")
    assert refused is not None and accepted is not None
    assert refused.status == ERROR
    assert refused.erros is not None and refused.erros[0]["codigo"] == CREDENTIAL_ERROR
    assert "credencial" in refused.erros[0]["mensagem"] and CNPJ in refused.erros[0]["mensagem"]
    assert accepted.status == PROCESSING and accepted.submitted_at is not None
    assert [p["status"] for p in posts] == [403, 202]  # one POST each: no retry storm
    assert sample(metrics, "notaflow_focus_credential_errors_total", tenant="alpha") == 1
    assert sample(metrics, "notaflow_focus_credential_errors_total", tenant="beta") == 0
    documents.close()


async def test_the_client_raises_credential_refused_with_the_status() -> None:
    config = FocusSandboxConfig(tokens={"tok-good"})
    async with serving(create_focus_sandbox(config)) as url:
        focus = FocusClient(url, "tok-good", 5)
        try:
            with pytest.raises(CredentialRefused) as info:
                await focus.get_nfse("x", token="tok-unknown")
        finally:
            await focus.aclose()
    assert info.value.status == 403 and not info.value.retriable


async def test_an_account_disabled_after_the_door_ends_the_note_without_a_call(
    engine: Any, bus: Bus, settings: Settings
) -> None:
    # Accepted while the account was enabled, disabled before the emission consumer took it:
    # a final error naming the account, no POST with anyone's token, nothing to retry.
    documents, tenants = DocumentStore(engine), TenantStore(engine)
    await tenants.create("gamma", "Gamma", [CNPJ])

    async def disabled(tenant: str, cnpj: str) -> FocusCredentials:
        raise AccountDisabled(tenant, cnpj, Provider.FOCUS)

    config = FocusSandboxConfig(tokens={"tok-default"})
    topics = t.Topics(settings.kafka_topic_prefix)
    async with serving(create_focus_sandbox(config)) as url:
        focus = FocusClient(url, "tok-default", 5)
        consumer = EmissionConsumer(documents, tenants, focus, bus, topics, focus_token=disabled)
        try:
            document = normalize_nfse(nfse())
            await documents.claim("gamma", "nfse", "r1", CNPJ, document, "cmd-g", "t")
            event = Event(
                type=t.NFSE_EMIT,
                source="test",
                data={"tenant": "gamma", "ref": "r1", "nfse": document},
                id="cmd-g",
                tenant="gamma",
            )
            await consumer.emit(event)  # no exception: nothing to retry, nothing to DLQ
            await consumer.emit(event)  # redelivered: still nothing sent
        finally:
            await focus.aclose()
        async with httpx.AsyncClient(base_url=url) as api:
            posts = (await api.get("/_sandbox/requests")).json()
    note = await documents.get("gamma", "nfse", "r1")
    assert note is not None and note.status == ERROR
    assert note.erros is not None and note.erros[0]["codigo"] == ACCOUNT_DISABLED
    assert CNPJ in note.erros[0]["mensagem"] and "desabilitada" in note.erros[0]["mensagem"]
    assert posts == []
    documents.close()


async def test_the_reconciler_reports_a_disabled_company_and_goes_on(
    engine: Any, bus: Bus, settings: Settings
) -> None:
    # Two notes stuck in processing: the first company's account was disabled since, the
    # second's is fine. The run reports the first and still asks Focus about the second.
    documents, tenants = DocumentStore(engine), TenantStore(engine)
    for tenant in ("off", "on"):
        await tenants.create(tenant, tenant, [CNPJ])
        await documents.claim(
            tenant, "nfse", "r1", CNPJ, normalize_nfse(nfse()), f"c-{tenant}", "t"
        )
        doc = await documents.get(tenant, "nfse", "r1")
        assert doc is not None
        await documents.mark_submitted(doc.id, doc.attempt, f"ref-{tenant}")
    async with serving(create_focus_sandbox(FocusSandboxConfig(tokens={"tok-on"}))) as url:

        async def accounts(tenant: str, cnpj: str) -> FocusCredentials:
            if tenant == "off":
                raise AccountDisabled(tenant, cnpj, Provider.FOCUS)
            return FocusCredentials("tok-on", Environment.HOMOLOGACAO, url)

        focus = FocusClient(url, "tok-default", 5)
        topics = t.Topics(settings.kafka_topic_prefix)
        try:
            report = await Reconciler(documents, focus, bus, topics, accounts).run_once(-60, 10)
        finally:
            await focus.aclose()
    assert report.examined == 2
    assert len(report.failed) == 1 and report.failed[0].startswith("off/r1")
    # The other company's note was asked about with its own token (a refused token is a
    # failure too): Focus does not know its ref, so it is sent again.
    assert report.resubmitted == 1
    documents.close()
