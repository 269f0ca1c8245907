"""HubSoft dialect, billing (seed 004): the customer's invoices, and invoice events in.

`GET /api/v1/integracao/cliente/financeiro` answers from the invoice read model, exactly in the
seed's shape (`"status": "suscess"` sic: clients compare it; dates dd/mm/yyyy; amounts as
numbers; `data_pagamento` null while open). Parameters, defaults and limits are the seed's; a
bad one is a HubSoft error `{"status": "error", "msg", "errors": [...]}` with 400.

`POST /api/v1/integracao/faturas/eventos` is for billing systems without Kafka: one event or a
list (`schemas/invoice_event.schema.json`), all validated before any is published (all or
nothing), then published to billing.events keyed by invoice; 202 once Kafka acknowledged.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import billing as b
from notaflow import topics as t
from notaflow.brdocs import clean_document
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument
from notaflow.ingress.deps import deps
from notaflow.ingress.dialects import HUBSOFT_FINANCEIRO, FinanceiroError
from notaflow.ingress.hubsoft import bearer_tenant
from notaflow.ingress.openapi_parts import Description
from notaflow.ingress.responses import FastJSONResponse
from notaflow.store.invoices import FinanceiroQuery, Invoice, InvoiceStore

SOURCE = t.SOURCE_HUBSOFT
BUSCAS = ("cpf_cnpj", "codigo_cliente", "id_cliente_servico")
ORDER_BY = ("data_vencimento", "valor")
ORDER_TYPES = ("asc", "desc")
SIM_NAO = ("sim", "nao")


def _choice(params: Any, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise FinanceiroError(400, f"O parâmetro {name} deve ser {', '.join(allowed)}")
    return str(value)


def _date(params: Any, name: str) -> date | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise FinanceiroError(400, f"O parâmetro {name} deve estar no formato YYYY-MM-DD") from exc


def parse_query(params: Any) -> FinanceiroQuery:
    """The seed's parameters with their defaults and limits."""
    busca = params.get("busca")
    if not busca:
        raise FinanceiroError(400, "O parâmetro busca é obrigatório")
    if busca not in BUSCAS:
        raise FinanceiroError(400, f"O parâmetro busca deve ser {', '.join(BUSCAS)}")
    termo = (params.get("termo_busca") or "").strip()
    if not termo:
        raise FinanceiroError(400, "O parâmetro termo_busca é obrigatório")
    if len(termo) > 64:
        raise FinanceiroError(400, "O parâmetro termo_busca é longo demais")
    if busca == "cpf_cnpj":
        termo = clean_document(termo)
    raw_limit = params.get("limit")
    limit = 20
    if raw_limit not in (None, ""):
        # Length first: int() refuses strings over 4,300 digits with a ValueError (a 500 here).
        digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3
        if not digits or not 1 <= int(raw_limit) <= 50:
            raise FinanceiroError(400, "O parâmetro limit deve ser um número entre 1 e 50")
        limit = int(raw_limit)
    inicio, fim = _date(params, "data_inicio"), _date(params, "data_fim")
    if inicio and fim and inicio > fim:
        raise FinanceiroError(400, "O parâmetro data_inicio deve ser anterior a data_fim")
    return FinanceiroQuery(
        busca=busca,
        termo=termo,
        limit=limit,
        apenas_pendente=_choice(params, "apenas_pendente", SIM_NAO, "sim") == "sim",
        order_by=_choice(params, "order_by", ORDER_BY, "data_vencimento"),
        descending=_choice(params, "order_type", ORDER_TYPES, "asc") == "desc",
        data_inicio=inicio,
        data_fim=fim,
    )


def _number(value: Any) -> int | float:
    """132.5 stays 132.5, 10.00 becomes 10: as HubSoft shows amounts."""
    d = Decimal(str(value))
    return int(d) if d == d.to_integral_value() else float(d)


def fatura(inv: Invoice) -> dict[str, Any]:
    data = inv.data
    det = data.get("detalhamento")
    return {
        "id_fatura": inv.id_fatura,
        "nosso_numero": data.get("nosso_numero"),
        "nosso_numero_dv": data.get("nosso_numero_dv"),
        "linha_digitavel": data.get("linha_digitavel"),
        "tipo_cobranca": data.get("tipo_cobranca"),
        "valor": _number(inv.valor),
        "data_vencimento": inv.data_vencimento.strftime("%d/%m/%Y"),
        "data_pagamento": inv.data_pagamento.strftime("%d/%m/%Y") if inv.data_pagamento else None,
        "detalhamento": (
            {"descricao": det.get("descricao", ""), "valor": _number(det.get("valor", 0))}
            if isinstance(det, dict)
            else None
        ),
    }


async def financeiro(request: Request) -> Response:
    d = deps(request)
    tenant = await bearer_tenant(request, d)
    query = parse_query(request.query_params)
    found = await InvoiceStore(d.engine).financeiro(tenant.id, query)
    return FastJSONResponse(
        {
            "status": "suscess",
            "msg": "Dados consultados com sucesso",
            "faturas": [fatura(inv) for inv in found],
        }
    )


