"""How invoice values are written for a Brazilian reader (e-mails, the HTML view, the PDF)."""

from __future__ import annotations

from datetime import date
from typing import Any

from notaflow.billing.values import amount
from notaflow.brdocs import clean_document


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
