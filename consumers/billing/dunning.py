"""The dunning job (`notaflow dunning`): reminders for invoices past due, published to
billing.commands, each (invoice, step) once across replicas and runs."""

from __future__ import annotations

from datetime import date
from typing import Any

from notaflow import billing as b
from notaflow import topics as t
from notaflow.bus import Publisher
from notaflow.envelope import Event
from notaflow.store.invoices import (
    BillingConfigStore,
    DunningStore,
    Invoice,
    InvoiceStore,
    compose_mail,
)

SOURCE = t.SOURCE_BILLING


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
            type=t.INVOICE_MAIL,
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
