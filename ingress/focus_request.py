"""The steps every Focus create route takes, once: who calls (the token's tenant), which ref,
the normalised document, and the claim and command with Focus's answers to a refusal. The
NFS-e routes (`ingress.focus_nfse`, also the raw hot route) and NFC-e (`ingress.focus_nfce`)
compose them; the other Focus routes use `authenticate`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.ingress.auth import basic_user
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.intake import Intake
from notaflow.lifecycle import is_issued
from notaflow.nfse import validate_ref
from notaflow.replies import ReplyWaiters
from notaflow.store import ClaimRequest, Document, Tenant
from notaflow.tracing import trace_fields

SOURCE = t.SOURCE_INGRESS


def query_value(request: Request, name: str) -> str | None:
    """One query parameter without building Starlette's full multi-dict (measurable on the
    hot path); the first occurrence wins, as with `query_params.get`."""
    return query_string_value(request.scope.get("query_string", b""), name)


def query_string_value(query_string: bytes, name: str) -> str | None:
    prefix = name.encode() + b"="
    for part in query_string.split(b"&"):
        if part.startswith(prefix):
            return unquote_plus(part[len(prefix) :].decode("latin-1"))
    return None


async def authenticate(request: Request, d: IngressDeps) -> Tenant:
    return await authenticate_header(request.headers.get("authorization", ""), d)


async def authenticate_header(authorization: str, d: IngressDeps) -> Tenant:
    token = basic_user(authorization)
    if token is None:
        raise FOCUS.missing_credentials()
    tenant = await d.tenant_cache.lookup(token)
    if tenant is None:
        raise FOCUS.refused_credentials()
    return tenant


async def note_or_404(d: IngressDeps, tenant: Tenant, kind: str, ref: str) -> Document:
    """The tenant's note, or Focus's 404."""
    doc = await d.documents.get(tenant.id, kind, ref)
    if doc is None:
        raise FOCUS.not_found()
    return doc


def read_ref(query_string: bytes) -> str:
    """`?ref=` of a create route, or Focus's 400."""
    try:
        return validate_ref(query_string_value(query_string, "ref"))
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc


def normalized(normalize: Callable[[Any], dict[str, Any]], raw: Any) -> dict[str, Any]:
    """The document as notaflow keeps and publishes it, or Focus's 400 saying what is wrong."""
    try:
        return normalize(raw)
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc


def command(
    tenant: Tenant,
    ref: str,
    event_type: str,
    data: dict[str, Any],
    trace: Mapping[str, str],
    command_id: str | None = None,
) -> Event:
    """A Focus route's command about the note `ref`: `{tenant, ref, **data}`, keyed by the
    note (`topics.document_key`), with the request's trace headers as they go out
    (`tracing.trace_fields`: traceparent, tracestate, baggage)."""
    return Event(
        type=event_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, **data},
        subject=ref,
        id=command_id or str(uuid.uuid4()),
        tenant=tenant.id,
        **trace_fields(trace),
    )


def not_enabled(document: str) -> FocusError:
    """The company is not the tenant's (or has no way to issue `document`)."""
    return FocusError(
        400, "empresa_nao_habilitada", f"Emitente ainda não habilitado para emissão de {document}"
    )


async def submit(
    intake: Intake,
    tenant: Tenant,
    *,
    kind: str,
    ref: str,
    cnpj: str,
    document: dict[str, Any],
    event_type: str,
    data: dict[str, Any],
    trace: Mapping[str, str],
    waiters: ReplyWaiters | None = None,
) -> str:
    """Claim the ref and publish the create command (`{tenant, ref, **data}`) through the
    intake: the command's id once both hold; Focus's 422 when the ref is taken, 503 when Kafka
    is not there. With `waiters`, the id is registered before publishing (the provider may
    answer quickly) and forgotten on a refusal."""
    command_id = str(uuid.uuid4())
    event = command(tenant, ref, event_type, data, trace, command_id)
    claim = ClaimRequest(tenant.id, kind, ref, cnpj, document, command_id, SOURCE)
    if waiters is not None:
        waiters.register(command_id)
    try:
        await intake.submit(claim, event, t.document_key(tenant.id, kind, ref))
    except RefInUse as exc:
        if waiters is not None:
            waiters.forget(command_id)
        if is_issued(exc.status):
            raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada") from exc
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento") from exc
    except BusUnavailable as exc:
        if waiters is not None:
            waiters.forget(command_id)
        raise FOCUS.unavailable() from exc
    return command_id
