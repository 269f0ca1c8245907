"""The Focus callback path of the EmissionConsumer: applied once, checked against Focus when it
cannot be believed as sent, and right whether it comes after our record of the POST's answer
or before it (a crash between the POST and that record)."""

from __future__ import annotations

import asyncio
import time

import pytest

from notaflow import topics as t
from notaflow.consumers.emission import EmissionConsumer
from notaflow.envelope import Event
from notaflow.errors import InvalidDocument
from notaflow.focus_kinds import NFSE
from notaflow.lifecycle import AUTHORIZED, CANCELLED, ERROR, PROCESSING, focus_ref
from testkit.erp_documents import PRESTADOR_CNPJ
from tests.unit.runtime.conftest import JUSTIFICATIVA, TENANT, World

PROCESSANDO = "processando_autorizacao"


async def emitted(world: World, ref: str, **servico: str) -> str:
    """A note handed to Focus by its command; returns our provider ref."""
    event = world.emit_command(ref, document=world.nfse(**servico) if servico else None)
    doc = await world.claim(ref, event)
    await world.command(event)
    return focus_ref(doc.id, doc.attempt)


def forged_authorization(pref: str) -> dict[str, str]:
    """An authorization for our ref naming an XML Focus never made."""
    return {
        "ref": pref,
        "status": AUTHORIZED,
        "cnpj_prestador": PRESTADOR_CNPJ,
        "numero": "1",
        "codigo_verificacao": "AB12-CD3",
        "caminho_xml_nota_fiscal": "/notas_fiscais_servico/forjada.xml",
    }


async def test_an_authorization_after_the_answer_is_applied_with_our_own_xml_name(
    world: World,
) -> None:
    pref = await emitted(world, "r1")
    body = await world.at_focus(pref, "autorizado")
    consultas = world.sandbox.stats.consultas[pref]
    await world.callback(body)
    doc = await world.doc("r1")
    assert doc.status == AUTHORIZED
    assert doc.result["numero"] == body["numero"]
    # Believed as sent: it agrees with the XML downloaded from Focus, no GET spent.
    assert world.sandbox.stats.consultas[pref] == consultas
    ours = doc.result["caminho_xml_nota_fiscal"]
    assert ours != body["caminho_xml_nota_fiscal"]
    stored = await world.docs.get_blob(ours)
    assert stored is not None and f">{body['codigo_verificacao']}<" in stored[1].decode()
    assert world.statuses() == [PROCESSANDO, AUTHORIZED]


async def test_a_duplicate_callback_republishes_the_same_event_and_changes_nothing(
    world: World,
) -> None:
    pref = await emitted(world, "r1")
    body = await world.at_focus(pref, "autorizado")
    await world.callback(body)
    before = await world.doc("r1")
    await world.callback(body)
    assert (await world.doc("r1")).updated_at == before.updated_at
    events = world.bus.events(world.topics.lifecycle)
    assert [e.data["status"] for e in events] == [PROCESSANDO, AUTHORIZED, AUTHORIZED]
    assert events[1].id == events[2].id  # downstream deduplicates the copy


async def test_a_callback_before_the_answer_was_recorded_keeps_the_stream_in_order(
    world: World,
) -> None:
    """Crash after the POST, before its event and record; after the restart the callback is
    fetched ahead of the redelivered command."""
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    await world.focus.emit_document(NFSE.api_path, pref, doc.payload)
    await world.callback(await world.at_focus(pref, "autorizado"))
    applied = await world.doc("r1")
    assert (applied.status, applied.submitted_at is not None) == (AUTHORIZED, True)
    assert world.statuses() == [PROCESSANDO, AUTHORIZED]
    await world.command(event)  # the redelivered command finds the note handed over
    assert world.posts(pref) == 1
    assert world.statuses() == [PROCESSANDO, AUTHORIZED]


async def test_a_refusal_ahead_of_the_hand_over_is_confirmed_under_the_ref_it_names(
    world: World,
) -> None:
    """The POST got through and nothing of it is recorded yet (there is no write before the
    POST, and the process may have died after it): Focus's refusal finds the note by the
    attempt its ref names, is confirmed with Focus under that ref, and applied after the
    hand-over it records."""
    event = world.emit_command("r1", document=world.nfse(discriminacao="Obra [sandbox:erro]"))
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    await world.focus.emit_document(NFSE.api_path, pref, doc.payload)
    assert (await world.doc("r1")).provider_ref is None
    body = await world.at_focus(pref, ERROR)
    consultas = world.sandbox.stats.consultas[pref]
    await world.callback(body)
    applied = await world.doc("r1")
    assert (applied.status, applied.provider_ref) == (ERROR, pref)
    assert applied.submitted_at is not None
    assert world.sandbox.stats.consultas[pref] == consultas + 1
    assert world.statuses() == [PROCESSANDO, ERROR]


