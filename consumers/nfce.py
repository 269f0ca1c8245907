"""NFC-e through the Emites-Client TCP service: create (emission consumer) and cancel
(cancellation consumer). NFC-e is synchronous for clients, so each outcome is also answered
on the replies topic to the waiting ingress.

Emites-Client has no idempotency key: a CREATE_NFCE that may have reached it is never sent
again. The note is marked submitted before the request leaves; only a request that surely
never left (`Unsent`: no connection) is retried. A timeout after sending leaves the outcome
unknown: the record goes to the dead-letter topic with that explanation instead of risking a
second note.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import SpanKind

from notaflow import topics as t
from notaflow import tracing
from notaflow.bus import Publisher
from notaflow.consumers.lifecycle_events import (
    note_to_cancel,
    publish_if_current,
    publish_status,
    reply,
    reply_status,
)
from notaflow.consumers.providers.emites import EmitesClient, EmitesReply
from notaflow.consumers.providers.emites_accounts import EmitesByCompany
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument, Permanent, RefInUse, Transient, Unsent
from notaflow.lifecycle import (
    AUTHORIZED,
    CANCEL_DONE,
    CANCEL_FAILED,
    CANCELLED,
    ERROR,
    NFCE_DANFE,
    NFCE_XML,
    PROCESSING,
    emites_ref,
    nfce_blob,
    ref_reusable,
)
from notaflow.nfce import normalize_nfce, omitted_notices
from notaflow.schemas import validator
from notaflow.store import Document, DocumentStore, TenantStore
from notaflow.views import nfce_view

log = logging.getLogger(__name__)
KIND = "nfce"


def _erros(reply: EmitesReply) -> list[dict[str, Any]]:
    """Emites' `{"field.path": ["message"]}` as Focus-style `erros`, field kept."""
    out = []
    for field, messages in sorted(reply.erros.items()):
        for message in messages:
            code = message.split(" ", 1)[0] if field == "rejeicao" else "validacao"
            out.append({"codigo": code, "mensagem": message, "campo": field})
    return out or [{"codigo": reply.status, "mensagem": "rejeitada", "campo": None}]


def _with_avisos(result: dict[str, Any], avisos: list[str]) -> dict[str, Any] | None:
    if avisos:
        result["avisos"] = avisos
    return result or None


