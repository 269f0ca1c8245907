"""The items of the store's group batches, as both drivers receive them: one call each of
`mark_submitted`, `transition`, a re-claim and `put_blob`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Update:
    """`mark_submitted` of one attempt."""

    document_id: int
    attempt: int
    provider_ref: str


@dataclass(frozen=True)
class Transition:
    """One `transition` call, its JSON already serialized (None: leave the column as it is;
    for `detail`: no detail)."""

    document_id: int
    attempt: int
    status: str
    allowed: frozenset[str]  # lifecycle.sources(status), widened by `after`
    source: str
    result: str | None
    erros: str | None
    detail: str | None


@dataclass(frozen=True)
class Reclaim:
    """The re-claim of a document found in erro_autorizacao at `attempt`; payload as JSON. The
    drivers' conditions spell lifecycle.REUSABLE as its one status (`status = ERROR`)."""

    document_id: int
    attempt: int
    command_id: str
    cnpj_prestador: str
    payload: str
    source: str


@dataclass(frozen=True)
class Blob:
    path: str
    tenant_id: str
    content_type: str
    data: bytes


def json_text(value: Any) -> str | None:
    # What the Json column type binds: orjson's text, and None as SQL NULL (not JSON null).
    return None if value is None else orjson.dumps(value).decode()
