"""Billing rules, pure: invoice event normalization and precedence, e-mail templates, dunning
steps and signed links. No I/O; the store, the ingress and the consumers call these.

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

import base64
import hashlib
import hmac
import html
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from notaflow import schemas
from notaflow.brdocs import clean_document, valid_cnpj, valid_cpf
from notaflow.emails import valid_email
from notaflow.errors import InvalidDocument

# CloudEvents types and topic suffixes (see README, Kafka contract).
INVOICE_EVENT = "br.notaflow.invoice.event"
INVOICE_MAIL = "br.notaflow.invoice.mail"
EVENTS_TOPIC = "billing.events"
COMMANDS_TOPIC = "billing.commands"

KINDS = ("issued", "updated", "paid", "cancelled")
STATES = ("draft", "waiting", "paid", "notpaid", "late", "inactive")
OPEN_STATES = ("waiting", "notpaid", "late")
TERMINAL = ("paid", "inactive")
RANK = {"draft": 0, "waiting": 1, "notpaid": 1, "late": 1, "paid": 2, "inactive": 3}
ACTIONS = ("send_invoice", "dunning_invoice")
DEFAULT_DUNNING_STEPS = (3, 10)
BRASILIA = timezone(timedelta(hours=-3))
MAX_EVENTS_PER_REQUEST = 500
_CENT = Decimal("0.01")


def events_topic(prefix: str) -> str:
    return prefix + EVENTS_TOPIC


def commands_topic(prefix: str) -> str:
    return prefix + COMMANDS_TOPIC


def invoice_key(tenant: str, uid: str) -> bytes:
    """One invoice's events and commands share a partition, so they stay in order."""
    return f"{tenant}:invoice:{uid}".encode()


# -- events ------------------------------------------------------------------------------------


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


_MAX_AMOUNT = Decimal(10) ** 12


def amount(value: Any, field: str) -> Decimal:
    if isinstance(value, bool):
        raise InvalidDocument(field, f"Parâmetro {field} inválido: valor")
    try:
        result = Decimal(str(value).replace(",", "."))
    except InvalidOperation as exc:
        raise InvalidDocument(field, f"Parâmetro {field} inválido: valor") from exc
    # At most 12 integer digits, as the schema's string form: a JSON number may be 1e300, which
    # quantize() (28 digits) refuses with InvalidOperation, as it would a line's qty × price.
    if not result.is_finite() or abs(result) >= _MAX_AMOUNT:
        raise InvalidDocument(field, f"Parâmetro {field} inválido: valor")
    return result.quantize(_CENT, rounding=ROUND_HALF_UP)


def parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidDocument(field, f"Parâmetro {field} inválido: data {value!r}") from exc


def parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidDocument(field, f"Parâmetro {field} inválido: data e hora {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=BRASILIA)


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
        out["total"] = str((qty * Decimal(out["valor_unitario"])).quantize(_CENT))
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


# -- formatting ----------------------------------------------------------------------------------


def format_brl(value: Any) -> str:
    """123.5 -> "R$ 123,50"."""
    q = amount(value, "valor")
    sign = "-" if q < 0 else ""
    us = f"{abs(q):,.2f}"
    return f"{sign}R$ {us.replace(',', '_').replace('.', ',').replace('_', '.')}"


def br_date(value: str | date | None) -> str:
    """ISO date (or date) -> dd/mm/yyyy; "" for none."""
    if not value:
        return ""
    d = value if isinstance(value, date) else date.fromisoformat(value)
    return d.strftime("%d/%m/%Y")


def format_document(value: str) -> str:
    c = clean_document(value or "")
    if len(c) == 11:
        return f"{c[:3]}.{c[3:6]}.{c[6:9]}-{c[9:]}"
    if len(c) == 14:
        return f"{c[:2]}.{c[2:5]}.{c[5:8]}/{c[8:12]}-{c[12:]}"
    return value


# -- templates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    subject: str
    content: str  # HTML with [variables]


DEFAULT_TEMPLATES: dict[str, Template] = {
    "send_invoice": Template(
        subject="Fatura [facture-numero] - [entreprise-nom]",
        content=(
            "<p>Olá [contact-nom],</p>"
            "<p>Segue a fatura <strong>[facture-numero]</strong> emitida em [facture-date], "
            "no valor de <strong>[facture-montant]</strong>, com vencimento em "
            "[facture-echeance].</p>"
            "<p>Linha digitável: [linha-digitavel]</p>"
            '<p><a href="[lien-html]">Ver a fatura</a> · '
            '<a href="[lien-pdf]">Baixar o PDF</a></p>'
            "<p>Atenciosamente,<br>[entreprise-nom]</p>"
        ),
    ),
    "dunning_invoice": Template(
        subject="Lembrete: fatura [facture-numero] vencida em [facture-echeance]",
        content=(
            "<p>Olá [contact-nom],</p>"
            "<p>Não identificamos o pagamento da fatura <strong>[facture-numero]</strong>, "
            "no valor de <strong>[facture-montant]</strong>, vencida em [facture-echeance].</p>"
            "<p>Linha digitável: [linha-digitavel]</p>"
            '<p><a href="[lien-html]">Ver a fatura</a> · '
            '<a href="[lien-pdf]">Baixar o PDF</a></p>'
            "<p>Se o pagamento já foi feito, desconsidere esta mensagem.</p>"
            "<p>Atenciosamente,<br>[entreprise-nom]</p>"
        ),
    ),
}

_VARIABLE = re.compile(r"\[([a-z][a-z0-9-]*)\]")
_TAG = re.compile(r"<[^>]+>")
_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</p>|</div>|</li>|</h[1-6]>")


def template_variables(
    invoice: Mapping[str, Any], issuer_name: str, html_url: str, pdf_url: str
) -> dict[str, str]:
    customer = invoice.get("customer") or {}
    return {
        "lien-html": html_url,
        "lien-pdf": pdf_url,
        "facture-numero": str(invoice.get("number") or invoice.get("uid") or ""),
        "facture-date": br_date(invoice.get("data_emissao")),
        "facture-echeance": br_date(invoice.get("data_vencimento")),
        "facture-montant": format_brl(invoice.get("valor", 0)),
        "facture-paiement": br_date(invoice.get("data_pagamento")),
        "contact-nom": str(customer.get("contato") or customer.get("nome") or "cliente"),
        "client-nom": str(customer.get("nome") or ""),
        "client-email": str(customer.get("email") or ""),
        "client-documento": format_document(str(customer.get("cpf_cnpj") or "")),
        "linha-digitavel": str(invoice.get("linha_digitavel") or "não se aplica"),
        "nosso-numero": str(invoice.get("nosso_numero") or ""),
        "entreprise-nom": issuer_name,
    }


def render_template(text: str, variables: Mapping[str, str], escape: bool) -> str:
    """Replace every known [variable]; unknown ones stay as written."""

    def sub(m: re.Match[str]) -> str:
        value = variables.get(m.group(1))
        if value is None:
            return m.group(0)
        return html.escape(value) if escape else value

    return _VARIABLE.sub(sub, text)


def html_to_text(content: str) -> str:
    text = _BLOCK_END.sub("\n", content)
    text = html.unescape(_TAG.sub("", text))
    return "\n".join(line.strip() for line in text.splitlines()).strip() + "\n"


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    html: str
    text: str


def render_mail(
    template: Template,
    variables: Mapping[str, str],
    subject: str | None = None,
    content: str | None = None,
) -> RenderedMail:
    """The e-mail for a Wuro request: its own subject/content when given (variables still
    replaced; plain text content becomes paragraphs), otherwise the tenant's template."""
    body = content if content else template.content
    if content and "<" not in content:
        body = "".join(f"<p>{html.escape(p)}</p>" for p in content.split("\n\n") if p.strip())
        body = body.replace("\n", "<br>")
    rendered_html = render_template(body, variables, escape=True)
    rendered_subject = render_template(subject or template.subject, variables, escape=False)
    return RenderedMail(
        subject=" ".join(rendered_subject.split()),
        html=rendered_html,
        text=html_to_text(rendered_html),
    )


# -- dunning -------------------------------------------------------------------------------------


def dunning_step(due: date, today: date, steps: tuple[int, ...] | list[int]) -> int | None:
    """The latest reminder step (days after due) reached today; earlier steps a job missed are
    not sent late, the customer gets the current reminder only."""
    overdue = (today - due).days
    reached = [s for s in steps if 0 < s <= overdue]
    return max(reached) if reached else None


def parse_steps(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("dunning steps must be a non-empty list of days")
    steps = sorted({int(v) for v in value})
    if steps[0] < 1 or steps[-1] > 365:
        raise ValueError("dunning steps must be between 1 and 365 days")
    return tuple(steps)


# -- signed links --------------------------------------------------------------------------------

LINK_TTL = 90 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(
    secret: str, tenant: str, uid: str, now: float | None = None, ttl: int = LINK_TTL
) -> str:
    """A token that lets whoever holds it read one invoice (HTML and PDF) until it expires."""
    if not secret:
        raise ValueError("no link signing secret configured")
    expires = int((now if now is not None else time.time()) + ttl)
    payload = f"{tenant}\n{uid}\n{expires}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_link(secret: str, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(tenant, uid) of a valid, unexpired token; None otherwise."""
    if not secret:
        return None
    try:
        payload_b64, mac_b64 = token.split(".", 1)
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, TypeError):
        return None
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        tenant, uid, expires = payload.decode().split("\n")
        if int(expires) < (now if now is not None else time.time()):
            return None
    except ValueError:
        return None
    return tenant, uid


@dataclass(frozen=True)
class Links:
    public_url: str
    secret: str

    def for_invoice(self, tenant: str, uid: str) -> tuple[str, str]:
        """(HTML view, PDF) URLs a customer opens without credentials."""
        token = sign_link(self.secret, tenant, uid)
        base = f"{self.public_url.rstrip('/')}/api/v3.2/invoice/{uid}"
        return f"{base}/html?token={token}", f"{base}/pdf?token={token}"


def link_secret(settings: Any) -> str:
    """`NOTAFLOW_BILLING_LINK_SECRET` (settings.billing_link_secret)."""
    value = getattr(settings, "billing_link_secret", "") or settings.extra.get(
        "billing_link_secret", ""
    )
    return str(value)


def today_brasilia(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(BRASILIA).date()
