"""The emission consumer: NFS-e emit commands in, Focus NFe calls out, provider callbacks applied.

Both topics are handled here because both move the same document through its emission
lifecycle; records share the document key, so the runner keeps a command and its callbacks in
order. Idempotency rests on the state machine: a redelivered command whose attempt was already
submitted does nothing, a duplicate callback finds its transition already made.
"""

from __future__ import annotations

import logging
from typing import Any

from consumers.errors import PermanentFailure
from consumers.lifecycle import publish_if_current, publish_status
from consumers.nfce import NfceEmitter
from consumers.providers.focus import FocusClient
from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.envelope import Event, decode
from notaflow.errors import InvalidDocument, RefInUse
from notaflow.nfse import normalize_nfse
from notaflow.store import Document, DocumentStore, TenantStore
from notaflow.store.documents import AUTHORIZED, CANCELLED, ERROR, PROCESSING, TRANSITIONS
from notaflow.store.tenants import TenantCache
from notaflow.views import result_from_provider
from schemas import validator

log = logging.getLogger(__name__)
SOURCE = "notaflow/consumers/emission"
KIND = "nfse"


def provider_ref(doc: Document) -> str:
    """The ref we use at Focus: unique across tenants and attempts, letters and digits only."""
    return f"N{doc.id}A{doc.attempt}"


