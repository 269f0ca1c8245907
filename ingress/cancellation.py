"""Synchronous cancellation over Kafka, shared by the NFS-e and NFC-e routes of the Focus
dialect: check the note, publish the command, wait (bounded) for the consumer's answer on the
replies topic, and answer as Focus does."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from notaflow import topics as t
from notaflow.errors import BusUnavailable, InvalidDocument
from notaflow.ingress.account_check import provider_of, refuse_disabled
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.focus_request import authenticate, command, note_or_404
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import CANCEL_DONE, CANCEL_FAILED, Cancel, can_cancel
from notaflow.settings import Settings
from notaflow.store import Document, Tenant
from notaflow.topics import Topics

NAO_AUTORIZADA = "Nota fiscal não autorizada não pode ser cancelada"


def _already_cancelled() -> FocusError:
    return FocusError(400, "nfe_cancelada", "Nota Fiscal já cancelada")


def cancel_route(
    kind: str,
    event_type: str,
    *,
    reason: tuple[str, Callable[[Any], Any]],
    empty_body: Any,
    topic: Callable[[Topics], str],
    wait: Callable[[Settings], float],
    view: Callable[[Document], dict[str, Any]],
    cancelled_body: Callable[[Document | None], dict[str, Any]],
) -> Callable[[Request], Awaitable[Response]]:
    """DELETE of a note of `kind`: the body's reason (`reason` = its field in the command and
    the validator that reads it from the body), then `cancel_and_wait`."""
    field, validate = reason

    async def cancel(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        ref = request.path_params["ref"]
        body = await FOCUS.json(request, d.settings.max_body_bytes, empty=empty_body)
        try:
            value = validate(body)
        except InvalidDocument as exc:
            raise FOCUS.invalid(exc.message) from exc
        return await cancel_and_wait(
            request,
            d,
            tenant,
            kind=kind,
            ref=ref,
            event_type=event_type,
            topic=topic(d.topics),
            data={field: value},
            wait=wait(d.settings),
            view=view,
            cancelled_body=cancelled_body,
        )

    return cancel


async def cancel_and_wait(
    request: Request,
    d: IngressDeps,
    tenant: Tenant,
    *,
    kind: str,
    ref: str,
    event_type: str,
    topic: str,
    data: dict[str, Any],
    wait: float,
    view: Callable[[Document], dict[str, Any]],
    cancelled_body: Callable[[Document | None], dict[str, Any]],
) -> Response:
    doc = await note_or_404(d, tenant, kind, ref)
    # A note still being authorized is no refusal here: the consumer waits for the outcome.
    check = can_cancel(doc.status)
    if check is Cancel.ALREADY_CANCELLED:
        raise _already_cancelled()
    if check is Cancel.NOT_AUTHORIZED:
        raise FocusError(400, "nfe_nao_autorizada", NAO_AUTORIZADA)
    await refuse_disabled(d, tenant.id, doc.cnpj_prestador, provider_of(kind))
    command_id = str(uuid.uuid4())
    event = command(tenant, ref, event_type, data, request.headers, command_id)
    d.waiters.register(command_id)  # before publishing: the answer may be quick
    try:
        await d.bus.publish(topic, event, t.document_key(tenant.id, kind, ref))
    except BusUnavailable as exc:
        d.waiters.forget(command_id)
        raise FOCUS.unavailable() from exc
    outcome = await d.waiters.wait(command_id, wait)
    if outcome is None:  # past the bound: the note as it stands; GET and hooks follow up
        current = await d.documents.get(tenant.id, kind, ref)
        return FastJSONResponse(view(current) if current else {"ref": ref}, status_code=202)
    status = outcome.get("status")
    if status == CANCEL_DONE:
        return FastJSONResponse(cancelled_body(await d.documents.get(tenant.id, kind, ref)))
    if status == CANCEL_FAILED:
        return FastJSONResponse({"status": CANCEL_FAILED, "erros": outcome.get("erros", [])})
    if status == Cancel.ALREADY_CANCELLED.value:
        raise _already_cancelled()
    if status == Cancel.NOT_AUTHORIZED.value:
        raise FocusError(400, "nfe_nao_autorizada", NAO_AUTORIZADA)
    raise FOCUS.not_found()  # nao_encontrado
