"""The notification consumer: e-mail and client webhooks for every change of a note.

- Lifecycle events: each outcome (autorizado, erro_autorizacao, cancelado) goes to the tenant's
  hooks (one JSON POST with the GET fields); `autorizado` and `cancelado` also e-mail the
  note's `tomador.email` (Focus does both).
- E-mail commands (`POST /v2/nfse/REF/email`, HubSoft's synchronous route) and hook re-fires.

Every delivery is a row keyed by (event id, recipient or hook): a redelivered record finds its
row and sends nothing twice. Failures are recorded per attempt and retried on a schedule by
`run_retries`, which survives restarts because the schedule lives in the database; a row is
locked while it is being attempted, so several replicas never send the same thing at once. The
lock is a short lease renewed while the attempt runs (`delivery_leases`): a process that dies
leaves its deliveries to the others a lease later.

As at Focus, a hook failing most deliveries for 7 days is disabled (`hook_is_failing`): judged
after each failed attempt; its pending deliveries are then given up without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from notaflow import topics as t
from notaflow import tracing
from notaflow.bus import Publisher
from notaflow.consumers.delivery_leases import DEFAULT_LEASE, LeaseLost, Leases
from notaflow.consumers.lifecycle_events import reply
from notaflow.consumers.mail_templates import (
    NfseLinks,
    format_cnpj,
    render_nfce_email,
    render_nfse_email,
)
from notaflow.consumers.providers.mailer import Mailer
from notaflow.consumers.providers.mailer_accounts import MailerByTenant
from notaflow.consumers.providers.webhooks import HookTarget, WebhookSender, next_attempt_delay
from notaflow.envelope import Event
from notaflow.errors import Permanent, Transient
from notaflow.focus_kinds import BY_EMAIL_TYPE, BY_HOOK_TYPE, BY_KIND
from notaflow.lifecycle import AUTHORIZED, CANCELLED, NFCE_DANFE, OUTCOMES, nfce_blob
from notaflow.metrics import Metrics
from notaflow.routing import Routes
from notaflow.store import (
    Delivery,
    DeliveryStore,
    Document,
    DocumentStore,
    HookStore,
    TenantStore,
)
from notaflow.store.deliveries import PENDING, SENT
from notaflow.store.hooks import Hook
from notaflow.store.tenants import TenantCache
from notaflow.views import nfse_view

log = logging.getLogger(__name__)
SOURCE = t.SOURCE_NOTIFICATION
EMAIL_KINDS = {AUTHORIZED: "autorizada", CANCELLED: "cancelada"}
# As at Focus, hooks fire when the prefeitura has spoken, not when a note enters processing
# (the client knows that already: it got the 202).
HOOK_STATUSES = OUTCOMES
# The statuses something is delivered for; `on_status` returns at once on any other.
DELIVERED = frozenset(HOOK_STATUSES) | frozenset(EMAIL_KINDS)
# SMTP "try again later" (4xx, outages) is retried sooner than Focus's hook schedule.
EMAIL_RETRY_SCHEDULE: tuple[float, ...] = (60, 300, 1800, 3600, 10800)


@dataclass(frozen=True)
class NotificationSettings:
    public_url: str
    hook_schedule: Sequence[float]
    email_schedule: Sequence[float] = EMAIL_RETRY_SCHEDULE
    retry_poll: float = 1.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    code: int | None
    message: str
    host: str
    at: datetime


class NotificationConsumer:
    def __init__(
        self,
        documents: DocumentStore,
        tenants: TenantStore,
        hooks: HookStore,
        deliveries: DeliveryStore,
        mailer: Mailer | MailerByTenant | None,
        webhooks: WebhookSender,
        bus: Publisher,
        topics: t.Topics,
        settings: NotificationSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        leases: Leases | None = None,
    ) -> None:
        self._metrics = metrics
        # What the hook health check judges "the last 7 days" by, and only that (tests pass
        # their own): the store stamps attempts with its clock, retries are due by the wall's.
        self._clock = clock
        self._docs = documents
        self._tenants = tenants
        # The issuer's name in every e-mail: a copy read a few seconds ago will do.
        self._tenant_names = TenantCache(tenants)
        self._hooks = hooks
        self._deliveries = deliveries
        # Renewed by whoever runs them (`Leases.run`: the process, beside `run_retries`).
        self._leases = leases or Leases(deliveries, DEFAULT_LEASE)
        # The tenant's own SMTP server where it has one (issue 15), else the global one.
        self._mailers = mailer if isinstance(mailer, MailerByTenant) else MailerByTenant(mailer)
        self._mailer = self._mailers.default
        self._webhooks = webhooks
        self._bus = bus
        self._topics = topics
        self._settings = settings
        # The domain of our Message-IDs (parsed once, not twice per e-mail).
        self._mail_domain = urlsplit(settings.public_url).hostname or "notaflow"

    def routes(self) -> Routes:
        """Every status on the lifecycle topic; e-mail and hook re-fire commands (both NFS-e
        kinds) on the command topic."""
        routes = Routes()
        for event_type in (t.NFSE_STATUS, t.NFCE_STATUS):
            # Only the statuses delivered: the runner skips the rest (half of a note's
            # lifecycle events) undecoded, by their `ce_status`.
            routes.add(self._topics.lifecycle, event_type, self.on_status, statuses=DELIVERED)
        for event_type in BY_EMAIL_TYPE:
            routes.add(self._topics.nfse_commands, event_type, self.on_email)
        for event_type in BY_HOOK_TYPE:
            routes.add(self._topics.nfse_commands, event_type, self.on_refire)
        return routes

    # -- what to deliver ---------------------------------------------------------------------

    async def on_status(self, event: Event) -> None:
        status = str(event.data.get("status"))
        if status not in DELIVERED:
            return  # `processando_autorizacao` and the like: nothing to deliver, nothing to read
        doc = await self._note(event.data)
        if doc is None:
            return
        view = {k: v for k, v in event.data.items() if k not in ("tenant", "kind", "id")}
        work: list[Coroutine[Any, Any, object]] = []
        if status in HOOK_STATUSES:
            work.append(self._fire_hooks(doc, view, event.id))
        kind = EMAIL_KINDS.get(status)
        # The NFS-e's tomador, the NFC-e's cliente: whoever the note was issued to.
        focus_kind = BY_KIND.get(doc.kind)
        if focus_kind is not None:
            address = focus_kind.tomador_email(doc.payload)
        else:
            address = (doc.payload.get("cliente") or {}).get("email")
        if kind and address:
            work.append(self._email(doc, [address], kind, view, event.id))
        await _all_of(work)

    async def on_email(self, event: Event) -> None:
        data = event.data
        kind = BY_EMAIL_TYPE[event.type].kind
        doc = await self._docs.get(str(data.get("tenant")), kind, str(data.get("ref")))
        if doc is None:
            return
        emails = [e for e in data.get("emails", []) if isinstance(e, str)]
        outcomes = await self._email(doc, emails, "copia", nfse_view(doc), event.id)
        if data.get("sync"):
            await reply(self._bus, self._topics, event, SOURCE, {"results": outcomes})

    async def on_refire(self, event: Event) -> None:
        data = event.data
        kind = BY_HOOK_TYPE[event.type].kind
        doc = await self._docs.get(str(data.get("tenant")), kind, str(data.get("ref")))
        if doc is not None:
            await self._fire_hooks(doc, nfse_view(doc), event.id)

    async def _note(self, data: dict[str, Any]) -> Document | None:
        """The note a lifecycle event is about. By its key, which goes through the store's
        group-batched reads, rather than by id, one SQLAlchemy statement each; the id decides
        (it is the same row unless the ref was somehow taken by another note since)."""
        document_id = int(data.get("id", 0))
        doc = await self._docs.get(
            str(data.get("tenant")), str(data.get("kind")), str(data.get("ref"))
        )
        if doc is not None and doc.id == document_id:
            return doc
        return await self._docs.by_id(document_id)

    async def _fire_hooks(self, doc: Document, view: dict[str, Any], event_id: str) -> None:
        # Hooks subscribe by document kind: Focus's `nfse` and `nfce` events.
        for hook in await self._hooks.matching(doc.tenant_id, doc.kind, doc.cnpj_prestador):
            delivery, ours = await self._deliveries.ensure_locked(
                doc.tenant_id, doc.id, "webhook", f"hook:{event_id}:{hook.id}", hook.id,
                {"body": view}, self._leases.lease,
            )  # fmt: skip
            # The hook as read a moment ago: its first attempt does not read it again.
            await self.attempt(delivery, locked=ours, doc=doc, hook=hook)

    async def _email(
        self, doc: Document, addresses: list[str], kind: str, view: dict[str, Any], event_id: str
    ) -> list[dict[str, Any]]:
        results = []
        for address in dict.fromkeys(addresses):
            delivery, ours = await self._deliveries.ensure_locked(
                doc.tenant_id, doc.id, "email", f"email:{event_id}:{address}", address,
                {"kind": kind, "view": view}, self._leases.lease,
            )  # fmt: skip
            outcome = await self.attempt(delivery, locked=ours, doc=doc)
            if outcome is None:  # a redelivery: answer what the first delivery did
                again = await self._deliveries.by_key(delivery.dedupe_key)
                delivery = again or delivery
                sent = delivery.status == SENT
                error = None if sent else (delivery.last_error or "envio em andamento")
                host = self._mailer.config.host if self._mailer else ""
                at = datetime.now(UTC)
            else:
                sent, host, at = outcome.ok, outcome.host, outcome.at
                error = None if outcome.ok else outcome.message
            results.append(
                {
                    "email": address,
                    "id": delivery.id,
                    "enviado": sent,
                    "mensagem_erro": error,
                    "host": host,
                    "data_envio": at.isoformat(),
                }
            )
        return results

    # -- delivering --------------------------------------------------------------------------

    async def attempt(
        self,
        delivery: Delivery,
        *,
        locked: bool = False,
        doc: Document | None = None,
        hook: Hook | None = None,
    ) -> Outcome | None:
        """One attempt at a pending delivery; None when it is not ours to attempt now.
        `locked`: the caller created the row locked (`ensure_locked`); `doc` and `hook`: the
        caller read them while handling this very record, so they are not read again (a
        note's first deliveries cost the database a few statements fewer)."""
        if delivery.status != PENDING:
            return None
        if not locked and not await self._deliveries.lock(delivery.id, self._leases.lease):
            return None
        try:
            async with self._leases.held(delivery.id):
                if delivery.channel == "webhook":
                    outcome, retry = await self._post(delivery, hook)
                    schedule = self._settings.hook_schedule
                else:
                    if doc is None or doc.id != delivery.document_id:
                        doc = await self._docs.by_id(delivery.document_id)
                    outcome, retry = await self._send_mail(delivery, doc)
                    schedule = self._settings.email_schedule
        except LeaseLost as exc:
            # Left pending, unrecorded: whoever takes it once the lease has run out tries again.
            log.warning("delivery %s (%s) stopped: %s", delivery.id, delivery.channel, exc)
            return None
        next_at = None
        if not outcome.ok and retry:
            delay = next_attempt_delay(delivery.attempts + 1, schedule)
            next_at = None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)
        await self._deliveries.record(
            delivery.id, outcome.ok, outcome.code, outcome.message, outcome.host, next_at
        )
        if self._metrics is not None:
            result = "retried" if next_at else ("failed" if not outcome.ok else "")
            if delivery.channel == "webhook":
                self._metrics.webhook_delivery(result or "delivered")
            else:
                self._metrics.email(result or "sent")
        if not outcome.ok:
            log.info(
                "delivery %s (%s) failed: %s; %s",
                delivery.id, delivery.channel, outcome.message,
                f"retry at {next_at.isoformat()}" if next_at else "giving up",
            )  # fmt: skip
            if delivery.channel == "webhook":
                await self._judge_hook(delivery.tenant_id, delivery.target)
        return outcome

    async def _judge_hook(self, tenant_id: str, hook_id: str) -> None:
        """After a failed attempt, the one that may tip the hook into failing."""
        try:
            disabled = await self._hooks.disable_if_failing(tenant_id, hook_id, self._clock())
        except Exception:
            # The attempt is recorded: failing here would redeliver the record and POST again.
            # The hook's next failed attempt judges it again.
            log.exception("health check of hook %s (tenant %s) failed", hook_id, tenant_id)
            return
        if disabled:
            log.warning(
                "hook %s of tenant %s disabled: it failed most of its deliveries for 7 days",
                hook_id, tenant_id,
            )  # fmt: skip
            if self._metrics is not None:
                self._metrics.hooks_disabled_total.inc()

    async def _post(self, delivery: Delivery, hook: Hook | None = None) -> tuple[Outcome, bool]:
        if hook is None or hook.id != delivery.target:
            hook = await self._hooks.get(delivery.tenant_id, delivery.target)
        now = datetime.now(UTC)
        if hook is None or hook.deleted:
            return Outcome(False, None, "gatilho removido", "", now), False
        if hook.disabled:  # given up like a deleted hook's: nothing is sent to a dead receiver
            return Outcome(False, None, "gatilho desativado", "", now), False
        target = HookTarget(
            url=hook.url,
            signing_secret=hook.signing_secret,
            authorization=hook.authorization,
            authorization_header=hook.authorization_header,
        )
        span = tracing.client_span(
            "POST", hook.url, **{"peer.service": "webhook", "notaflow.hook.id": hook.id}
        )
        with span as current:
            result = await self._webhooks.deliver(
                target, delivery.payload["body"], f"msg_nf{delivery.id}", int(time.time())
            )
            if current is not None and result.status_code is not None:
                current.set_attribute("http.response.status_code", result.status_code)
        host = _host(hook.url)
        message = "ok" if result.ok else (result.error or f"HTTP {result.status_code}")
        return Outcome(result.ok, result.status_code, message, host, now), result.retryable

    async def _send_mail(self, delivery: Delivery, doc: Document | None) -> tuple[Outcome, bool]:
        now = datetime.now(UTC)
        if doc is None:
            why = "nenhum servidor SMTP configurado" if self._mailer is None else None
            return Outcome(False, None, why or "nota não encontrada", "", now), False
        try:
            mailer = await self._mailers.mailer(doc.tenant_id, doc.cnpj_prestador)
        except Permanent as exc:  # the tenant's SMTP account is disabled
            return Outcome(False, None, str(exc), "", now), False
        if mailer is None:
            return Outcome(False, None, "nenhum servidor SMTP configurado", "", now), False
        host = mailer.config.host
        if doc.kind == "nfce":
            blob = await self._docs.get_blob(nfce_blob(doc.id, NFCE_DANFE))
            message = render_nfce_email(
                delivery.payload["kind"],
                delivery.payload["view"],
                doc.payload,
                issuer_name=await self._issuer(doc),
                sender=mailer.config.from_header,
                recipients=[delivery.target],
                message_id_domain=self._mail_domain,
                danfe=blob[1] if blob else None,
                message_id=f"<nf{delivery.id}@{self._mail_domain}>",
            )
            return await self._deliver_mail(mailer, message, delivery, host, now)
        message = render_nfse_email(
            delivery.payload["kind"],
            delivery.payload["view"],
            BY_KIND[doc.kind].mail_document(doc.payload) if doc.kind in BY_KIND else doc.payload,
            self._links(delivery.payload["view"]),
            issuer_name=await self._issuer(doc),
            sender=mailer.config.from_header,
            recipients=[delivery.target],
            message_id_domain=self._mail_domain,
            # Stable across retries, so a receiver can tell a resend from a new message.
            message_id=f"<nf{delivery.id}@{self._mail_domain}>",
        )
        return await self._deliver_mail(mailer, message, delivery, host, now)

    async def _deliver_mail(
        self, mailer: Mailer, message: Message, delivery: Delivery, host: str, now: datetime
    ) -> tuple[Outcome, bool]:
        try:
            smtp: dict[str, Any] = {"server.address": host, "peer.service": "smtp"}
            with tracing.span("smtp send", kind=SpanKind.CLIENT, **smtp):
                [result] = await mailer.send(message, [delivery.target])
        except (Permanent, Transient) as exc:
            return Outcome(False, None, str(exc), host, now), not isinstance(exc, Permanent)
        text = (
            result.message
            if result.accepted or result.code is None
            else (f"{result.code} {result.message}")
        )
        return Outcome(result.accepted, result.code, text, result.host, now), result.transient

    async def _issuer(self, doc: Document) -> str:
        # The NFS-e request names the prestador only by CNPJ; the tenant is who clients know.
        tenant = await self._tenant_names.get(doc.tenant_id)
        return tenant.name if tenant else f"CNPJ {format_cnpj(doc.cnpj_prestador)}"

    def _links(self, view: dict[str, Any]) -> NfseLinks:
        xml = view.get("caminho_xml_nota_fiscal")
        return NfseLinks(
            espelho_url=str(view.get("url") or ""),
            xml_url=f"{self._settings.public_url.rstrip('/')}{xml}" if xml else "",
            danfse_url=view.get("url_danfse"),
        )

    # -- retries -----------------------------------------------------------------------------

    async def run_retries(self, stop: asyncio.Event) -> None:
        """Attempt due deliveries until `stop` is set."""
        while not stop.is_set():
            try:
                for delivery in await self._deliveries.due():
                    if stop.is_set():
                        break
                    await self.attempt(delivery)
            except Exception:
                log.exception("retry pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.retry_poll)


@functools.lru_cache(maxsize=4096)  # a hook's URL, delivery after delivery
def _host(url: str) -> str:
    """The host an attempt's record names."""
    return urlsplit(url).hostname or ""


async def _all_of(work: Sequence[Coroutine[Any, Any, object]]) -> None:
    """Run `work` side by side: a note's hooks and its e-mail are apart, so a slow hook
    receiver (up to its timeout) does not hold the tomador's e-mail back, nor the SMTP server
    the hooks; and their delivery rows go in the same batch. Each runs to its end even when
    another fails (none is left half done under a record that will be retried); then the
    first failure is raised, and the retry finds what was delivered in its rows."""
    if len(work) == 1:
        await work[0]
        return
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
