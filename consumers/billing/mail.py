"""Invoice e-mails (topic billing.commands, read by the notification consumer): each command
sent once, with the invoice PDF attached on request."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from notaflow import schemas
from notaflow import topics as t
from notaflow.consumers.delivery_leases import DEFAULT_LEASE, LeaseLost, Leases
from notaflow.consumers.providers.mailer import Mailer
from notaflow.envelope import Event
from notaflow.errors import Permanent, Transient
from notaflow.invoice_pdf import render_invoice_pdf
from notaflow.routing import Routes
from notaflow.store.deliveries import PENDING
from notaflow.store.invoices import (
    BillingConfigStore,
    Invoice,
    InvoiceDeliveryStore,
    InvoiceStore,
    issuer_for,
)

log = logging.getLogger(__name__)


class BillingMailer:
    def __init__(
        self,
        engine: Any,
        invoices: InvoiceStore,
        config: BillingConfigStore,
        deliveries: InvoiceDeliveryStore,
        mailer: Mailer | None,
        public_url: str,
        leases: Leases | None = None,
    ) -> None:
        self._engine = engine
        # The notification consumer's, in its process: one renewal pass for both.
        self._leases = leases or Leases(deliveries, DEFAULT_LEASE)
        self._invoices = invoices
        self._config = config
        self._deliveries = deliveries
        self._mailer = mailer
        self._domain = urlsplit(public_url).hostname or "notaflow"

    def routes(self, topics: t.Topics) -> Routes:
        return Routes().add(topics.billing_commands, t.INVOICE_MAIL, self.send)

    async def send(self, event: Event) -> None:
        data = event.data
        for error in schemas.validator("invoice_mail_command").iter_errors(data):
            raise Permanent(f"invalid invoice mail command: {error.message}")
        invoice = await self._invoices.get(data["tenant"], data["uid"])
        if invoice is None:
            raise Permanent(f"invoice {data['tenant']}/{data['uid']} not found")
        delivery = await self._deliveries.hold(
            invoice.tenant_id, invoice.id, f"invoice-mail:{event.id}", data["to"], data
        )
        if delivery.status != PENDING:
            return  # sent (or given up) already
        if not await self._deliveries.lock(delivery.id, self._leases.lease):
            # Another replica is sending it, or a process that died was: the command comes
            # back after the lease, and finds it sent or takes it (these rows have no retry
            # schedule of their own: returning here would lose the e-mail of a dead sender).
            raise Transient("invoice e-mail under way elsewhere", retry_after=self._leases.lease)
        if self._mailer is None:
            await self._deliveries.record(delivery.id, False, None, "no SMTP server", "", None)
            raise Permanent("no SMTP server configured")
        message = await self._message(invoice, data, delivery.id)
        try:
            async with self._leases.held(delivery.id):
                results = await self._mailer.send(message)
        except LeaseLost:
            raise  # left pending and locked for the rest of the lease: the redelivery retries
        except (Permanent, Transient) as exc:
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
            raise Transient(text)
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
