"""An invoice's values as billing systems send them: amounts (to the cent), dates and times
(a time without a zone is Brasília's), and today in Brasília (the dunning job's day)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from notaflow.errors import InvalidDocument

BRASILIA = timezone(timedelta(hours=-3))
CENT = Decimal("0.01")
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
    return result.quantize(CENT, rounding=ROUND_HALF_UP)


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


def today_brasilia(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(BRASILIA).date()
