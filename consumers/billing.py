"""Billing consumers and the dunning job.

- `BillingEvents` (consumer `billing`, topic billing.events): applies invoice events to the
  read model; one invoice's events share a key, so they arrive in order per partition, and the
  precedence rules of `notaflow.billing` make reordering across producers and duplicates
  harmless. An invalid event is a PermanentFailure (dead-letter topic).
- `BillingMailer` (run by the notification consumer, topic billing.commands): sends an
  already-rendered invoice e-mail, with the invoice PDF attached on request, once per command:
  the delivery row keyed by the command id is found again on redelivery.
- `DunningJob` (`notaflow dunning`, one-shot): reminders for invoices past due at the tenant's
  steps; each (invoice, step) is claimed by a unique row before its command is published, so
  concurrent replicas and repeated runs send each step once.
"""

from __future__ import annotations

import logging
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from notaflow import billing as b
from notaflow import schemas
from notaflow.bus import Publisher
from notaflow.consumers.errors import ConsumerError, PermanentFailure, TransientFailure
from notaflow.consumers.providers.mailer import Mailer
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument
from notaflow.invoice_pdf import render_invoice_pdf
from notaflow.routing import Routes
from notaflow.store.deliveries import PENDING
from notaflow.store.invoices import (
    BillingConfigStore,
    DunningStore,
    Invoice,
    InvoiceDeliveryStore,
    InvoiceStore,
    compose_mail,
    issuer_for,
)
from notaflow.topics import Topics

log = logging.getLogger(__name__)
SOURCE = "notaflow/consumers/billing"
LOCK_SECONDS = 120.0


class BillingEvents:
    def __init__(self, invoices: InvoiceStore) -> None:
        self._invoices = invoices

    def routes(self, topics: Topics) -> Routes:
        return Routes().add(topics.billing_events, b.INVOICE_EVENT, self.apply)

    async def apply(self, event: Event) -> None:
        tenant = str(event.data.get("tenant") or event.tenant)
        if not tenant:
            raise PermanentFailure("invoice event without tenant")
        try:
            invoice_event = b.normalize_event(event.data)
        except InvalidDocument as exc:
            raise PermanentFailure(f"invalid invoice event: {exc.message}") from exc
        applied = await self._invoices.apply(tenant, invoice_event)
        log.debug("invoice %s/%s event %s applied=%s", tenant, invoice_event.uid,
                  invoice_event.event_id, applied)  # fmt: skip


