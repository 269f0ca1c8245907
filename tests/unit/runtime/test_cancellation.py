"""CancellationConsumer, branch by branch: what a cancel command finds (no note, a note still
being authorized, refused, authorized, cancelled), what Focus answers to the DELETE, and the
answer the waiting ingress gets, also for a redelivered command."""

from __future__ import annotations

import pytest

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.errors import Transient
from notaflow.focus_kinds import NFSE
from notaflow.lifecycle import AUTHORIZED, CANCELLED, ERROR, PROCESSING, focus_ref
from tests.unit.runtime.conftest import JUSTIFICATIVA, TENANT, World


async def authorized(world: World, ref: str, **servico: str) -> str:
    """An authorized note (its command, Focus's decision, the callback); returns its provider
    ref."""
    event = world.emit_command(ref, document=world.nfse(**servico) if servico else None)
    doc = await world.claim(ref, event)
    await world.command(event)
    pref = focus_ref(doc.id, doc.attempt)
    await world.callback(await world.at_focus(pref, AUTHORIZED))
    assert (await world.doc(ref)).status == AUTHORIZED
    return pref


async def test_cancelling_an_unknown_note_answers_nao_encontrado(world: World) -> None:
    await world.command(world.cancel_command("ghost"), world.cancellation)
    assert [r["status"] for r in world.replies()] == ["nao_encontrado"]
    assert world.sandbox.stats.cancellations == {}


async def test_a_cancel_waits_while_the_note_is_being_authorized(world: World) -> None:
    event = world.emit_command("r1", document=world.nfse(discriminacao="Obra [sandbox:delay=60]"))
    await world.claim("r1", event)
    await world.command(event)
    with pytest.raises(Transient, match="processamento"):
        await world.command(world.cancel_command("r1"), world.cancellation)
    assert world.replies() == []
    assert world.sandbox.stats.cancellations == {}


async def test_cancelling_a_refused_note_answers_nfe_nao_autorizada(world: World) -> None:
    event = world.emit_command("r1", document=world.nfse(discriminacao="[sandbox:delay=x]"))
    await world.claim("r1", event)
    await world.command(event)
    assert (await world.doc("r1")).status == ERROR
    await world.command(world.cancel_command("r1"), world.cancellation)
    assert [r["status"] for r in world.replies()] == ["nfe_nao_autorizada"]


async def test_an_authorized_note_is_cancelled_at_focus_and_answered(world: World) -> None:
    pref = await authorized(world, "r1")
    command = world.cancel_command("r1")
    await world.command(command, world.cancellation)
    doc = await world.doc("r1")
    assert doc.status == CANCELLED
    # Focus's cancellation XML is kept under a name of our own before the note shows it.
    ours = doc.result["caminho_xml_cancelamento"]
    assert ours != (await world.at_focus(pref, CANCELLED))["caminho_xml_cancelamento"]
    assert await world.docs.get_blob(ours) is not None
    assert world.sandbox.stats.cancellations[pref] == 1
    assert world.replies() == [{"command_id": command.id, "status": "cancelado"}]
    assert world.statuses()[-1] == CANCELLED


async def test_a_redelivered_cancel_answers_cancelado_again_without_a_second_delete(
    world: World,
) -> None:
    pref = await authorized(world, "r1")
    command = world.cancel_command("r1")
    record = await world.command(command, world.cancellation)
    await world.bus.deliver(world.cancellation, record)
    assert [r["status"] for r in world.replies()] == ["cancelado", "cancelado"]
    assert world.sandbox.stats.cancellations[pref] == 1
    # The redelivery sends the cancellation's event again, under the same id.
    cancellations = [e for e in world.bus.events(world.topics.lifecycle) if e.status == CANCELLED]
    assert len(cancellations) == 2 and len({e.id for e in cancellations}) == 1
    # Another command for the cancelled note: it did not cancel it.
    await world.command(world.cancel_command("r1"), world.cancellation)
    assert world.replies()[-1]["status"] == "nfe_cancelada"


