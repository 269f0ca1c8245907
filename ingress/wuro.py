"""Wuro dialect (seed 003): `POST /api/v3.2/invoice/{uid}/mail`, and the invoice's signed
HTML and PDF links that the e-mails carry.

Auth: `X-APP-ID` / `X-APP-SECRET`, an app credential of the tenant (`notaflow billing-app
TENANT` prints one; the secret is stored hashed).

The e-mail is rendered here, from the tenant's template for the action (Portuguese defaults),
so the answer is the seed's `{"resultId", "html", "subject"}`; sending goes through Kafka
(billing.commands, key tenant:invoice:uid) to the notification consumer, which attaches the PDF
when `joinPdf` is true. `resultId` is the command id, also the delivery's dedupe key.

Errors (Wuro documents the status codes, not the body; ours):
`{"error": {"code": "<snake_case>", "message": "<sentence>"}}` with 400 `invoice_draft`,
`unknown_action`, `invalid_request`, `no_recipient`; 401 `unauthorized`; 403 `invalid_link`;
404 `not_found`; 503 `unavailable` / `not_configured`.

The links are `GET /api/v3.2/invoice/{uid}/pdf?token=` and `/html?token=`, an HMAC of
(tenant, uid, expiry) with `NOTAFLOW_BILLING_LINK_SECRET`: a customer opens them without
credentials, for 90 days.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from notaflow import billing as b
from notaflow import topics as t
from notaflow.emails import valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable
from notaflow.ingress.auth import MAX_TOKEN_CHARS
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import WURO, WuroError
from notaflow.ingress.openapi_parts import Description
from notaflow.ingress.responses import FastJSONResponse
from notaflow.invoice_pdf import render_invoice_pdf
from notaflow.store.invoices import (
    BillingConfigStore,
    Invoice,
    InvoiceStore,
    compose_mail,
    issuer_for,
)

SOURCE = t.SOURCE_WURO


async def app_tenant(request: Request, d: IngressDeps) -> str:
    app_id = request.headers.get("x-app-id", "").strip()
    secret = request.headers.get("x-app-secret", "").strip()
    if not app_id or not secret:
        raise WURO.missing_credentials()
    too_long = len(app_id) > MAX_TOKEN_CHARS or len(secret) > MAX_TOKEN_CHARS
    # A credential over a few hundred characters cannot exist: refused without a query.
    tenant = None if too_long else await BillingConfigStore(d.engine).tenant_for_app(app_id, secret)
    if tenant is None:
        raise WURO.refused_credentials()
    return tenant


def _links(d: IngressDeps) -> b.Links:
    secret = d.settings.billing_link_secret
    if not secret:
        raise WuroError(503, "not_configured", "Invoice links are not configured")
    return b.Links(d.settings.public_url, secret)


def _email(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not valid_email(value):
        raise WuroError(400, "invalid_request", f"{name} must be an e-mail address")
    return value


def _text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise WuroError(400, "invalid_request", f"{name} must be a string of at most {limit}")
    return value


def _bool(value: Any) -> bool:
    if value in (None, False, "false", "0", 0, ""):
        return False
    if value in (True, "true", "1", 1):
        return True
    raise WuroError(400, "invalid_request", "joinPdf must be a boolean")


async def _invoice(d: IngressDeps, tenant: str, uid: str) -> Invoice:
    invoice = await InvoiceStore(d.engine).get(tenant, uid)
    if invoice is None or invoice.state == "inactive":
        raise WuroError(404, "not_found", "Invoice not found")
    return invoice


async def mail(request: Request) -> Response:
    d = deps(request)
    tenant = await app_tenant(request, d)
    body = await WURO.json(request, d.settings.max_body_bytes)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise WuroError(400, "invalid_request", "Body must be a JSON object")
    action = body.get("action") or "send_invoice"
    if action not in b.ACTIONS:
        raise WuroError(400, "unknown_action", "action must be send_invoice or dunning_invoice")
    to, copyto, reply_to = _email(body, "to"), _email(body, "copyto"), _email(body, "replyTo")
    subject, content = _text(body, "subject", 500), _text(body, "content", 100_000)
    join_pdf = _bool(body.get("joinPdf"))
    invoice = await _invoice(d, tenant, request.path_params["uid"])
    if invoice.state == "draft":
        raise WuroError(400, "invoice_draft", "A draft invoice cannot be sent")
    to = to or (invoice.data.get("customer") or {}).get("email")
    if not to:
        raise WuroError(400, "no_recipient", "The customer has no e-mail: give `to`")
    config = BillingConfigStore(d.engine)
    rendered = await compose_mail(d.engine, config, _links(d), invoice, action, subject, content)
    result_id = str(uuid.uuid4())
    event = Event(
        type=t.INVOICE_MAIL,
        source=SOURCE,
        id=result_id,
        subject=invoice.uid,
        tenant=tenant,
        data={
            "tenant": tenant,
            "uid": invoice.uid,
            "action": action,
            "to": to,
            "copyto": copyto,
            "reply_to": reply_to,
            "subject": rendered.subject,
            "html": rendered.html,
            "text": rendered.text,
            "join_pdf": join_pdf,
        },
    )
    try:
        await d.bus.publish(d.topics.billing_commands, event, b.invoice_key(tenant, invoice.uid))
    except BusUnavailable as exc:
        raise WURO.unavailable() from exc
    return FastJSONResponse(
        {"resultId": result_id, "html": rendered.html, "subject": rendered.subject}
    )


async def _linked(request: Request) -> tuple[IngressDeps, Invoice, dict[str, Any]]:
    d = deps(request)
    found = b.verify_link(d.settings.billing_link_secret, request.query_params.get("token", ""))
    uid = request.path_params["uid"]
    if found is None or found[1] != uid:
        raise WuroError(403, "invalid_link", "Invalid or expired link")
    invoice = await _invoice(d, found[0], uid)
    _steps, policy_issuer = await BillingConfigStore(d.engine).policy(invoice.tenant_id)
    issuer = await issuer_for(d.engine, invoice.tenant_id, invoice.data, policy_issuer)
    return d, invoice, issuer


async def pdf(request: Request) -> Response:
    _d, invoice, issuer = await _linked(request)
    number = invoice.data.get("number") or invoice.uid
    return Response(
        render_invoice_pdf(invoice.data, issuer),
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="fatura-{number}.pdf"',
            "Cache-Control": "private, no-store",
        },
    )


async def view(request: Request) -> Response:
    _d, invoice, issuer = await _linked(request)
    data = invoice.data
    customer = data.get("customer") or {}
    number = html.escape(str(data.get("number") or invoice.uid))
    rows = "".join(
        f"<tr><td>{html.escape(str(line.get('descricao', '')))}</td>"
        f"<td>{html.escape(str(line.get('quantidade', '1')))}</td>"
        f"<td>{html.escape(b.format_brl(line.get('total', 0)))}</td></tr>"
        for line in data.get("lines")
        or [{"descricao": (data.get("detalhamento") or {}).get("descricao", "Serviços"),
             "total": data.get("valor", 0)}]
    )  # fmt: skip
    token = html.escape(request.query_params.get("token", ""), quote=True)
    linha = data.get("linha_digitavel")
    page = (
        f"<!doctype html><html lang=pt-BR><meta charset=utf-8><title>Fatura {number}</title>"
        f"<h1>{html.escape(str(issuer.get('nome') or ''))}</h1>"
        f"<h2>Fatura {number}</h2>"
        f"<p>Cliente: {html.escape(str(customer.get('nome') or customer.get('contato') or ''))}"
        f"</p><p>Emissão: {b.br_date(data.get('data_emissao'))} · "
        f"Vencimento: {b.br_date(data.get('data_vencimento'))}</p>"
        f"<table><tr><th>Descrição</th><th>Qtd.</th><th>Total</th></tr>{rows}</table>"
        f"<p><strong>Total: {html.escape(b.format_brl(data.get('valor', 0)))}</strong></p>"
        + (f"<p>Linha digitável: <code>{html.escape(linha)}</code></p>" if linha else "")
        + f'<p><a href="pdf?token={token}">PDF</a></p></html>'
    )
    return HTMLResponse(page, headers={"Cache-Control": "private, no-store"})


routes = [
    Route("/api/v3.2/invoice/{uid}/mail", mail, methods=["POST"]),
    Route("/api/v3.2/invoice/{uid}/pdf", pdf, methods=["GET"]),
    Route("/api/v3.2/invoice/{uid}/html", view, methods=["GET"]),
]

_ERROR = {
    "description": "Erro",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}
_UID = {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN = {"name": "token", "in": "query", "required": True, "schema": {"type": "string"},
          "description": "Link assinado (HMAC) enviado no e-mail"}  # fmt: skip
_WURO_AUTH: list[dict[str, list[str]]] = [{"wuroAppId": [], "wuroAppSecret": []}]

_SECURITY: dict[str, Any] = {
    "wuroAppId": {"type": "apiKey", "in": "header", "name": "X-APP-ID",
                  "description": "Dialeto Wuro: `notaflow billing-app TENANT`."},
    "wuroAppSecret": {"type": "apiKey", "in": "header", "name": "X-APP-SECRET",
                      "description": "Dialeto Wuro: o segredo, guardado só como hash."},
}  # fmt: skip
_PATHS: dict[str, Any] = {
    "/api/v3.2/invoice/{uid}/mail": {
        "parameters": [_UID],
        "post": {
            "tags": ["Wuro"],
            "operationId": "wuroInvoiceMail",
            "summary": "Enviar a fatura por e-mail (Wuro, seed 003)",
            "description": "Renderiza o modelo do tenant para a ação e publica o envio em "
            "billing.commands; `joinPdf` anexa o PDF da fatura.",
            "security": _WURO_AUTH,
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "action": {"enum": list(b.ACTIONS), "default": "send_invoice"},
                                "to": {"type": "string", "format": "email"},
                                "subject": {"type": "string"},
                                "content": {"type": "string"},
                                "copyto": {"type": "string", "format": "email"},
                                "replyTo": {"type": "string", "format": "email"},
                                "joinPdf": {"type": "boolean", "default": False},
                            },
                        }
                    }
                }
            },
            "responses": {
                "200": {
                    "description": "E-mail renderizado e publicado",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "resultId": {"type": "string"},
                                    "html": {"type": "string"},
                                    "subject": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "400": _ERROR,
                "401": _ERROR,
                "404": _ERROR,
                "503": _ERROR,
                "500": _ERROR,
            },
        },
    },
    "/api/v3.2/invoice/{uid}/pdf": {
        "parameters": [_UID, _TOKEN],
        "get": {
            "tags": ["Wuro"],
            "operationId": "wuroInvoicePdf",
            "summary": "PDF da fatura por link assinado ([lien-pdf])",
            "security": [],
            "responses": {
                "200": {
                    "description": "PDF",
                    "content": {
                        "application/pdf": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "403": _ERROR,
                "404": _ERROR,
                "500": _ERROR,
                "503": _ERROR,
            },
        },
    },
    "/api/v3.2/invoice/{uid}/html": {
        "parameters": [_UID, _TOKEN],
        "get": {
            "tags": ["Wuro"],
            "operationId": "wuroInvoiceHtml",
            "summary": "A fatura em HTML por link assinado ([lien-html])",
            "security": [],
            "responses": {
                "200": {
                    "description": "HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "403": _ERROR,
                "404": _ERROR,
                "500": _ERROR,
                "503": _ERROR,
            },
        },
    },
}

OPENAPI = Description(paths=_PATHS, security_schemes=_SECURITY)
