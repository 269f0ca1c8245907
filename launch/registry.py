"""The consumers notaflow ships: `{name: builder}`, the one place their names exist.

The CLI (`notaflow consume <name>` choices), the dev stack (which consumers it starts) and the
Helm chart (values.schema.json's `consumers` keys and each consumer's `topics` in values.yaml,
checked by tests/unit/launch and tests/helm) all read `CONSUMERS`.

A builder gets the resources every consumer process shares (`Resources`, made once by
`processes.run_consumer`) and returns what the runner needs: a handler per topic read and the
number of records in flight. The clients a builder opens are closed through
`Resources.closing` after the runner has stopped. The consumers are imported inside the
builders, so the CLI builds its parser, and the ingress starts, without loading them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from notaflow import topics as t
from notaflow.routing import Routes
from notaflow.settings import Settings
from notaflow.topics import Topics

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from notaflow.accounts import AccountResolver
    from notaflow.bus import Bus
    from notaflow.consumers.providers.emites import EmitesClient
    from notaflow.consumers.providers.emites_accounts import EmitesByCompany
    from notaflow.consumers.providers.focus import FocusClient
    from notaflow.consumers.providers.mailer import Mailer
    from notaflow.metrics import Metrics
    from notaflow.store import DocumentStore

# Seconds the notification consumer keeps an idle SMTP connection for its next send.
SMTP_KEEP_ALIVE = 10.0


@dataclass(frozen=True)
class Resources:
    """What every consumer process has, made once and handed to its builder."""

    settings: Settings
    topics: Topics
    engine: AsyncEngine
    documents: DocumentStore
    metrics: Metrics
    bus: Bus
    # Closed (last registered, first closed) once the runner has stopped and `stopping` is set.
    closing: contextlib.AsyncExitStack
    # Set on SIGTERM/SIGINT and at exit: the consumers' background loops end on it.
    stopping: asyncio.Event


@dataclass(frozen=True)
class Wired:
    """A consumer ready to run: its handlers by (topic, event type); the runner subscribes to
    the routes' topics and calls each handler with the decoded event."""

    routes: Routes
    # Records the runner keeps in flight (provider_window or plain_window: why two sizes).
    window: int
    # Called on SIGTERM/SIGINT beside the runner's own stop.
    on_stop: tuple[Callable[[], None], ...] = field(default=())
    # Records of one tenant (and topic) running at most (consumers.fairness; None: no cap),
    # and a tenant's provider credits per second for the `/backlog` view's drain estimate.
    tenant_cap: int | None = None
    credit_rate: Callable[[str], float | None] | None = None
    # A (tenant, topic) queue's own cap below tenant_cap: what the tenant's credits pay for.
    slot_cap: Callable[[tuple[str, str]], int | None] | None = None


@dataclass(frozen=True)
class Builder:
    """How one consumer is made: the topics it reads (a function of the topic names, so the
    chart's values can be checked against it without building anything) and its wiring."""

    topics: Callable[[Topics], tuple[str, ...]]
    build: Callable[[Resources], Wired]


def provider_window(settings: Settings) -> int:
    """Emission and cancellation call Focus, whose client holds the calls in flight to the
    concurrency limit by itself, so their window is wider: a record takes a call slot only for
    the call, and its database reads and writes and its lifecycle event happen while other
    records' calls are out."""
    return settings.consumer_window or 4 * settings.consumer_concurrency


def plain_window(settings: Settings) -> int:
    """The other consumers' work (SMTP, webhooks, the database) has no limit of its own, so
    their window is the limit."""
    return settings.consumer_window or settings.consumer_concurrency


# -- the clients builders share ----------------------------------------------------------------


def focus_client(res: Resources) -> FocusClient:
    from notaflow.consumers.providers.focus import FocusClient

    s = res.settings
    focus = FocusClient(
        s.focus_base_url,
        s.focus_token,
        s.focus_timeout,
        metrics=res.metrics,
        max_in_flight=s.consumer_concurrency,
    )
    res.closing.push_async_callback(focus.aclose)
    return focus


def focus_slot_cap(
    focus: FocusClient, topics: tuple[str, ...]
) -> Callable[[tuple[str, str]], int | None]:
    """The cap of a tenant's queue of these topics (the ones whose records call Focus): the
    records its token's credits pay for in a few seconds (`consumers.fairness.credit_cap`).
    NFC-e commands (Emites-Client, no credits) keep only the tenant cap."""
    from notaflow.consumers.fairness import credit_cap

    def cap(slot: tuple[str, str]) -> int | None:
        tenant, topic = slot
        return credit_cap(focus.tenant_rate(tenant)) if topic in topics else None

    return cap


