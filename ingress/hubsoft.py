"""HubSoft dialect (seed 000): POST /api/v1/integracao/cliente/nota_fiscal/enviar_email.

Synchronous like HubSoft: the e-mails are handed to SMTP by the notification consumer (with
its pause between sends) while the request waits for the per-recipient outcome. Errors are
HubSoft's `{"status": "error", "msg": ...}`; partial success is still `"status": "success"`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable
from notaflow.focus_kinds import BY_KIND, FocusKind
from notaflow.ingress.body import BodyNotJson, BodyTooLarge, read_json
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.errors import IngressError
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import can_email
from notaflow.store import Tenant

SOURCE = "notaflow/ingress/hubsoft"
TIPOS = ("nf_telecom", "nfe", "nfse")
# HubSoft shows Brasília time; Brazil has had no daylight saving time since 2019.
BRASILIA = timezone(timedelta(hours=-3))


class HubsoftError(IngressError):
    def __init__(self, status_code: int, msg: str) -> None:
        super().__init__(msg)
        self.status_code = status_code
        self.msg = msg

    def response(self) -> FastJSONResponse:
        return FastJSONResponse({"status": "error", "msg": self.msg}, status_code=self.status_code)


async def bearer_tenant(request: Request, d: IngressDeps) -> Tenant:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HubsoftError(401, "Token de acesso não informado (Authorization: Bearer <token>)")
    tenant = await d.tenant_cache.lookup(token.strip())
    if tenant is None:
        raise HubsoftError(401, "Token de acesso inválido, expirado ou revogado")
    return tenant


async def enviar_email(request: Request) -> Response:
    d = deps(request)
    tenant = await bearer_tenant(request, d)
    try:
        body = await read_json(request, d.settings.max_body_bytes)
    except BodyTooLarge as exc:
        raise HubsoftError(413, "Corpo da requisição grande demais") from exc
    except BodyNotJson as exc:
        raise HubsoftError(400, "O corpo da requisição deve ser um JSON válido") from exc
    if not isinstance(body, dict):
        raise HubsoftError(400, "O corpo da requisição deve ser um objeto JSON")
    nota_id = _nota_id(body.get("id_nota_fiscal"))
    tipo = body.get("tipo_documento")
    if tipo is None or tipo == "":
        raise HubsoftError(400, "O campo tipo_documento é obrigatório")
    if tipo not in TIPOS:
        raise HubsoftError(400, "tipo_documento deve ser nf_telecom, nfe ou nfse")
    if tipo != "nfse":
        raise HubsoftError(
            400, f"tipo_documento {tipo} não é emitido por esta integração: use nfse"
        )
    adicionais = body.get("email_adicional") or []
    if not isinstance(adicionais, list) or not all(isinstance(e, str) for e in adicionais):
        raise HubsoftError(400, "email_adicional deve ser uma lista de e-mails")
    if len(adicionais) > MAX_PER_REQUEST:
        raise HubsoftError(400, f"email_adicional aceita no máximo {MAX_PER_REQUEST} e-mails")
    doc = await d.documents.by_id(nota_id)
    # tipo_documento nfse names a municipal NFS-e or an NFS-e Nacional: both are services.
    if doc is None or doc.tenant_id != tenant.id or doc.kind not in BY_KIND:
        raise HubsoftError(404, "Nota fiscal não encontrada")
    if not can_email(doc.status):
        raise HubsoftError(400, "A nota fiscal ainda não foi autorizada")
    if not d.settings.smtp_host:
        raise HubsoftError(400, "Nenhum servidor de e-mail válido configurado para o envio")
    focus_kind = BY_KIND[doc.kind]
    registered = focus_kind.tomador_email(doc.payload)
    recipients = list(dict.fromkeys([*([registered] if registered else []), *adicionais]))
    if not recipients:
        raise HubsoftError(
            400, "O cliente não tem e-mail cadastrado e nenhum email_adicional foi informado"
        )
    valid = [r for r in recipients if valid_email(r)]
    results: dict[str, dict[str, Any]] = {}
    if valid:
        results = await _send(d, tenant, focus_kind, doc.ref, valid)
    now = datetime.now(BRASILIA)
    entries = [
        _entry(d, address, results.get(address), now, tipo_documento="nota_fiscal_servico")
        for address in recipients
    ]
    sent = sum(1 for e in entries if e["enviado"])
    return FastJSONResponse(
        {
            "status": "success",
            "msg": f"Um total de {sent}/{len(entries)} email(s) foram enviados com sucesso",
            "emails_enviados": entries,
        }
    )


def _nota_id(value: object) -> int:
    if value is None or value == "":
        raise HubsoftError(400, "O campo id_nota_fiscal é obrigatório")
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # "²".isdigit() too
        raise HubsoftError(400, "id_nota_fiscal deve ser um número")
    return int(text)


async def _send(
    d: IngressDeps, tenant: Tenant, kind: FocusKind, ref: str, emails: list[str]
) -> dict[str, dict[str, Any]]:
    command_id = str(uuid.uuid4())
    event = Event(
        type=kind.email_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, "emails": emails, "sync": True},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
    )
    d.waiters.register(command_id)
    try:
        key = t.document_key(tenant.id, kind.kind, ref)
        await d.bus.publish(d.topics.nfse_commands, event, key)
    except BusUnavailable as exc:
        d.waiters.forget(command_id)
        raise HubsoftError(503, "Serviço temporariamente indisponível; tente novamente") from exc
    outcome = await d.waiters.wait(command_id, d.settings.sync_email_wait)
    if outcome is None:
        raise HubsoftError(
            504, "Tempo esgotado aguardando o servidor de e-mail; os envios continuam na fila"
        )
    return {r["email"]: r for r in outcome.get("results", []) if isinstance(r, dict)}


def _entry(
    d: IngressDeps, address: str, result: dict[str, Any] | None, now: datetime, tipo_documento: str
) -> dict[str, Any]:
    when = now
    if result is not None and result.get("data_envio"):
        when = datetime.fromisoformat(result["data_envio"]).astimezone(BRASILIA)
    erro: str | None
    if result is None:
        enviado, erro, host, ident = False, "Endereço de e-mail inválido", "", None
    else:
        enviado = bool(result.get("enviado"))
        erro = None if enviado else (result.get("mensagem_erro") or "não enviado")
        host, ident = result.get("host") or d.settings.smtp_host, result.get("id")
    return {
        "host": host,
        "email_origem": d.settings.smtp_sender,
        "email_destino": address,
        "tipo_envio": "manual",
        "tipo_documento": tipo_documento,
        "data_envio": when.strftime("%Y-%m-%d %H:%M:%S"),
        "enviado": enviado,
        "mensagem_erro": erro,
        "id_email_enviado": ident,
        "data_envio_br": when.strftime("%d/%m/%Y %H:%M"),
        "data_envio_timestamp": int(when.timestamp() * 1000),
    }


routes = [
    Route("/api/v1/integracao/cliente/nota_fiscal/enviar_email", enviar_email, methods=["POST"]),
]
