"""The public shape of a document: what `GET /v2/nfse/REF` answers, what lifecycle events and
client webhooks carry. One function, so the three never drift apart; and the lifecycle record
itself (`status_event`), the same whichever process publishes it."""

from __future__ import annotations

from typing import Any

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.lifecycle import ERROR, is_issued
from notaflow.store.documents import Document
from notaflow.tracing import trace_fields

# Provider fields copied onto the public view once the prefeitura answered (seed 001, GET).
RESULT_FIELDS = (
    "numero_rps",
    "serie_rps",
    "tipo_rps",
    "numero",
    "codigo_verificacao",
    "data_emissao",
    "url",
    "url_danfse",
    "caminho_xml_nota_fiscal",
    "numero_nfse_substituida",
    "numero_nfse_substituta",
    "caminho_xml_cancelamento",  # a cancelled note's cancellation XML (Focus, 2026)
)


def nfse_view(doc: Document) -> dict[str, Any]:
    view: dict[str, Any] = {"cnpj_prestador": doc.cnpj_prestador, "ref": doc.ref}
    for name in ("numero_rps", "serie_rps", "tipo_rps"):
        if doc.result.get(name) is not None:
            view[name] = doc.result[name]
    view["status"] = doc.status
    if is_issued(doc.status):
        for name in RESULT_FIELDS[3:]:
            if doc.result.get(name) is not None:
                view[name] = doc.result[name]
    if doc.status == ERROR and doc.erros:
        view["erros"] = doc.erros
    return view


def result_from_provider(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in RESULT_FIELDS if body.get(k) is not None}


NFCE_RESULT_FIELDS = (
    "numero",
    "serie",
    "chave_nfe",
    "protocolo",
    "data_emissao",
    "codigo_verificacao",
    "caminho_xml_nota_fiscal",
    "caminho_danfe",
    "caminho_xml_cancelamento",
    "avisos",  # the empty texts of the client's document that Emites did not get
)


def nfce_view(doc: Document) -> dict[str, Any]:
    """Focus NFC-e's GET shape for a note issued through Emites-Client."""
    view: dict[str, Any] = {
        "cnpj_emitente": doc.cnpj_prestador,
        "ref": doc.ref,
        "status": doc.status,
    }
    for name in NFCE_RESULT_FIELDS:
        if doc.result.get(name) is not None:
            view[name] = doc.result[name]
    if doc.result.get("status_sefaz"):
        view["status_sefaz"] = doc.result["status_sefaz"]
        view["mensagem_sefaz"] = doc.result.get("mensagem_sefaz")
    if doc.status == ERROR and doc.erros:
        view["erros"] = doc.erros
    return view


def view_of(doc: Document) -> dict[str, Any]:
    return nfce_view(doc) if doc.kind == "nfce" else nfse_view(doc)


def status_event(doc: Document, source: str, trace: dict[str, str]) -> tuple[bytes, Event]:
    """`doc`'s state as a lifecycle record (its key and event). The id is deterministic, so
    whoever publishes a state again (a redelivery, the next mover after a crash) publishes the
    same event, which downstream consumers deduplicate."""
    event = Event(
        type=t.NFCE_STATUS if doc.kind == "nfce" else t.NFSE_STATUS,
        source=source,
        data={"tenant": doc.tenant_id, "kind": doc.kind, "id": doc.id, **view_of(doc)},
        subject=doc.ref,
        id=f"{doc.kind}-{doc.id}-{doc.attempt}-{doc.status}",
        tenant=doc.tenant_id,
        status=doc.status,
        **trace_fields(trace),
    )
    return t.document_key(doc.tenant_id, doc.kind, doc.ref), event
