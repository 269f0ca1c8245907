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

from ingress.body import BodyNotJson, BodyTooLarge, read_json
from ingress.deps import deps
from ingress.hubsoft import HubsoftError, bearer_tenant
from ingress.responses import FastJSONResponse
from notaflow import billing as b
from notaflow.brdocs import clean_document
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument
from notaflow.store.invoices import FinanceiroQuery, Invoice, InvoiceStore

SOURCE = "notaflow/ingress/hubsoft"
BUSCAS = ("cpf_cnpj", "codigo_cliente", "id_cliente_servico")
ORDER_BY = ("data_vencimento", "valor")
ORDER_TYPES = ("asc", "desc")
SIM_NAO = ("sim", "nao")


class FinanceiroError(HubsoftError):
    def __init__(self, status_code: int, msg: str, errors: list[str] | None = None) -> None:
        super().__init__(status_code, msg)
        self.errors = errors if errors is not None else [msg]

    def response(self) -> FastJSONResponse:
        body = {"status": "error", "msg": self.msg, "errors": self.errors}
        return FastJSONResponse(body, status_code=self.status_code)


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
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 50:
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
    try:
        body = await read_json(request, d.settings.max_body_bytes)
    except BodyTooLarge as exc:
        raise FinanceiroError(413, "Corpo da requisição grande demais") from exc
    except BodyNotJson as exc:
        raise FinanceiroError(400, "O corpo da requisição deve ser um JSON válido") from exc
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
        event = Event(type=b.INVOICE_EVENT, source=SOURCE, data=data, subject=ev.uid,
                      id=ev.event_id, tenant=tenant.id)  # fmt: skip
        records.append((b.invoice_key(tenant.id, ev.uid), event))
    if errors:
        raise FinanceiroError(400, "Evento(s) inválido(s); nada foi registrado", errors)
    failure = await d.bus.publish_many(b.events_topic(d.topics.prefix), records)
    if failure is not None:
        raise FinanceiroError(503, "Serviço temporariamente indisponível; tente novamente")
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
