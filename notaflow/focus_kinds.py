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


# Each kind's command types (emit, cancel, e-mail, hooks again), as `notaflow.topics` names them.
_TYPES = {
    "nfse": (t.NFSE_EMIT, t.NFSE_CANCEL, t.NFSE_EMAIL, t.NFSE_HOOK),
    "nfsen": (t.NFSEN_EMIT, t.NFSEN_CANCEL, t.NFSEN_EMAIL, t.NFSEN_HOOK),
}


def _focus_kind(
    kind: str,
    normalize: Callable[[object], dict[str, Any]],
    prestador: Callable[[dict[str, Any]], str],
    tomador: Callable[[dict[str, Any]], str | None],
    mail: Callable[[dict[str, Any]], dict[str, Any]],
) -> FocusKind:
    """A kind as Focus names it: its path `/v2/<kind>`, its emit command's schema
    `<kind>_emit_command`, its command types from `_TYPES`."""
    emit, cancel, email, hook = _TYPES[kind]
    return FocusKind(
        kind=kind,
        api_path=f"/v2/{kind}",
        emit_type=emit,
        cancel_type=cancel,
        email_type=email,
        hook_type=hook,
        command_schema=f"{kind}_emit_command",
        normalize=normalize,
        prestador=prestador,
        tomador_email=tomador,
        mail_document=mail,
    )


NFSE = _focus_kind("nfse", normalize_nfse, _nfse_prestador, _nfse_tomador_email, lambda doc: doc)
NFSEN = _focus_kind("nfsen", normalize_nfsen, prestador_document, tomador_email, mail_document)

BY_KIND: dict[str, FocusKind] = {k.kind: k for k in (NFSE, NFSEN)}
BY_EMIT_TYPE: dict[str, FocusKind] = {k.emit_type: k for k in (NFSE, NFSEN)}
BY_CANCEL_TYPE: dict[str, FocusKind] = {k.cancel_type: k for k in (NFSE, NFSEN)}
BY_EMAIL_TYPE: dict[str, FocusKind] = {k.email_type: k for k in (NFSE, NFSEN)}
BY_HOOK_TYPE: dict[str, FocusKind] = {k.hook_type: k for k in (NFSE, NFSEN)}
