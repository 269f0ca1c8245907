"""Topic names, event types, event sources and record keys: the Kafka contract other systems code
against."""

from __future__ import annotations

from dataclasses import dataclass

# CloudEvents `type` values.
NFSE_EMIT = "br.notaflow.nfse.emit"
NFSE_CANCEL = "br.notaflow.nfse.cancel"
FOCUS_NFSE_CALLBACK = "br.notaflow.provider.focus.nfse"
NFSE_STATUS = "br.notaflow.nfse.status"
NFSE_EMAIL = "br.notaflow.nfse.email"
NFSE_HOOK = "br.notaflow.nfse.hook"
# NFS-e Nacional (Focus /v2/nfsen): its own command types, on the NFS-e command topic.
NFSEN_EMIT = "br.notaflow.nfsen.emit"
NFSEN_CANCEL = "br.notaflow.nfsen.cancel"
NFSEN_EMAIL = "br.notaflow.nfsen.email"
NFSEN_HOOK = "br.notaflow.nfsen.hook"
REPLY = "br.notaflow.reply"
NFCE_CREATE = "br.notaflow.nfce.create"
NFCE_CANCEL = "br.notaflow.nfce.cancel"
NFCE_STATUS = "br.notaflow.nfce.status"
INVOICE_EVENT = "br.notaflow.invoice.event"
INVOICE_MAIL = "br.notaflow.invoice.mail"

# CloudEvents `source` values: the part of notaflow that published an event. A status change
# also records it in the document's history (`notaflow history`), so these are named here once.
SOURCE_INGRESS = "notaflow/ingress"  # the Focus dialect's routes (NFS-e, NFS-e Nacional, NFC-e)
SOURCE_HUBSOFT = "notaflow/ingress/hubsoft"  # HubSoft's e-mail and financeiro routes
SOURCE_WURO = "notaflow/ingress/wuro"
SOURCE_FOCUS_WEBHOOK = "notaflow/ingress/focus-webhook"
SOURCE_EMISSION = "notaflow/consumers/emission"
SOURCE_CANCELLATION = "notaflow/consumers/cancellation"
SOURCE_NOTIFICATION = "notaflow/consumers/notification"
SOURCE_BILLING = "notaflow/consumers/billing"
SOURCE_RECONCILER = "notaflow/reconciler"


@dataclass(frozen=True)
class Topics:
    prefix: str = "notaflow."

    @property
    def nfse_commands(self) -> str:
        return self.prefix + "nfse.commands"

    @property
    def nfce_commands(self) -> str:
        return self.prefix + "nfce.commands"

    @property
    def provider_events(self) -> str:
        return self.prefix + "provider.events"

    @property
    def lifecycle(self) -> str:
        return self.prefix + "lifecycle"

    @property
    def dead_letter(self) -> str:
        return self.prefix + "dead-letter"

    @property
    def replies(self) -> str:
        """Outcomes of synchronous commands (cancel, HubSoft e-mail) for the waiting ingress."""
        return self.prefix + "replies"

    @property
    def billing_events(self) -> str:
        """Invoice events from billing systems (key tenant:invoice:uid)."""
        return self.prefix + "billing.events"

    @property
    def billing_commands(self) -> str:
        """Invoice e-mails to send (key tenant:invoice:uid)."""
        return self.prefix + "billing.commands"

    def all(self) -> list[str]:
        return [
            self.nfse_commands,
            self.nfce_commands,
            self.provider_events,
            self.lifecycle,
            self.dead_letter,
            self.replies,
            self.billing_events,
            self.billing_commands,
        ]


def document_key(tenant: str, kind: str, ref: str) -> bytes:
    """Kafka key: one document's events share a partition, so they stay in order."""
    return f"{tenant}:{kind}:{ref}".encode()