def accounts(res: Resources) -> AccountResolver:
    """Provider accounts per company (issue 15): the credentials of a tenant's CNPJ, the global
    settings where it has none."""
    from notaflow.store.accounts import account_resolver

    return account_resolver(res.engine, res.settings)


def emites_by_company(res: Resources, default_cnpj: str | None) -> EmitesByCompany:
    """Every NFC-e shop by its own Emites account; the global endpoint serves EMITES_CNPJ
    (`default_cnpj` None: any company, for work on notes already accepted for one)."""
    from notaflow.consumers.providers.emites_accounts import EmitesByCompany

    by_company = EmitesByCompany(emites_client(res), default_cnpj, accounts(res))
    res.closing.push_async_callback(by_company.aclose)
    return by_company


def emites_client(res: Resources) -> EmitesClient | None:
    """The NFC-e provider's client, when an emitter CNPJ is configured."""
    from notaflow.consumers.providers.emites import EmitesClient

    s = res.settings
    if not s.emites_cnpj:
        return None
    emites = EmitesClient(
        s.emites_host, s.emites_port, pool_size=s.emites_pool, request_timeout=s.emites_timeout
    )
    res.closing.push_async_callback(emites.aclose)
    return emites


def mailer(res: Resources) -> Mailer | None:
    """The SMTP client, when a server is configured."""
    from notaflow.consumers.providers.mailer import Mailer, SmtpConfig

    s = res.settings
    if not s.smtp_host:
        return None
    smtp = Mailer(
        SmtpConfig(
            host=s.smtp_host,
            port=s.smtp_port,
            security=s.smtp_security,  # type: ignore[arg-type]
            username=s.smtp_username or None,
            password=s.smtp_password or None,
            timeout=s.smtp_timeout,
            sender_address=s.smtp_sender,
            sender_name=s.smtp_sender_name,
            pause_between_sends=s.smtp_pause,
            connections=s.smtp_connections,
            pipelining=s.smtp_pipelining,
            local_hostname="notaflow",
            # A connection kept for the next send saves the handshake, EHLO and QUIT of every
            # e-mail.
            keep_alive=SMTP_KEEP_ALIVE,
        )
    )
    res.closing.push_async_callback(smtp.aclose)
    return smtp


# -- the builders ------------------------------------------------------------------------------


def emission_topics(topics: Topics) -> tuple[str, ...]:
    return (topics.nfse_commands, topics.nfce_commands, topics.provider_events)


def build_emission(res: Resources) -> Wired:
    from notaflow.consumers.emission import EmissionConsumer
    from notaflow.consumers.fairness import tenant_cap
    from notaflow.consumers.nfce import NfceEmitter
    from notaflow.store import TenantStore

    tenants = TenantStore(res.engine)
    focus = focus_client(res)
    emites = emites_by_company(res, res.settings.emites_cnpj)
    nfce = NfceEmitter(
        res.documents, tenants, emites, res.bus, res.topics, res.settings.emites_cnpj,
        t.SOURCE_EMISSION,
    )  # fmt: skip
    emission = EmissionConsumer(
        res.documents, tenants, focus, res.bus, res.topics, nfce, accounts(res).focus
    )
    return Wired(
        emission.routes(),
        provider_window(res.settings),
        # Records still waiting for a call slot are left for redelivery.
        on_stop=(focus.stop_calls,),
        # Waiting for its company's credits, a tenant holds at most this much of the window.
        tenant_cap=tenant_cap(provider_window(res.settings)),
        credit_rate=focus.tenant_rate,
        slot_cap=focus_slot_cap(focus, (res.topics.nfse_commands, res.topics.provider_events)),
    )


def cancellation_topics(topics: Topics) -> tuple[str, ...]:
    return (topics.nfse_commands, topics.nfce_commands)


