"""Invoice events from billing systems: validation and normalization, and their precedence.

Ordering of one invoice's events (`should_apply`):
- When both the stored state and the event carry the billing system's `sequence`, the higher
  sequence wins: the source knows its own order (it may legitimately reopen a paid invoice).
- Otherwise the key is (occurred_at, rank of the state), rank draft < open < paid < inactive;
  a paid or cancelled invoice is never taken back to a lower rank by time alone, so a late
  "issued" cannot reopen it.
- An invoice never returns to draft (Wuro). An equal key is a duplicate: nothing happens.
An event that loses still fills fields the stored invoice lacks, so out-of-order delivery
converges on the same invoice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from notaflow import schemas
from notaflow.billing.values import BRASILIA, CENT, amount, parse_date, parse_time
from notaflow.brdocs import clean_document, valid_cnpj, valid_cpf
from notaflow.emails import valid_email
from notaflow.errors import InvalidDocument

KINDS = ("issued", "updated", "paid", "cancelled")
STATES = ("draft", "waiting", "paid", "notpaid", "late", "inactive")
OPEN_STATES = ("waiting", "notpaid", "late")
TERMINAL = ("paid", "inactive")
RANK = {"draft": 0, "waiting": 1, "notpaid": 1, "late": 1, "paid": 2, "inactive": 3}
MAX_EVENTS_PER_REQUEST = 500


def invoice_key(tenant: str, uid: str) -> bytes:
    """One invoice's events and commands share a partition, so they stay in order."""
    return f"{tenant}:invoice:{uid}".encode()


@dataclass(frozen=True)
class Position:
    """Where an invoice stands in its own history: the ordering key of the last applied event."""

    state: str
    seq: int | None
    occurred_at: datetime

    @property
    def rank(self) -> int:
        return RANK[self.state]


@dataclass(frozen=True)
class InvoiceEvent:
    event_id: str
    kind: str
    occurred_at: datetime
    sequence: int | None
    uid: str
    state: str | None  # None: an update that keeps the current state
    invoice: dict[str, Any]  # normalized fields present in the event
    tenant: str | None = None

    def position(self, current_state: str | None) -> Position:
        state = self.state or current_state or "waiting"
        return Position(state, self.sequence, self.occurred_at)


def _schema_error(raw: Any) -> InvalidDocument | None:
    for error in schemas.validator("invoice_event").iter_errors(raw):
        path = ".".join(str(p) for p in error.instance_path) or "evento"
        return InvalidDocument(path, f"Parâmetro {path} inválido: {error.message}")
    return None


def _nul_path(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) holding a NUL character."""
    if isinstance(value, str):
        return (path or "evento") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return child
            found = _nul_path(item, child)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_path(item, f"{path}.{i}")
            if found is not None:
                return found
    return None


def normalize_event(raw: Any) -> InvoiceEvent:
    """Validate one event (schema, then dates, amounts and documents) and normalize it:
    amounts as "123.45" strings, codes as strings, CPF/CNPJ as digits."""
    error = _schema_error(raw)
    if error is not None:
        raise error
    nul = _nul_path(raw, "")
    if nul is not None:
        # No fiscal text carries a NUL, and PostgreSQL cannot store one in a text column:
        # refuse it here rather than dead-letter it in the billing consumer.
        raise InvalidDocument(nul, f"Parâmetro {nul} inválido: caractere nulo")
    inv: dict[str, Any] = dict(raw["invoice"])
    kind = raw["type"]
    if "uid" not in inv:
        inv["uid"] = str(inv["id_fatura"])
    for field in ("data_emissao", "data_vencimento", "data_pagamento"):
        if inv.get(field):
            parse_date(inv[field], f"invoice.{field}")
    totals = inv.get("totals")
    if totals:
        inv["totals"] = {k: str(amount(v, f"invoice.totals.{k}")) for k, v in totals.items()}
    if "valor" not in inv:
        if not totals or "total" not in totals:
            raise InvalidDocument("invoice.valor", "Parâmetro invoice.valor não informado")
        inv["valor"] = inv["totals"]["total"]
    inv["valor"] = str(amount(inv["valor"], "invoice.valor"))
    if isinstance(inv.get("detalhamento"), dict) and "valor" in inv["detalhamento"]:
        d = dict(inv["detalhamento"])
        d["valor"] = str(amount(d["valor"], "invoice.detalhamento.valor"))
        inv["detalhamento"] = d
    if inv.get("lines"):
        inv["lines"] = [_line(line, i) for i, line in enumerate(inv["lines"])]
    customer = dict(inv.get("customer") or {})
    if customer.get("cpf_cnpj"):
        doc = clean_document(customer["cpf_cnpj"])
        ok = valid_cpf(doc) if len(doc) == 11 else len(doc) == 14 and valid_cnpj(doc)
        if not ok:
            raise InvalidDocument(
                "invoice.customer.cpf_cnpj", "Parâmetro invoice.customer.cpf_cnpj inválido"
            )
        customer["cpf_cnpj"] = doc
    for field in ("codigo_cliente", "id_cliente_servico"):
        if field in customer:
            customer[field] = str(customer[field])
    if customer.get("email") and not valid_email(customer["email"]):
        raise InvalidDocument("invoice.customer.email", "Parâmetro invoice.customer.email inválido")
    if customer:
        inv["customer"] = customer
    state = _state(kind, inv.pop("state", None))
    if kind == "paid" and not inv.get("data_pagamento"):
        inv["data_pagamento"] = (
            parse_time(raw["occurred_at"], "occurred_at").astimezone(BRASILIA).date().isoformat()
        )
    return InvoiceEvent(
        event_id=raw["event_id"],
        kind=kind,
        occurred_at=parse_time(raw["occurred_at"], "occurred_at"),
        sequence=raw.get("sequence"),
        uid=inv["uid"],
        state=state,
        invoice=inv,
        tenant=raw.get("tenant"),
    )


def _line(line: Mapping[str, Any], i: int) -> dict[str, Any]:
    out: dict[str, Any] = {"descricao": line["descricao"]}
    qty = amount(line.get("quantidade", 1), f"invoice.lines.{i}.quantidade")
    out["quantidade"] = str(qty)
    if "valor_unitario" in line:
        out["valor_unitario"] = str(amount(line["valor_unitario"], f"invoice.lines.{i}"))
    if "total" in line:
        out["total"] = str(amount(line["total"], f"invoice.lines.{i}.total"))
    elif "valor_unitario" in out:
        out["total"] = str((qty * Decimal(out["valor_unitario"])).quantize(CENT))
    return out


def _state(kind: str, given: str | None) -> str | None:
    if kind == "paid":
        return "paid"
    if kind == "cancelled":
        return "inactive"
    if kind == "issued":
        if given in TERMINAL:
            raise InvalidDocument("invoice.state", f"Um evento issued não pode ter state {given}")
        return given or "waiting"
    return given


def should_apply(current: Position | None, incoming: Position) -> bool:
    """Whether an event at `incoming` replaces the invoice at `current` (module docstring)."""
    if current is None:
        return True
    if incoming.state == "draft" and current.state != "draft":
        return False
    if incoming.seq is not None and current.seq is not None:
        return incoming.seq > current.seq
    if current.state in TERMINAL and incoming.rank < current.rank:
        return False
    return (incoming.occurred_at, incoming.rank) > (current.occurred_at, current.rank)


def merge(current: Mapping[str, Any], incoming: Mapping[str, Any], wins: bool) -> dict[str, Any]:
    """The winner's fields override; a loser only fills fields the invoice does not have."""
    if wins:
        return {**current, **incoming}
    return {**incoming, **current}