class NfceEmitter:
    def __init__(
        self,
        documents: DocumentStore,
        tenants: TenantStore,
        emites: EmitesClient | EmitesByCompany,
        bus: Publisher,
        topics: t.Topics,
        cnpj: str,
        source: str,
    ) -> None:
        self._docs = documents
        self._tenants = tenants
        # The company's endpoint (issue 15): one client serves `cnpj` alone.
        self._emites = (
            emites if isinstance(emites, EmitesByCompany) else EmitesByCompany(emites, cnpj)
        )
        self._bus = bus
        self._topics = topics
        self._cnpj = cnpj
        self._source = source

    async def create(self, event: Event) -> None:
        data = event.data
        errors = sorted(validator("nfce_create_command").iter_errors(data), key=str)
        if errors:
            raise InvalidDocument("data", f"comando inválido: {errors[0]}")
        tenant_id, ref = data["tenant"], data["ref"]
        document = normalize_nfce(data["nfce"])
        # What the client sent that Emites does not get ("" texts), said with the note: from
        # the ingress beside a normalised document, or found here in a command from Kafka.
        avisos = list(dict.fromkeys([*data.get("avisos", ()), *omitted_notices(data["nfce"])]))
        tenant = await self._tenants.get(tenant_id)
        if tenant is None:
            raise InvalidDocument("tenant", f"tenant desconhecido: {tenant_id}")
        # The shop the ingress chose (`cnpj_emitente`); older commands: the global one.
        cnpj = data.get("cnpj") or self._cnpj
        if cnpj not in tenant.cnpjs:
            raise InvalidDocument("cnpj", "empresa_nao_habilitada")
        emites = await self._emites.client(tenant_id, cnpj)
        doc = await self._docs.get(tenant_id, KIND, ref)
        if doc is None or (doc.command_id != event.id and ref_reusable(doc.status)):
            if doc is not None:  # the error it replaces, again first (`ingress.intake`)
                await publish_status(self._bus, self._topics, doc, self._source, event)
            try:
                await self._docs.claim(
                    tenant_id, KIND, ref, cnpj, document, event.id, self._source, current=doc
                )
            except RefInUse as exc:
                raise Permanent(f"ref {ref} em uso ({exc.status})") from exc
            doc = await self._docs.get(tenant_id, KIND, ref)
            assert doc is not None
        if doc.command_id != event.id or doc.status != PROCESSING:
            if doc.command_id == event.id:
                # A redelivery of this very command: the process that made the outcome may
                # have died between its write and its event, so the event goes out again
                # (deterministic id, deduplicated downstream) if it is still the note's state.
                await publish_if_current(
                    self._bus, self._topics, self._docs, doc, self._source, event
                )
            await self._answer(event, doc)  # a redelivery: answer what happened
            return
        if doc.submitted_at is not None:
            raise Permanent(
                "CREATE_NFCE may already have reached Emites-Client (outcome unknown): "
                "not sent again; check the note there before replaying this record"
            )
        await self._docs.mark_submitted(doc.id, doc.attempt, emites_ref(doc.id, doc.attempt))
        try:
            with tracing.span("emites CREATE_NFCE", kind=SpanKind.CLIENT):
                answer = await emites.create_nfce(doc.payload)
        except Unsent:
            await self._docs.unmark_submitted(doc.id, doc.attempt)
            raise
        except Transient as exc:
            raise Permanent(f"outcome unknown after sending CREATE_NFCE: {exc}") from exc
        if answer.status == "sucesso":
            await self._authorized(doc, answer, event, avisos)
        elif answer.status == "processando":
            raise Permanent("Emites-Client answered 'processando': reconcile the note")
        else:
            await self._finish(doc, ERROR, _with_avisos({}, avisos), _erros(answer), event)

    async def _authorized(
        self, doc: Document, answer: EmitesReply, event: Event, avisos: list[str]
    ) -> None:
        result: dict[str, Any] = {
            "numero": answer.numero,
            "serie": answer.serie,
            "chave_nfe": answer.chave_acesso,
            "protocolo": answer.numero_protocolo,
            "data_emissao": answer.data_emissao,
            "codigo_verificacao": answer.codigo_verificacao,
            "status_sefaz": "100",
            "mensagem_sefaz": "Autorizado o uso da NF-e",
        }
        if answer.danfe:
            key = nfce_blob(doc.id, NFCE_DANFE)
            await self._docs.put_blob(key, doc.tenant_id, "application/pdf", answer.danfe)
            result["caminho_danfe"] = f"/v2/nfce/{doc.ref}/danfe.pdf"
        if answer.xml:
            key = nfce_blob(doc.id, NFCE_XML)
            await self._docs.put_blob(key, doc.tenant_id, "application/xml", answer.xml)
            result["caminho_xml_nota_fiscal"] = f"/v2/nfce/{doc.ref}/xml"
        await self._finish(doc, AUTHORIZED, _with_avisos(result, avisos), None, event)

    async def _finish(
        self,
        doc: Document,
        status: str,
        result: dict[str, Any] | None,
        erros: list[dict[str, Any]] | None,
        event: Event,
    ) -> None:
        updated = await self._docs.transition(
            doc.id, doc.attempt, status, self._source, result, erros
        )
        if updated is not None:
            await publish_status(self._bus, self._topics, updated, self._source, event)
        current = updated or await self._docs.by_id(doc.id)
        if current is not None:
            await self._answer(event, current)

    async def _answer(self, event: Event, doc: Document) -> None:
        await reply(self._bus, self._topics, event, self._source, {"note": nfce_view(doc)})


class NfceCanceller:
    def __init__(
        self, documents: DocumentStore, emites: EmitesClient | EmitesByCompany, bus: Publisher,
        topics: t.Topics, source: str,
    ) -> None:  # fmt: skip
        self._docs = documents
        self._emites = (
            emites if isinstance(emites, EmitesByCompany) else EmitesByCompany(emites, None)
        )
        self._bus = bus
        self._topics = topics
        self._source = source

    async def cancel(self, event: Event) -> None:
        data = event.data
        doc = await note_to_cancel(
            self._docs, self._bus, self._topics, event, self._source, "nfce_cancel_command", KIND
        )
        if doc is None:
            return
        chave = doc.result.get("chave_nfe")
        if not chave:
            raise Permanent(f"NFC-e {doc.ref} autorizada sem chave de acesso")
        emites = await self._emites.client(doc.tenant_id, doc.cnpj_prestador)
        with tracing.span("emites CANCEL_NFCE", kind=SpanKind.CLIENT):
            answer = await emites.cancel_nfce(str(chave), data.get("motivo"))
        if answer.status == "cancelada":
            result = {**doc.result, "status_sefaz": "135", "mensagem_sefaz": "Evento registrado"}
            if answer.cancel_xml_url:
                result["caminho_xml_cancelamento"] = answer.cancel_xml_url
            updated = await self._docs.transition(
                doc.id,
                doc.attempt,
                CANCELLED,
                self._source,
                result,
                detail={"command_id": event.id},
            )
            if updated is not None:
                await publish_status(self._bus, self._topics, updated, self._source, event)
            await self._answer(event, CANCEL_DONE)
            return
        erros = _erros(answer)
        await self._docs.note(doc.id, doc.attempt, CANCEL_FAILED, self._source, erros)
        await self._answer(event, CANCEL_FAILED, erros)

    async def _answer(
        self, event: Event, status: str, erros: list[dict[str, Any]] | None = None
    ) -> None:
        await reply_status(self._bus, self._topics, event, self._source, status, erros)
