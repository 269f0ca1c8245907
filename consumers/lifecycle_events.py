"""Publishing what happened: status changes on the lifecycle topic and answers on the replies
topic. Shared by every consumer so the events look the same whoever made the change."""

from __future__ import annotations

import logging
from typing import Any

from notaflow import topics as t
from notaflow.bus import Publisher
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument, Transient
from notaflow.lifecycle import (
    CANCEL_DONE,
    CANCEL_NOT_FOUND,
    CANCELLED,
    Cancel,
    can_cancel,
    is_final,
)
from notaflow.schemas import validator
from notaflow.store import Document, DocumentStore
from notaflow.tracing import trace_fields
from notaflow.views import status_event

log = logging.getLogger(__name__)


async def publish_status(
    bus: Publisher, topics: t.Topics, doc: Document, source: str, cause: Event
) -> None:
    """A lifecycle event with a deterministic id: a retry after a crash republishes the same
    id, which downstream consumers deduplicate."""
    key, event = status_event(doc, source, cause.trace())
    await bus.publish(topics.lifecycle, event, key)


async def publish_if_current(
    bus: Publisher,
    topics: t.Topics,
    documents: DocumentStore,
    doc: Document,
    source: str,
    cause: Event,
) -> bool:
    """Publish `doc`'s status only if it is still the document's current state (same attempt,
    same status) when it goes out, so the lifecycle stream never goes backwards for a note: a
    handler that read the note before a slow provider call, while something else moved it on
    (a callback applied first, a cancellation), publishes nothing instead of an old status.
    Returns whether it published.

    The re-read is the last thing before the record is handed to the producer, which fixes
    its place in the partition. Whoever moves the note on later publishes after its own
    write, so its status lands after ours. (What this cannot close is two writers of one note
    in the very same instant; the runner's assignment and fencing keep one note's records in
    one process at a time, so inside the emission consumer there is only ever one.)"""
    if is_final(doc.status):
        # Nothing follows it and its ref is never reused (cancelado), so it is current for
        # good. No re-read on the path of a synchronous cancel's answer.
        await publish_status(bus, topics, doc, source, cause)
        return True
    current = await documents.get(doc.tenant_id, doc.kind, doc.ref)
    if (
        current is None
        or current.id != doc.id
        or current.attempt != doc.attempt
        or current.status != doc.status
    ):
        log.info(
            "not publishing %s for %s/%s: the note is %s now",
            doc.status,
            doc.tenant_id,
            doc.ref,
            f"{current.status} (attempt {current.attempt})" if current else "gone",
        )
        return False
    await publish_status(bus, topics, doc, source, cause)
    return True


async def reply(
    bus: Publisher, topics: t.Topics, cause: Event, source: str, data: dict[str, Any]
) -> None:
    """The outcome of a synchronous command, for the ingress waiting on `cause.id`."""
    event = Event(
        type=t.REPLY,
        source=source,
        data={"command_id": cause.id, **data},
        subject=cause.subject,
        tenant=cause.tenant,
        **trace_fields(cause.trace()),
    )
    await bus.publish(topics.replies, event, cause.id.encode())


async def reply_status(
    bus: Publisher,
    topics: t.Topics,
    cause: Event,
    source: str,
    status: str,
    erros: list[dict[str, Any]] | None = None,
) -> None:
    """A cancellation's outcome: `status`, and `erros` when the provider refused."""
    data: dict[str, Any] = {"status": status}
    if erros:
        data["erros"] = erros
    await reply(bus, topics, cause, source, data)


async def cancelled_by(documents: DocumentStore, doc: Document, cause: Event) -> bool:
    """Whether this very command cancelled the note (its redelivery gets the same answer)."""
    for entry in await documents.history(doc.id):
        detail = entry.get("detail")
        if entry["status"] == CANCELLED and isinstance(detail, dict):
            return bool(detail.get("command_id") == cause.id)
    return False


async def note_to_cancel(
    documents: DocumentStore,
    bus: Publisher,
    topics: t.Topics,
    cause: Event,
    source: str,
    schema: str,
    kind: str,
) -> Document | None:
    """The authorized note a cancel command is about, or None once the command has been
    answered here (unknown note, not authorized, already cancelled). A note still being
    authorized makes the command wait: it acts on the emission's outcome."""
    errors = sorted(validator(schema).iter_errors(cause.data), key=str)
    if errors:
        raise InvalidDocument("data", f"comando inválido: {errors[0]}")
    doc = await documents.get(cause.data["tenant"], kind, cause.data["ref"])
    if doc is None:
        await reply_status(bus, topics, cause, source, CANCEL_NOT_FOUND)
        return None
    check = can_cancel(doc.status)
    if check is Cancel.WAIT:
        raise Transient("a nota ainda está em processamento", retry_after=1.0)
    if check is Cancel.ALREADY_CANCELLED:
        mine = await cancelled_by(documents, doc, cause)
        if mine:
            # This command's redelivery: the process that cancelled may have died between
            # the write and the event, so the event goes out again (same id, kept once).
            await publish_status(bus, topics, doc, source, cause)
        await reply_status(bus, topics, cause, source, CANCEL_DONE if mine else check.value)
        return None
    if check is not Cancel.GO:
        await reply_status(bus, topics, cause, source, check.value)
        return None
    # The authorization this cancel acts on goes out again first. Its writer records a state
    # before publishing it, so a process that died between the two left the event to a
    # redelivery; once this cancel has moved the note on, that redelivery finds it cancelled
    # and publishes nothing (an older status would go backwards). Sent here, under its
    # deterministic id (downstream keeps one copy), the stream still reads autorizado ->
    # cancelado and the tomador still hears of the authorization. One record per cancel.
    await publish_status(bus, topics, doc, source, cause)
    return doc