async def test_a_callback_for_an_attempt_focus_never_got_changes_nothing(world: World) -> None:
    """A ref of ours names the note before anything is recorded, so a forged callback for a
    note whose POST has not been made reaches the checks: Focus does not know the ref, and
    nothing is applied or published."""
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    forged = forged_authorization(pref)
    await world.callback(forged)
    untouched = await world.doc("r1")
    assert (untouched.status, untouched.provider_ref, untouched.submitted_at) == (
        PROCESSING,
        None,
        None,
    )
    assert world.statuses() == []
    assert world.posts(pref) == 0
    await world.command(event)  # the command still goes through as usual
    assert world.posts(pref) == 1
    assert (await world.doc("r1")).submitted_at is not None


async def test_a_refusal_is_applied_only_as_focus_confirms_it(world: World) -> None:
    pref = await emitted(world, "r1", discriminacao="Obra [sandbox:erro]")
    body = await world.at_focus(pref, ERROR)
    consultas = world.sandbox.stats.consultas[pref]
    await world.callback(body)
    doc = await world.doc("r1")
    assert doc.status == ERROR
    assert doc.erros is not None and doc.erros[0]["codigo"] == "E999"
    assert world.sandbox.stats.consultas[pref] == consultas + 1  # frees the ref: asked first
    assert world.statuses() == [PROCESSANDO, ERROR]


async def test_an_error_whose_event_was_lost_goes_out_before_the_re_emission(
    world: World,
) -> None:
    """The callback's error was recorded and the process died before its event went out. The
    client re-emitted the ref (here straight to Kafka; the ingress's path is tested in
    tests/integration/ingress/test_intake.py) before the callback came again, and that
    redelivery finds the note at its second attempt and may not publish an older status: the
    re-emission sends the error first, under the id its writer would have used."""
    pref = await emitted(world, "r1", discriminacao="Obra [sandbox:erro]")
    body = await world.at_focus(pref, ERROR)
    first = await world.doc("r1")
    key = t.document_key(TENANT, "nfse", "r1")
    event = Event(type=t.FOCUS_NFSE_CALLBACK, source="test", data=body, subject=pref)
    callback = await world.bus.send(world.topics.provider_events, event, key)
    await world.bus.deliver_dying(world.emission, callback, at=lambda e: e.status == ERROR)
    assert (await world.doc("r1")).status == ERROR
    assert world.statuses() == [PROCESSANDO]

    await world.command(world.emit_command("r1"))
    assert world.statuses() == [PROCESSANDO, ERROR, PROCESSANDO]
    error = world.bus.events(world.topics.lifecycle)[1]
    assert error.id == f"nfse-{first.id}-{first.attempt}-{ERROR}"
    assert error.data["erros"][0]["codigo"] == "E999"

    await world.bus.deliver(world.emission, callback)  # the note has moved on: nothing older
    assert world.statuses() == [PROCESSANDO, ERROR, PROCESSANDO]
    assert (await world.doc("r1")).attempt == 2


async def test_a_forged_authorization_is_not_applied(world: World) -> None:
    pref = await emitted(world, "r1", discriminacao="Obra [sandbox:delay=60]")
    forged = forged_authorization(pref)
    await world.callback(forged)
    # The XML is not on Focus: Focus was asked, and it says the note is still processing.
    assert (await world.doc("r1")).status == PROCESSING
    assert world.sandbox.stats.consultas[pref] == 1
    assert world.statuses() == [PROCESSANDO]


async def test_a_processing_callback_is_ignored(world: World) -> None:
    pref = await emitted(world, "r1", discriminacao="Obra [sandbox:delay=60]")
    await world.callback({"ref": pref, "status": PROCESSANDO, "cnpj_prestador": PRESTADOR_CNPJ})
    assert (await world.doc("r1")).status == PROCESSING
    assert world.statuses() == [PROCESSANDO]


async def test_a_callback_for_a_ref_we_never_used_is_an_invalid_document(world: World) -> None:
    with pytest.raises(InvalidDocument, match="ref desconhecida"):
        await world.callback({"ref": "N999A1", "status": AUTHORIZED})


async def test_a_callback_for_an_earlier_attempt_of_a_re_emitted_ref_is_ignored(
    world: World,
) -> None:
    """Focus refused the first attempt; the client emitted the ref again. Focus's repeated
    callback for the first attempt's ref is old news: ignored, not an unknown ref for the
    dead-letter topic, and the new attempt is untouched."""
    first = await emitted(world, "r1", discriminacao="[sandbox:delay=x]")  # refused at the POST
    assert (await world.doc("r1")).status == ERROR
    await world.command(world.emit_command("r1"))  # the client's re-emission: attempt 2
    again = await world.doc("r1")
    assert again.attempt == 2 and first != again.provider_ref
    await world.callback({"ref": first, "status": ERROR, "cnpj_prestador": PRESTADOR_CNPJ})
    assert await world.doc("r1") == again
    assert world.statuses() == [ERROR, ERROR, PROCESSANDO]  # the re-emission sent it again
    # A ref of ours for a note that does not exist, or one we never made: still refused.
    for unknown in (focus_ref(again.id + 1, 1), focus_ref(again.id, 3), "X1"):
        with pytest.raises(InvalidDocument, match="ref desconhecida"):
            await world.callback({"ref": unknown, "status": ERROR})


