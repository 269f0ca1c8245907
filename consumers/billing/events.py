"""The `billing` consumer (topic billing.events): invoice events applied to the read model."""

from __future__ import annotations

import logging

from notaflow import billing as b
from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument, Permanent
from notaflow.routing import Routes
from notaflow.store.invoices import InvoiceStore

log = logging.getLogger(__name__)


class BillingEvents:
    def __init__(self, invoices: InvoiceStore) -> None:
        self._invoices = invoices

    def routes(self, topics: t.Topics) -> Routes:
        return Routes().add(topics.billing_events, t.INVOICE_EVENT, self.apply)

    async def apply(self, event: Event) -> None:
        tenant = str(event.data.get("tenant") or event.tenant)
        if not tenant:
            raise Permanent("invoice event without tenant")
        try:
            invoice_event = b.normalize_event(event.data)
        except InvalidDocument as exc:
            raise Permanent(f"invalid invoice event: {exc.message}") from exc
        applied = await self._invoices.apply(tenant, invoice_event)
        log.debug("invoice %s/%s event %s applied=%s", tenant, invoice_event.uid,
                  invoice_event.event_id, applied)  # fmt: skip
