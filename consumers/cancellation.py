"""The cancellation consumer: NFS-e cancel commands in, Focus's synchronous DELETE out, the
outcome recorded, published on the lifecycle topic and answered to the waiting ingress.

A cancel that arrives while its note is still being authorized waits (a transient failure,
retried with backoff, blocking only that document): cancel and emit share the document key,
so the cancel can never overtake the emit command, and it acts on the emission's outcome.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from notaflow import topics as t
from notaflow.accounts import FocusCredentials
from notaflow.bus import Publisher
from notaflow.consumers.lifecycle_events import note_to_cancel, publish_status, reply_status
from notaflow.consumers.nfce import NfceCanceller
from notaflow.consumers.providers.focus import FocusClient, FocusToken
from notaflow.envelope import Event
from notaflow.errors import Permanent
from notaflow.focus_kinds import BY_CANCEL_TYPE, BY_KIND, NFSE, FocusKind
from notaflow.lifecycle import AUTHORIZED, CANCEL_DONE, CANCEL_FAILED, CANCELLED, Cancel, xml_path
from notaflow.routing import Routes
from notaflow.store import Document, DocumentStore
from notaflow.views import result_from_provider

log = logging.getLogger(__name__)
SOURCE = t.SOURCE_CANCELLATION
KIND = "nfse"


class CancellationConsumer:
    def __init__(
        self,
        documents: DocumentStore,
        focus: FocusClient,
        bus: Publisher,
        topics: t.Topics,
        nfce: NfceCanceller | None = None,
        focus_token: FocusToken | None = None,
    ) -> None:
        self._focus_token = focus_token
        self._nfce = nfce
        self._docs = documents
        self._focus = focus
        self._bus = bus
        self._topics = topics

    def routes(self) -> Routes:
        """Cancel commands: a municipal NFS-e or an NFS-e Nacional, and NFC-e."""
        routes = Routes()
        for event_type, kind in BY_CANCEL_TYPE.items():
            routes.add(
                self._topics.nfse_commands, event_type, functools.partial(self.cancel, kind=kind)
            )
        routes.add(self._topics.nfce_commands, t.NFCE_CANCEL, self.cancel_nfce)
        return routes

    async def cancel_nfce(self, event: Event) -> None:
        if self._nfce is None:
            raise Permanent("NFC-e is not configured (NOTAFLOW_EMITES_*)")
        await self._nfce.cancel(event)

    async def cancel(self, event: Event, kind: FocusKind = NFSE) -> None:
        data = event.data
        doc = await note_to_cancel(
            self._docs, self._bus, self._topics, event, SOURCE, "nfse_cancel_command", kind.kind
        )
        if doc is None:
            return
        assert doc.status == AUTHORIZED and doc.provider_ref is not None
        token = await self._token(doc)
        answer = await self._focus.cancel_document(
            kind.api_path, doc.provider_ref, data["justificativa"], token, doc.tenant_id
        )
        body = answer.body
        if body.get("status") == "cancelado" or body.get("codigo") == "nfe_cancelada":
            # nfe_cancelada from Focus: an earlier delivery of this command got through.
            await self._cancelled(doc, event, body)
            return
        if body.get("codigo") == "nfe_nao_autorizada":
            await self._answer(event, Cancel.NOT_AUTHORIZED.value)
            return
        erros = body.get("erros") or [
            {
                "codigo": body.get("codigo") or str(answer.status_code),
                "mensagem": body.get("mensagem"),
                "correcao": None,
            }
        ]
        await self._docs.note(doc.id, doc.attempt, CANCEL_FAILED, SOURCE, erros)
        await self._answer(event, CANCEL_FAILED, erros)

    async def _cancelled(self, doc: Document, event: Event, body: dict[str, Any]) -> None:
        result = {**doc.result, **result_from_provider(body)}
        await self._keep_cancellation_xml(doc, result)
        # The command id goes into the history entry, so a redelivery answers "cancelado".
        updated = await self._docs.transition(
            doc.id, doc.attempt, CANCELLED, SOURCE, result, detail={"command_id": event.id}
        )
        if updated is not None:
            await publish_status(self._bus, self._topics, updated, SOURCE, event)
        await self._answer(event, CANCEL_DONE)

    async def _keep_cancellation_xml(self, doc: Document, result: dict[str, Any]) -> None:
        """Store the prefeitura's cancellation XML before the note shows its path, so a client
        reading `caminho_xml_cancelamento` can always fetch it. Focus's DELETE names it; a
        redelivered command (answered nfe_cancelada) finds it in Focus's GET."""
        if not result.get("caminho_xml_cancelamento") and doc.provider_ref is not None:
            state = await self._focus.get_document(
                BY_KIND[doc.kind].api_path, doc.provider_ref, await self._token(doc), doc.tenant_id
            )
            if state.body.get("caminho_xml_cancelamento"):
                result["caminho_xml_cancelamento"] = state.body["caminho_xml_cancelamento"]
        path = result.get("caminho_xml_cancelamento")
        if path and path != doc.result.get("caminho_xml_cancelamento"):
            xml = await self._focus.download(str(path), await self._token(doc), doc.tenant_id)
            # Served under a name of our own, as the authorized XML (notaflow.lifecycle).
            ours = xml_path(doc.kind)
            await self._docs.put_blob(ours, doc.tenant_id, "application/xml", xml)
            result["caminho_xml_cancelamento"] = ours

    async def _token(self, doc: Document) -> FocusCredentials | None:
        """The company's Focus credentials (its provider account), or None for the global ones."""
        if self._focus_token is None:
            return None
        return await self._focus_token(doc.tenant_id, doc.cnpj_prestador)

    async def _answer(
        self, event: Event, status: str, erros: list[dict[str, Any]] | None = None
    ) -> None:
        await reply_status(self._bus, self._topics, event, SOURCE, status, erros)