class BillingMailer:
    def __init__(
        self,
        engine: Any,
        invoices: InvoiceStore,
        config: BillingConfigStore,
        deliveries: InvoiceDeliveryStore,
        mailer: Mailer | None,
        public_url: str,
    ) -> None:
        self._engine = engine
        self._invoices = invoices
        self._config = config
        self._deliveries = deliveries
        self._mailer = mailer
        self._domain = urlsplit(public_url).hostname or "notaflow"

    def routes(self, topics: Topics) -> Routes:
        return Routes().add(topics.billing_commands, b.INVOICE_MAIL, self.send)

    async def send(self, event: Event) -> None:
        data = event.data
        for error in schemas.validator("invoice_mail_command").iter_errors(data):
            raise PermanentFailure(f"invalid invoice mail command: {error.message}")
        invoice = await self._invoices.get(data["tenant"], data["uid"])
        if invoice is None:
            raise PermanentFailure(f"invoice {data['tenant']}/{data['uid']} not found")
        delivery = await self._deliveries.hold(
            invoice.tenant_id, invoice.id, f"invoice-mail:{event.id}", data["to"], data
        )
        if delivery.status != PENDING or not await self._deliveries.lock(delivery.id, LOCK_SECONDS):
            return  # sent (or given up) already, or another replica has it now
        if self._mailer is None:
            await self._deliveries.record(delivery.id, False, None, "no SMTP server", "", None)
            raise PermanentFailure("no SMTP server configured")
        message = await self._message(invoice, data, delivery.id)
        try:
            results = await self._mailer.send(message)
        except ConsumerError as exc:
            await self._deliveries.record(delivery.id, False, None, str(exc), "", None)
            if exc.retriable:
                await self._deliveries.reopen(delivery.id)
            raise
        accepted = [r for r in results if r.accepted]
        first = results[0]
        if accepted:
            await self._deliveries.record(delivery.id, True, first.code, "ok", first.host, None)
            return
        text = "; ".join(f"{r.address}: {r.code} {r.message}" for r in results)
        await self._deliveries.record(delivery.id, False, first.code, text, first.host, None)
        if any(r.transient for r in results):
            await self._deliveries.reopen(delivery.id)
            raise TransientFailure(text)
        log.warning("invoice mail %s refused: %s", event.id, text)

    async def _message(self, invoice: Invoice, data: dict[str, Any], delivery_id: int) -> Any:
        assert self._mailer is not None
        msg = EmailMessage()
        msg["Subject"] = data["subject"]
        msg["From"] = self._mailer.config.from_header
        msg["To"] = data["to"]
        if data.get("copyto"):
            msg["Cc"] = data["copyto"]
        if data.get("reply_to"):
            msg["Reply-To"] = data["reply_to"]
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        # Stable across retries: a receiver can tell a resend from a new message.
        msg["Message-ID"] = f"<invoice{delivery_id}@{self._domain}>"
        msg.set_content(data["text"])
        msg.add_alternative(data["html"], subtype="html")
        if data.get("join_pdf"):
            _steps, policy_issuer = await self._config.policy(invoice.tenant_id)
            issuer = await issuer_for(self._engine, invoice.tenant_id, invoice.data, policy_issuer)
            pdf = render_invoice_pdf(invoice.data, issuer)
            number = invoice.data.get("number") or invoice.uid
            msg.add_attachment(
                pdf, maintype="application", subtype="pdf", filename=f"fatura-{number}.pdf"
            )
        return msg


class DunningJob:
    def __init__(
        self,
        engine: Any,
        invoices: InvoiceStore,
        config: BillingConfigStore,
        dunning: DunningStore,
        bus: Publisher,
        commands_topic: str,
        links: b.Links,
    ) -> None:
        self._engine = engine
        self._invoices = invoices
        self._config = config
        self._dunning = dunning
        self._bus = bus
        self._topic = commands_topic
        self._links = links

    async def run(self, today: date | None = None) -> int:
        """One pass; the number of reminders this run published."""
        today = today or b.today_brasilia()
        steps_of: dict[str, tuple[int, ...]] = {}
        sent = 0
        async for invoice in self._invoices.overdue(today):
            if invoice.tenant_id not in steps_of:
                steps_of[invoice.tenant_id] = (await self._config.policy(invoice.tenant_id))[0]
            step = b.dunning_step(invoice.data_vencimento, today, steps_of[invoice.tenant_id])
            to = (invoice.data.get("customer") or {}).get("email")
            if step is None or not to:
                continue
            if not await self._dunning.claim(invoice.tenant_id, invoice.id, step):
                continue
            try:
                await self._publish(invoice, step, to)
            except Exception:
                await self._dunning.release(invoice.id, step)
                raise
            await self._dunning.published(invoice.id, step)
            sent += 1
        return sent

    async def _publish(self, invoice: Invoice, step: int, to: str) -> None:
        mail = await compose_mail(self._engine, self._config, self._links, invoice,
                                  "dunning_invoice")  # fmt: skip
        event = Event(
            type=b.INVOICE_MAIL,
            source=SOURCE,
            # Deterministic: a reminder published twice is still sent once.
            id=f"dunning-{invoice.id}-{step}",
            subject=invoice.uid,
            tenant=invoice.tenant_id,
            data={
                "tenant": invoice.tenant_id,
                "uid": invoice.uid,
                "action": "dunning_invoice",
                "to": to,
                "subject": mail.subject,
                "html": mail.html,
                "text": mail.text,
                "join_pdf": True,
            },
        )
        await self._bus.publish(self._topic, event, b.invoice_key(invoice.tenant_id, invoice.uid))