async def eventos(request: Request) -> Response:
    d = deps(request)
    tenant = await bearer_tenant(request, d)
    body = await HUBSOFT_FINANCEIRO.json(request, d.settings.max_body_bytes)
    if isinstance(body, dict) and isinstance(body.get("eventos"), list):
        body = body["eventos"]
    items = body if isinstance(body, list) else [body]
    if not items:
        raise FinanceiroError(400, "Nenhum evento informado")
    if len(items) > b.MAX_EVENTS_PER_REQUEST:
        raise FinanceiroError(400, f"No máximo {b.MAX_EVENTS_PER_REQUEST} eventos por requisição")
    errors: list[str] = []
    records: list[tuple[bytes, Event]] = []
    for i, raw in enumerate(items):
        try:
            if isinstance(raw, dict) and raw.get("tenant") not in (None, tenant.id):
                raise InvalidDocument("tenant", "tenant diferente do token")
            ev = b.normalize_event(raw)
        except InvalidDocument as exc:
            errors.append(f"eventos[{i}]: {exc.message}")
            continue
        data = {**raw, "tenant": tenant.id}
        event = Event(type=t.INVOICE_EVENT, source=SOURCE, data=data, subject=ev.uid,
                      id=ev.event_id, tenant=tenant.id)  # fmt: skip
        records.append((b.invoice_key(tenant.id, ev.uid), event))
    if errors:
        raise FinanceiroError(400, "Evento(s) inválido(s); nada foi registrado", errors)
    try:
        await d.bus.publish_many(d.topics.billing_events, records)
    except BusUnavailable as exc:
        raise HUBSOFT_FINANCEIRO.unavailable() from exc
    return FastJSONResponse(
        {
            "status": "success",
            "msg": f"{len(records)} evento(s) recebido(s)",
            "eventos": [{"event_id": e.id, "uid": e.subject} for _, e in records],
        },
        status_code=202,
    )


routes = [
    Route("/api/v1/integracao/cliente/financeiro", financeiro, methods=["GET"]),
    Route("/api/v1/integracao/faturas/eventos", eventos, methods=["POST"]),
]

_ERROR = {
    "type": "object",
    "required": ["status", "msg"],
    "properties": {
        "status": {"const": "error"},
        "msg": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}  # fmt: skip


_DATE = {"type": "string", "format": "date"}
_FATURA = {
    "type": "object",
    "properties": {
        "id_fatura": {"type": "integer"},
        "nosso_numero": {"type": ["string", "null"]},
        "nosso_numero_dv": {"type": ["string", "null"]},
        "linha_digitavel": {"type": ["string", "null"]},
        "tipo_cobranca": {"type": ["string", "null"]},
        "valor": {"type": "number"},
        "data_vencimento": {"type": "string", "description": "dd/mm/aaaa"},
        "data_pagamento": {"type": ["string", "null"], "description": "null em aberto"},
        "detalhamento": {
            "type": ["object", "null"],
            "properties": {"descricao": {"type": "string"}, "valor": {"type": "number"}},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/api/v1/integracao/cliente/financeiro": {
        "get": {
            "tags": ["HubSoft"],
            "operationId": "hubsoftFinanceiro",
            "summary": "Faturas do cliente (HubSoft, seed 004)",
            "description": "Da read model de faturas; `status` é `suscess` como no HubSoft.",
            "security": [{"hubsoftBearer": []}],
            "parameters": [
                _query("busca", {"enum": list(BUSCAS)}, "Tipo de busca", True),
                _query("termo_busca", {"type": "string", "maxLength": 64}, "Termo", True),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 50, "default": 20},
                    "Limite de resultados",
                ),
                _query(
                    "apenas_pendente",
                    {"enum": list(SIM_NAO), "default": "sim"},
                    "Apenas faturas pendentes",
                ),
                _query(
                    "order_by", {"enum": list(ORDER_BY), "default": "data_vencimento"}, "Ordenação"
                ),
                _query("order_type", {"enum": list(ORDER_TYPES), "default": "asc"}, "Sentido"),
                _query("data_inicio", _DATE, "Vencimento a partir de (YYYY-MM-DD)"),
                _query("data_fim", _DATE, "Vencimento até (YYYY-MM-DD)"),
            ],
            "responses": {
                "200": {
                    "description": "Faturas",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"const": "suscess"},
                                    "msg": {"type": "string"},
                                    "faturas": {"type": "array", "items": _FATURA},
                                },
                            }
                        }
                    },
                },
                "400": _error("Parâmetro ausente ou inválido"),
                "401": _error("Token ausente, inválido ou revogado"),
                "500": _error("Erro interno"),
                "503": _error("Banco de dados indisponível; tente de novo"),
            },
        }
    },
    "/api/v1/integracao/faturas/eventos": {
        "post": {
            "tags": ["HubSoft"],
            "operationId": "faturasEventos",
            "summary": "Eventos de faturas (issued, updated, paid, cancelled) para billing.events",
            "description": "Um evento ou uma lista (até 500), no formato de "
            "`schemas/invoice_event.schema.json`; todos validados antes de publicar.",
            "security": [{"hubsoftBearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": ["object", "array"], "items": {"type": "object"}}
                    }
                },
            },
            "responses": {
                "202": {"description": "Publicados no Kafka"},
                "400": _error("Evento(s) inválido(s); nada publicado"),
                "401": _error("Token ausente, inválido ou revogado"),
                "413": _error("Corpo grande demais"),
                "503": _error("Kafka indisponível; nada publicado"),
                "500": _error("Erro interno"),
            },
        }
    },
}

OPENAPI = Description(paths=_PATHS)