async def test_a_crash_after_the_delete_is_repaired_by_the_redelivery(world: World) -> None:
    """Focus cancelled the note, the process died before recording it: the redelivered command's
    DELETE is answered nfe_cancelada, which means ours got through."""
    pref = await authorized(world, "r1")
    answer = await world.focus.cancel_document(NFSE.api_path, pref, JUSTIFICATIVA)
    assert answer.body["status"] == "cancelado"
    await world.command(world.cancel_command("r1"), world.cancellation)
    doc = await world.doc("r1")
    assert doc.status == CANCELLED
    # The DELETE's refusal names no XML: Focus's GET does, and it is kept.
    assert await world.docs.get_blob(doc.result["caminho_xml_cancelamento"]) is not None
    assert [r["status"] for r in world.replies()] == ["cancelado"]


async def test_a_cancel_focus_refuses_is_answered_with_its_errors(world: World) -> None:
    await authorized(world, "r1", discriminacao="Obra [sandbox:nao_cancela]")
    await world.command(world.cancel_command("r1"), world.cancellation)
    doc = await world.doc("r1")
    assert doc.status == AUTHORIZED
    (answer,) = world.replies()
    assert answer["status"] == "erro_cancelamento"
    assert answer["erros"][0]["codigo"] == "E523"
    history = await world.docs.history(doc.id)
    assert history[-1]["status"] == "erro_cancelamento"


async def test_the_other_consumers_commands_are_left_to_them(world: World) -> None:
    event = world.emit_command("r1")
    await world.claim("r1", event)
    assert not await world.bus.deliver(
        world.cancellation,
        await world.bus.send(world.topics.nfse_commands, event, b"k"),
    )
    assert world.sandbox.stats.posts == {}


async def test_an_authorization_whose_event_was_lost_goes_out_before_the_cancellation(
    world: World,
) -> None:
    """The emission consumer recorded the authorization and died before its event went out.
    The cancel reaches the note first: its redelivered callback then finds it cancelled and
    publishes nothing, so the cancel itself sends the authorization, under its own id, ahead
    of the cancellation (the stream never skips autorizado, and never goes backwards)."""
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    await world.command(event)
    pref = focus_ref(doc.id, doc.attempt)
    body = await world.at_focus(pref, AUTHORIZED)
    callback = await world.bus.send(
        world.topics.provider_events,
        Event(type=t.FOCUS_NFSE_CALLBACK, source="test", data=body, subject=pref),
        t.document_key(TENANT, "nfse", "r1"),
    )
    await world.bus.deliver_dying(world.emission, callback)
    assert (await world.doc("r1")).status == AUTHORIZED
    assert world.statuses() == [PROCESSING]

    await world.command(world.cancel_command("r1"), world.cancellation)
    assert world.statuses() == [PROCESSING, AUTHORIZED, CANCELLED]
    authorization = world.bus.events(world.topics.lifecycle)[1]
    assert authorization.id == f"nfse-{doc.id}-{doc.attempt}-{AUTHORIZED}"
    assert authorization.data["numero"] == (await world.doc("r1")).result["numero"]

    # The callback's redelivery, now: the note has moved on, nothing older goes out.
    await world.bus.deliver(world.emission, callback)
    assert world.statuses() == [PROCESSING, AUTHORIZED, CANCELLED]


async def test_a_cancel_sends_the_authorization_again_under_the_same_id(world: World) -> None:
    """When the authorization did go out, the cancel's copy carries the same id, which the
    notification consumer's delivery rows keep once."""
    await authorized(world, "r1")
    await world.command(world.cancel_command("r1"), world.cancellation)
    events = world.bus.events(world.topics.lifecycle)
    assert [e.data["status"] for e in events] == [PROCESSING, AUTHORIZED, AUTHORIZED, CANCELLED]
    assert events[1].id == events[2].id


async def test_a_cancellation_whose_event_was_lost_goes_out_with_the_redelivery(
    world: World,
) -> None:
    """The cancellation consumer recorded the cancellation and died before its event (and
    its answer) went out: the redelivered command, which finds it cancelled the note itself,
    sends both."""
    pref = await authorized(world, "r1")
    command = world.cancel_command("r1")
    record = await world.send(command)
    await world.bus.deliver_dying(world.cancellation, record, at=lambda e: e.status == CANCELLED)
    assert (await world.doc("r1")).status == CANCELLED
    assert CANCELLED not in world.statuses()
    assert world.replies() == []

    await world.bus.deliver(world.cancellation, record)
    assert world.statuses()[-1] == CANCELLED
    assert world.replies() == [{"command_id": command.id, "status": "cancelado"}]
    assert world.sandbox.stats.cancellations[pref] == 1
