"""The two kinds of NFS-e notaflow issues through Focus: municipal (`/v2/nfse`, kind `nfse`) and
NFS-e Nacional (`/v2/nfsen`, kind `nfsen`). They share the lifecycle, the command topic, the
consumers and every promise; what differs is named here once (API path, command types, the
document's schema and where its prestador and tomador are), so no consumer tests kinds by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from notaflow import topics as t
from notaflow.nfse import normalize_nfse
from notaflow.nfsen import mail_document, normalize_nfsen, prestador_document, tomador_email


@dataclass(frozen=True)
class FocusKind:
    kind: str  # the document kind in the store, the Kafka key and Focus's hook event
    api_path: str  # Focus's path for it (and the ingress's)
    emit_type: str
    cancel_type: str
    email_type: str
    hook_type: str
    command_schema: str  # the emit command's JSON Schema; the document is under `kind`
    normalize: Callable[[object], dict[str, Any]]
    prestador: Callable[[dict[str, Any]], str]
    tomador_email: Callable[[dict[str, Any]], str | None]
    mail_document: Callable[[dict[str, Any]], dict[str, Any]]  # the shape e-mails read


def _nfse_prestador(doc: dict[str, Any]) -> str:
    return str(doc["prestador"]["cnpj"])


def _nfse_tomador_email(doc: dict[str, Any]) -> str | None:
    tomador = doc.get("tomador")
    value = tomador.get("email") if isinstance(tomador, dict) else None
    return value if isinstance(value, str) and value else None


NFSE = FocusKind(
    kind="nfse",
    api_path="/v2/nfse",
    emit_type=t.NFSE_EMIT,
    cancel_type=t.NFSE_CANCEL,
    email_type=t.NFSE_EMAIL,
    hook_type=t.NFSE_HOOK,
    command_schema="nfse_emit_command",
    normalize=normalize_nfse,
    prestador=_nfse_prestador,
    tomador_email=_nfse_tomador_email,
    mail_document=lambda doc: doc,
)

NFSEN = FocusKind(
    kind="nfsen",
    api_path="/v2/nfsen",
    emit_type=t.NFSEN_EMIT,
    cancel_type=t.NFSEN_CANCEL,
    email_type=t.NFSEN_EMAIL,
    hook_type=t.NFSEN_HOOK,
    command_schema="nfsen_emit_command",
    normalize=normalize_nfsen,
    prestador=prestador_document,
    tomador_email=tomador_email,
    mail_document=mail_document,
)

BY_KIND: dict[str, FocusKind] = {k.kind: k for k in (NFSE, NFSEN)}
BY_EMIT_TYPE: dict[str, FocusKind] = {k.emit_type: k for k in (NFSE, NFSEN)}
BY_CANCEL_TYPE: dict[str, FocusKind] = {k.cancel_type: k for k in (NFSE, NFSEN)}
BY_EMAIL_TYPE: dict[str, FocusKind] = {k.email_type: k for k in (NFSE, NFSEN)}
BY_HOOK_TYPE: dict[str, FocusKind] = {k.hook_type: k for k in (NFSE, NFSEN)}
