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
from notaflow.accounts import AccountDisabled, Provider
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable
from notaflow.focus_kinds import BY_KIND, FocusKind
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import HUBSOFT, HubsoftError
from notaflow.ingress.openapi_parts import HUBSOFT_AUTH, Description, hubsoft_error, json_response
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import can_email
from notaflow.store import Tenant

SOURCE = t.SOURCE_HUBSOFT
TIPOS = ("nf_telecom", "nfe", "nfse")
# HubSoft shows Brasília time; Brazil has had no daylight saving time since 2019.
BRASILIA = timezone(timedelta(hours=-3))


async def bearer_tenant(request: Request, d: IngressDeps) -> Tenant:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HUBSOFT.missing_credentials()
    tenant = await d.tenant_cache.lookup(token.strip())
    if tenant is None:
        raise HUBSOFT.refused_credentials()
    return tenant


async def enviar_email(request: Request) -> Response:
    d = deps(request)
    tenant = await bearer_tenant(request, d)
    body = await HUBSOFT.json(request, d.settings.max_body_bytes)
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
    # The tenant's own SMTP server (provider accounts, issue 15), else the global one.
    try:
        own = await d.accounts.account(tenant.id, doc.cnpj_prestador, Provider.SMTP)
    except AccountDisabled as exc:
        raise HubsoftError(403, "Conta de e-mail (SMTP) do emitente desabilitada") from exc
    if not d.settings.smtp_host and own is None:
        raise HubsoftError(400, "Nenhum servidor de e-mail válido configurado para o envio")
    sender = str(own.config["sender"]) if own is not None else d.settings.smtp_sender
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
        _entry(d, address, results.get(address), now, "nota_fiscal_servico", sender)
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
        raise HUBSOFT.unavailable() from exc
    outcome = await d.waiters.wait(command_id, d.settings.sync_email_wait)
    if outcome is None:
        raise HubsoftError(
            504, "Tempo esgotado aguardando o servidor de e-mail; os envios continuam na fila"
        )
    return {r["email"]: r for r in outcome.get("results", []) if isinstance(r, dict)}


def _entry(
    d: IngressDeps,
    address: str,
    result: dict[str, Any] | None,
    now: datetime,
    tipo_documento: str,
    sender: str,
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
        "email_origem": sender,
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

_STRING = {"type": "string"}
OPENAPI = Description(
    paths={
        "/api/v1/integracao/cliente/nota_fiscal/enviar_email": {
            "post": {
                "tags": ["HubSoft"],
                "operationId": "hubsoftEnviarEmail",
                "summary": "Enviar a nota por e-mail (HubSoft, síncrono)",
                "description": "Espera o envio (até NOTAFLOW_SYNC_EMAIL_WAIT) e responde uma "
                "entrada por destinatário; sucesso parcial é `status: success`.",
                "security": HUBSOFT_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id_nota_fiscal", "tipo_documento"],
                                "properties": {
                                    "id_nota_fiscal": {"type": ["integer", "string"]},
                                    "tipo_documento": {"enum": ["nfse", "nfe", "nf_telecom"]},
                                    "email_adicional": {
                                        "type": "array",
                                        "maxItems": 10,
                                        "items": {"type": "string"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": json_response(
                        {"$ref": "#/components/schemas/HubsoftEmailSent"}, "Enviados"
                    ),
                    "400": hubsoft_error(
                        "Campo ausente ou inválido, nota não autorizada, `nfe`/`nf_telecom` "
                        "(não emitidos aqui), sem servidor SMTP configurado, sem destinatários"
                    ),
                    "401": hubsoft_error("Token ausente, inválido ou revogado"),
                    "404": hubsoft_error("Nota fiscal não encontrada"),
                    "413": hubsoft_error("Corpo grande demais"),
                    "503": hubsoft_error(
                        "Kafka ou o banco de dados indisponível; nada foi enviado"
                    ),
                    "504": hubsoft_error("Tempo esgotado; os envios continuam na fila"),
                    "500": hubsoft_error("Erro interno"),
                },
            }
        },
    },
    schemas={
        "HubsoftEmailSent": {
            "type": "object",
            "required": ["status", "msg", "emails_enviados"],
            "properties": {
                "status": {"const": "success"},
                "msg": _STRING,
                "emails_enviados": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "host": _STRING,
                            "email_origem": _STRING,
                            "email_destino": _STRING,
                            "tipo_envio": _STRING,
                            "tipo_documento": _STRING,
                            "data_envio": _STRING,
                            "enviado": {"type": "boolean"},
                            "mensagem_erro": {"type": ["string", "null"]},
                            "id_email_enviado": {},
                            "data_envio_br": _STRING,
                            "data_envio_timestamp": {"type": "integer"},
                        },
                    },
                },
            },
        },
    },
)