class EmissionConsumer:
    def __init__(
        self,
        documents: DocumentStore,
        tenants: TenantStore,
        focus: FocusClient,
        bus: Bus,
        topics: t.Topics,
        nfce: NfceEmitter | None = None,
    ) -> None:
        self._nfce = nfce
        self._docs = documents
        # Every command names its tenant; a cached copy saves two queries per note.
        self._tenants = TenantCache(tenants)
        self._focus = focus
        self._bus = bus
        self._topics = topics

    async def handle(self, record: Any) -> None:
        event = decode(record.headers, record.value)
        if event.type == t.NFSE_EMIT:
            await self.emit(event)
        elif event.type == t.FOCUS_NFSE_CALLBACK:
            await self.apply_callback(event)
        elif event.type == t.NFCE_CREATE:
            if self._nfce is None:
                raise PermanentFailure("NFC-e is not configured (NOTAFLOW_EMITES_*)")
            await self._nfce.create(event)
        # Other command types on the topic belong to other consumers.

    # -- emit ----------------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        data = event.data
        errors = sorted(validator("nfse_emit_command").iter_errors(data), key=lambda e: str(e))
        if errors:
            raise InvalidDocument("data", f"comando inválido: {errors[0]}")
        tenant_id, ref = data["tenant"], data["ref"]
        doc = await self._docs.get(tenant_id, KIND, ref)
        document: dict[str, Any] | None = None
        if doc is not None and doc.command_id == event.id:
            # Claimed with this very command (by the ingress, or by an earlier delivery): the
            # stored payload is the normalized document; normalizing it again is wasted work.
            cnpj = doc.cnpj_prestador
        else:
            document = normalize_nfse(data["nfse"])
            cnpj = document["prestador"]["cnpj"]
        tenant = await self._tenants.get(tenant_id)
        if tenant is None or cnpj not in tenant.cnpjs:
            tenant = await self._tenants.get(tenant_id, fresh=True)  # refuse on current data
        if tenant is None:
            raise InvalidDocument("tenant", f"tenant desconhecido: {tenant_id}")
        if cnpj not in tenant.cnpjs:
            raise InvalidDocument("prestador.cnpj", "empresa_nao_habilitada")

        if document is not None and (doc is None or doc.status == ERROR):
            # Published straight to Kafka by another system, or a re-emission after an error.
            try:
                await self._docs.claim(
                    tenant_id, KIND, ref, cnpj, document, event.id, SOURCE, current=doc
                )
            except RefInUse as exc:
                raise PermanentFailure(f"ref {ref} em uso ({exc.status})") from exc
            doc = await self._docs.get(tenant_id, KIND, ref)
        if doc is None or doc.command_id != event.id:
            log.info("skipping stale emit %s for %s/%s", event.id, tenant_id, ref)
            return
        if doc.submitted_at is not None or doc.status != PROCESSING:
            # Redelivery of a command already handed to the provider (its lifecycle event went
            # out before the hand-over was recorded, below).
            return
        pref = provider_ref(doc)
        # Known before the call, so a callback racing our own bookkeeping still finds the note.
        await self._docs.set_provider_ref(doc.id, doc.attempt, pref)
        reply = await self._focus.emit_nfse(pref, doc.payload)
        code = reply.body.get("codigo")
        if reply.status_code in (200, 201, 202) or code in ("em_processamento", "nfe_autorizada"):
            # 422 for our own provider ref means an earlier delivery of this command got through.
            # The lifecycle event goes out before the hand-over is recorded: a crash between the
            # two leaves the note unrecorded, and whatever comes next (this command redelivered,
            # or the provider's callback fetched ahead of it) publishes it again under the same
            # id. The other order could lose it: recorded, never published, and a callback
            # applied first finds the note submitted and moves it on without it.
            await self._publish_status(doc, event)
            await self._docs.mark_submitted(doc.id, doc.attempt, pref)
            return
        # The provider refused the document outright: a final, explained state.
        erros = reply.body.get("erros") or [
            {
                "codigo": code or str(reply.status_code),
                "mensagem": reply.body.get("mensagem"),
                "correcao": None,
            }
        ]
        await self._finish(doc, ERROR, None, erros, event)

    # -- callbacks -----------------------------------------------------------------------------

    async def apply_callback(self, event: Event) -> None:
        body = event.data
        errors = sorted(validator("focus_callback").iter_errors(body), key=lambda e: str(e))
        if errors:
            raise InvalidDocument("data", f"callback inválido: {errors[0]}")
        doc = await self._docs.by_provider_ref(str(body["ref"]))
        if doc is None:
            raise InvalidDocument("ref", f"callback para ref desconhecida {body['ref']}")
        status = body["status"]
        if status not in (AUTHORIZED, ERROR, CANCELLED):
            return
        if doc.status == status:
            # Already applied. Publish the status again: if a crash came between the state
            # change and its lifecycle event, this redelivery is the only chance to send it, and
            # the event's id is deterministic, so downstream deduplicates the extra copy.
            await self._publish_status(doc, event)
            return
        if doc.status not in TRANSITIONS[status]:
            return  # late callback: the note has moved on
        # The provider's answer may come before our record of handing the note over: a crash
        # fell between the POST and that bookkeeping, and after the restart this callback was
        # fetched ahead of the redelivered command. Record it now, event first as in `emit`, so
        # the stream still reads processing -> outcome.
        if doc.status == PROCESSING and doc.submitted_at is None:
            await self._publish_status(doc, event)
            await self._docs.mark_submitted(doc.id, doc.attempt, str(body["ref"]))
        result = result_from_provider(body)
        if status == AUTHORIZED and result.get("caminho_xml_nota_fiscal"):
            path = str(result["caminho_xml_nota_fiscal"])
            xml = await self._focus.download(path)
            await self._docs.put_blob(path, doc.tenant_id, "application/xml", xml)
        erros = body.get("erros") if status == ERROR else None
        await self._finish(doc, status, result, erros, event)

    async def _finish(
        self,
        doc: Document,
        status: str,
        result: dict[str, Any] | None,
        erros: list[dict[str, Any]] | None,
        cause: Event,
    ) -> None:
        updated = await self._docs.transition(doc.id, doc.attempt, status, SOURCE, result, erros)
        if updated is not None:
            # The transition is the conditional write that tells: the note is in this state
            # now, made so by us; no re-read (one read less per note). What could follow it, a
            # cancellation, first waits for this state and then makes its own call to Focus.
            await publish_status(self._bus, self._topics, updated, SOURCE, cause)

    async def _publish_status(self, doc: Document, cause: Event) -> None:
        # Only if still current: `doc` may have been read before a slow Focus call, and the
        # note moved on meanwhile (its callback applied, a cancellation): publishing the old
        # status then would make the note go backwards on the lifecycle topic.
        await publish_if_current(self._bus, self._topics, self._docs, doc, SOURCE, cause)
