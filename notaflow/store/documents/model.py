"""A document as the store hands it out (one row per tenant + kind + ref), the claims that take
a ref, and the rows behind them: the columns the drivers select and insert, and how a row of
either kind (SQLAlchemy's, a driver's) becomes a Document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now


@dataclass(frozen=True)
class Document:
    id: int
    tenant_id: str
    kind: str
    ref: str
    status: str
    attempt: int
    command_id: str
    provider_ref: str | None
    cnpj_prestador: str
    payload: dict[str, Any]
    result: dict[str, Any]
    erros: list[dict[str, Any]] | None
    submitted_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Claim:
    """What `claim` changed, so `release` can undo it when the command could not be published."""

    document_id: int
    command_id: str
    attempt: int
    # The document a reuse after erro_autorizacao took the ref from, as it was read: `release`
    # puts its row back, and the ingress publishes its state again ahead of the new attempt's
    # command (its writer may have died before publishing it: `ingress.intake`).
    replaced: Document | None = None

    @property
    def previous(self) -> dict[str, Any] | None:
        """The replaced row's columns that the claim changed (None for a new ref)."""
        d = self.replaced
        if d is None:
            return None
        return {
            "status": d.status,
            "attempt": d.attempt,
            "command_id": d.command_id,
            "cnpj_prestador": d.cnpj_prestador,
            "payload": d.payload,
            "provider_ref": d.provider_ref,
            "result": d.result,
            "erros": d.erros,
            "submitted_at": d.submitted_at,
        }


@dataclass(frozen=True)
class ClaimRequest:
    tenant_id: str
    kind: str
    ref: str
    cnpj_prestador: str
    payload: dict[str, Any]
    command_id: str
    source: str


def from_row(row: sa.Row[Any]) -> Document:
    m = row._mapping
    return Document(
        id=m["id"],
        tenant_id=m["tenant_id"],
        kind=m["kind"],
        ref=m["ref"],
        status=m["status"],
        attempt=m["attempt"],
        command_id=m["command_id"],
        provider_ref=m["provider_ref"],
        cnpj_prestador=m["cnpj_prestador"],
        payload=m["payload"] or {},
        result=m["result"] or {},
        erros=m["erros"],
        submitted_at=_utc(m["submitted_at"]),
        created_at=_utc(m["created_at"]) or _now(),
        updated_at=_utc(m["updated_at"]) or _now(),
    )


INSERT_COLUMNS = (
    "tenant_id, kind, ref, status, attempt, command_id, cnpj_prestador, payload, "
    "created_at, updated_at"
)


SELECT_COLUMNS = (
    "id, tenant_id, kind, ref, status, attempt, command_id, provider_ref, cnpj_prestador, "
    "payload, result, erros, submitted_at, created_at, updated_at"
)


def from_raw(row: Sequence[Any]) -> Document:
    """A Document from a driver row in `SELECT_COLUMNS` order: JSON as text, timestamps as
    SQLite's text (SQLAlchemy's storage format) or asyncpg's datetimes."""

    def when(value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return _utc(value)
        return _utc(datetime.fromisoformat(value))

    def json(value: Any) -> Any:
        return None if value is None else orjson.loads(value)

    return Document(
        id=row[0],
        tenant_id=row[1],
        kind=row[2],
        ref=row[3],
        status=row[4],
        attempt=row[5],
        command_id=row[6],
        provider_ref=row[7],
        cnpj_prestador=row[8],
        payload=json(row[9]) or {},
        result=json(row[10]) or {},
        erros=json(row[11]),
        submitted_at=when(row[12]),
        created_at=when(row[13]) or _now(),
        updated_at=when(row[14]) or _now(),
    )
