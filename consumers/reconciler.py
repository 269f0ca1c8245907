"""The reconciler: providers lose callbacks (Focus retries a hook only five times), consumers
crash, an ingress may die between claiming a ref and publishing its command. Notes left in
processing past a deadline are completed here:

- submitted to Focus: ask Focus (`GET /v2/nfse/REF`, from the company's credits, leaving the
  last fifth of its window to emissions) and, when it has
  an outcome, publish it as a provider event, so the emission consumer applies it exactly as
  it would the lost callback (one writer, same idempotency);
- never submitted: publish the emit command again under its original id (the consumer does
  nothing if it already handled it).

Safe to run from several replicas at once: everything it publishes is idempotent downstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from notaflow import topics as t
from notaflow.accounts import AccountDisabled
from notaflow.bus import Publisher
from notaflow.consumers.providers.focus import FocusClient, FocusToken
from notaflow.envelope import Event
from notaflow.errors import Permanent, Transient
from notaflow.focus_kinds import BY_KIND
from notaflow.lifecycle import OUTCOMES, PROCESSING
from notaflow.store import Document, DocumentStore

log = logging.getLogger(__name__)
SOURCE = t.SOURCE_RECONCILER


@dataclass
class ReconcileReport:
    examined: int = 0
    completed: int = 0
    resubmitted: int = 0
    still_processing: int = 0
    failed: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        documents: DocumentStore,
        focus: FocusClient,
        bus: Publisher,
        topics: t.Topics,
        focus_token: FocusToken | None = None,
    ) -> None:
        self._focus_token = focus_token
        self._docs = documents
        self._focus = focus
        self._bus = bus
        self._topics = topics

    async def run_once(self, older_than: float, limit: int = 100) -> ReconcileReport:
        report = ReconcileReport()
        deadline = datetime.now(UTC) - timedelta(seconds=older_than)
        for doc in await self._docs.stuck(PROCESSING, deadline, limit):
            if doc.kind not in BY_KIND:
                continue  # NFC-e outcomes are synchronous; an unknown one needs an operator
            report.examined += 1
            try:
                await self._reconcile(doc, report)
            except (Permanent, Transient, AccountDisabled) as exc:
                # A disabled company's note waits for an operator, not the others behind it.
                report.failed.append(f"{doc.tenant_id}/{doc.ref}: {exc}")
        return report

    async def _reconcile(self, doc: Document, report: ReconcileReport) -> None:
        key = t.document_key(doc.tenant_id, doc.kind, doc.ref)
        if doc.submitted_at is None or doc.provider_ref is None:
            await self._resubmit(doc, key)
            report.resubmitted += 1
            return
        # Paid from the company's own credits, and only while its window has more than the
        # headroom left: a lost callback can wait a few seconds, the company's emissions not.
        token = (
            None
            if self._focus_token is None
            else await self._focus_token(doc.tenant_id, doc.cnpj_prestador)
        )
        answer = await self._focus.get_document(
            BY_KIND[doc.kind].api_path, doc.provider_ref, token, doc.tenant_id, low_priority=True
        )
        if answer.status_code == 404:
            # Focus never got it (the POST failed after we marked it): send it again.
            await self._docs.unmark_submitted(doc.id, doc.attempt)
            await self._resubmit(doc, key)
            report.resubmitted += 1
            return
        if answer.body.get("status") not in OUTCOMES:
            report.still_processing += 1
            return
        event = Event(
            type=t.FOCUS_NFSE_CALLBACK,
            source=SOURCE,
            data=answer.body,
            subject=doc.provider_ref,
            tenant=doc.tenant_id,
        )
        await self._bus.publish(self._topics.provider_events, event, key)
        report.completed += 1

    async def _resubmit(self, doc: Document, key: bytes) -> None:
        kind = BY_KIND[doc.kind]
        event = Event(
            type=kind.emit_type,
            source=SOURCE,
            data={"tenant": doc.tenant_id, "ref": doc.ref, kind.kind: doc.payload},
            subject=doc.ref,
            id=doc.command_id,  # the original id: the consumer accepts it once, ignores repeats
            tenant=doc.tenant_id,
        )
        await self._bus.publish(self._topics.nfse_commands, event, key)