def build_cancellation(res: Resources) -> Wired:
    from notaflow.consumers.cancellation import CancellationConsumer
    from notaflow.consumers.fairness import tenant_cap
    from notaflow.consumers.nfce import NfceCanceller

    focus = focus_client(res)
    nfce = NfceCanceller(
        res.documents, emites_by_company(res, None), res.bus, res.topics, t.SOURCE_CANCELLATION
    )
    cancellation = CancellationConsumer(
        res.documents, focus, res.bus, res.topics, nfce, accounts(res).focus
    )
    return Wired(
        cancellation.routes(),
        provider_window(res.settings),
        on_stop=(focus.stop_calls,),
        tenant_cap=tenant_cap(provider_window(res.settings)),
        credit_rate=focus.tenant_rate,
        slot_cap=focus_slot_cap(focus, (res.topics.nfse_commands, res.topics.provider_events)),
    )


def notification_topics(topics: Topics) -> tuple[str, ...]:
    return (topics.lifecycle, topics.nfse_commands, topics.billing_commands)


def build_notification(res: Resources) -> Wired:
    """E-mails and webhooks of the documents, and the invoice e-mails of billing (one SMTP
    client for both)."""
    from notaflow.consumers.billing.mail import BillingMailer
    from notaflow.consumers.delivery_leases import Leases
    from notaflow.consumers.notification import NotificationConsumer, NotificationSettings
    from notaflow.consumers.providers.mailer import SmtpConfig
    from notaflow.consumers.providers.mailer_accounts import MailerByTenant
    from notaflow.consumers.providers.webhooks import WebhookSender
    from notaflow.store import DeliveryStore, HookStore, TenantStore
    from notaflow.store.invoices import BillingConfigStore, InvoiceDeliveryStore, InvoiceStore

    s, engine = res.settings, res.engine
    webhooks = WebhookSender(allow_private=s.hooks_allow_private, timeout=s.hooks_timeout)
    res.closing.push_async_callback(webhooks.aclose)
    smtp = mailer(res)
    # A tenant's own SMTP server where it has an account, paced and kept alive as ours.
    by_tenant = MailerByTenant(
        smtp,
        accounts(res),
        SmtpConfig(
            host=s.smtp_host,
            sender_address=s.smtp_sender,
            pause_between_sends=s.smtp_pause,
            connections=s.smtp_connections,
            pipelining=s.smtp_pipelining,
            local_hostname="notaflow",
            keep_alive=SMTP_KEEP_ALIVE,
        ),
    )
    res.closing.push_async_callback(by_tenant.aclose)
    # The stores' batches keep SQLite connections of their own: closed with the process.
    deliveries, hooks = DeliveryStore(engine), HookStore(engine)
    res.closing.callback(deliveries.close)
    res.closing.callback(hooks.close)
    # One set of delivery leases for the NFS-e and NFC-e deliveries and the invoice e-mails
    # (one table), renewed by one loop.
    leases = Leases(deliveries, s.delivery_lease)
    notification = NotificationConsumer(
        res.documents,
        TenantStore(engine),
        hooks,
        deliveries,
        by_tenant,
        webhooks,
        res.bus,
        res.topics,
        NotificationSettings(
            public_url=s.public_url,
            hook_schedule=tuple(float(x) for x in s.hooks_retry_schedule.split(",") if x.strip()),
        ),
        res.metrics,
        leases=leases,
    )
    invoices = BillingMailer(
        engine,
        InvoiceStore(engine),
        BillingConfigStore(engine),
        InvoiceDeliveryStore(engine),
        smtp,
        s.public_url,
        leases,
    )
    # Cancelled last (the stack closes in reverse): the runner's and the retry pass's attempts
    # keep their leases to their end.
    res.closing.push_async_callback(_cancel, asyncio.create_task(leases.run()))
    retries = asyncio.create_task(notification.run_retries(res.stopping))
    # Registered after the clients, so the loop has ended before they close; whatever unwinds
    # the stack (a stop, or a failure before the runner started) ends the loop first.
    res.closing.push_async_callback(_end, retries, res.stopping)
    return Wired(notification.routes().include(invoices.routes(res.topics)), plain_window(s))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _end(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    stopping.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def billing_topics(topics: Topics) -> tuple[str, ...]:
    return (topics.billing_events,)


def build_billing(res: Resources) -> Wired:
    from notaflow.consumers.billing.events import BillingEvents
    from notaflow.store.invoices import InvoiceStore

    events = BillingEvents(InvoiceStore(res.engine))
    return Wired(events.routes(res.topics), plain_window(res.settings))


CONSUMERS: dict[str, Builder] = {
    "emission": Builder(emission_topics, build_emission),
    "cancellation": Builder(cancellation_topics, build_cancellation),
    "notification": Builder(notification_topics, build_notification),
    "billing": Builder(billing_topics, build_billing),
}