async def test_a_late_refusal_after_the_cancellation_is_ignored(world: World) -> None:
    pref = await emitted(world, "r1")
    await world.callback(await world.at_focus(pref, AUTHORIZED))
    await world.command(world.cancel_command("r1"), world.cancellation)
    assert (await world.doc("r1")).status == "cancelado"
    await world.callback({"ref": pref, "status": ERROR, "cnpj_prestador": PRESTADOR_CNPJ})
    assert (await world.doc("r1")).status == "cancelado"
    # (The cancel sends the authorization it acts on again, under the same id.)
    assert world.statuses() == [PROCESSANDO, AUTHORIZED, AUTHORIZED, "cancelado"]


# -- `cancelado` after our own DELETE ---------------------------------------------------------


async def authorized_at_focus_and_here(world: World, ref: str) -> str:
    pref = await emitted(world, ref)
    await world.callback(await world.at_focus(pref, AUTHORIZED))
    assert (await world.doc(ref)).status == AUTHORIZED
    return pref


async def test_a_cancelado_callback_waits_for_our_own_cancellation_instead_of_asking(
    world: World,
) -> None:
    """Focus calls back `cancelado` as soon as it answers a DELETE; when the DELETE was ours,
    the cancellation consumer is still recording its answer. The emission consumer saw the
    cancel command go by (it shares the note's key), so the callback waits for that record
    instead of spending a GET to confirm what notaflow itself did."""
    pref = await authorized_at_focus_and_here(world, "r1")
    cancel = await world.send(world.cancel_command("r1"))
    await world.bus.deliver(world.emission, cancel)  # seen going by
    await world.focus.cancel_nfse(pref, JUSTIFICATIVA)  # our DELETE, its answer not recorded yet
    body = await world.at_focus(pref, CANCELLED)
    asked = world.sandbox.stats.consultas[pref]
    waiting = asyncio.create_task(world.callback(body))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert world.sandbox.stats.consultas[pref] == asked  # not asked: waiting for our record
    await world.bus.deliver(world.cancellation, cancel)  # the DELETE's answer recorded
    await asyncio.wait_for(waiting, 5)
    doc = await world.doc("r1")
    assert doc.status == CANCELLED
    history = await world.docs.history(doc.id)
    assert [h["source"] for h in history if h["status"] == CANCELLED] == [t.SOURCE_CANCELLATION]
    # The one GET is the cancellation consumer's, for the XML's path (the DELETE's answer is the
    # status alone); the callback asked nothing.
    assert world.sandbox.stats.consultas[pref] == asked + 1
    assert world.statuses()[-1] == CANCELLED


async def test_a_cancellation_made_elsewhere_is_confirmed_at_once(world: World) -> None:
    """No cancel command went by: Focus's `cancelado` is someone else's doing (its panel,
    another system), confirmed with Focus straight away, as before."""
    pref = await authorized_at_focus_and_here(world, "r1")
    await world.focus.cancel_nfse(pref, JUSTIFICATIVA)
    body = await world.at_focus(pref, CANCELLED)
    asked = world.sandbox.stats.consultas[pref]
    started = time.monotonic()
    await world.callback(body)
    assert time.monotonic() - started < 1.0  # no wait for a record that will not come
    assert (await world.doc("r1")).status == CANCELLED
    assert world.sandbox.stats.consultas[pref] == asked + 1


async def test_a_cancel_seen_but_never_recorded_is_confirmed_after_the_wait(world: World) -> None:
    """The cancel command went by but its cancellation never gets recorded (its consumer is
    down): the callback waits `cancel_settle`, then asks Focus."""
    pref = await authorized_at_focus_and_here(world, "r1")
    settle = 0.3
    emission = EmissionConsumer(
        world.docs, world.tenants, world.focus, world.bus, world.topics, cancel_settle=settle
    ).routes()
    await world.bus.deliver(emission, await world.send(world.cancel_command("r1")))
    await world.focus.cancel_nfse(pref, JUSTIFICATIVA)
    body = await world.at_focus(pref, CANCELLED)
    asked = world.sandbox.stats.consultas[pref]
    started = time.monotonic()
    await world.callback(body, emission)
    assert time.monotonic() - started >= settle
    assert (await world.doc("r1")).status == CANCELLED
    assert world.sandbox.stats.consultas[pref] == asked + 1
