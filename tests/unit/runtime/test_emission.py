"""EmissionConsumer, branch by branch: the idempotency of emit commands and the order of their
effects across crashes (claim, provider ref, POST, lifecycle event, hand-over record)."""

from __future__ import annotations

import pytest

from notaflow import topics as t
from notaflow.errors import BusUnavailable, InvalidDocument, Transient
from notaflow.focus_kinds import NFSE
from notaflow.lifecycle import ERROR, PROCESSING, focus_ref
from tests.unit.runtime.conftest import TENANT, World

PROCESSANDO = "processando_autorizacao"


async def test_a_command_claimed_by_the_ingress_is_posted_announced_and_recorded(
    world: World,
) -> None:
    event = world.emit_command("r1")
    claimed = await world.claim("r1", event)
    record = await world.command(event)
    doc = await world.doc("r1")
    pref = focus_ref(claimed.id, claimed.attempt)
    assert (doc.status, doc.provider_ref, doc.submitted_at is not None) == (PROCESSING, pref, True)
    assert world.posts(pref) == 1
    assert world.statuses() == [PROCESSANDO]
    assert world.bus.committed(record.topic, record.partition) == record.offset + 1


async def test_a_redelivered_command_posts_nothing_and_announces_nothing(world: World) -> None:
    event = world.emit_command("r1")
    claimed = await world.claim("r1", event)
    record = await world.command(event)
    await world.bus.deliver(world.emission, record)  # the same record again (a redelivery)
    assert world.posts(focus_ref(claimed.id, claimed.attempt)) == 1
    assert world.statuses() == [PROCESSANDO]


async def test_a_command_published_straight_to_kafka_claims_its_ref(world: World) -> None:
    await world.command(world.emit_command("direct"))
    doc = await world.doc("direct")
    assert (doc.status, doc.attempt, doc.submitted_at is not None) == (PROCESSING, 1, True)
    assert world.posts(focus_ref(doc.id, doc.attempt)) == 1


async def test_a_crash_after_the_post_is_repaired_by_the_redelivery(world: World) -> None:
    """The POST got through, the process died before the event and the hand-over record: the
    redelivered command POSTs the same provider ref again, Focus answers 422 for it (ours), and
    that counts as accepted: the event goes out and the hand-over is recorded."""
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    first = await world.focus.emit_document(NFSE.api_path, pref, doc.payload)
    assert first.status_code == 202
    await world.command(event)
    again = await world.doc("r1")
    assert (again.status, again.submitted_at is not None) == (PROCESSING, True)
    assert world.posts(pref) == 2  # the second was answered 422 em_processamento
    assert world.statuses() == [PROCESSANDO]


async def test_a_retry_after_the_broker_failed_the_event_does_not_post_again(
    world: World,
) -> None:
    """Focus took the note, then the broker refused the lifecycle event: the record is retried
    in this process, which knows Focus has it, so no second POST (a 422 at Focus, but one of
    the company's 100 requests a minute) before the event and the hand-over record."""
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    record = await world.send(event)
    world.bus.unavailable = BusUnavailable("Kafka is away")
    with pytest.raises(BusUnavailable):
        await world.bus.deliver(world.emission, record)
    world.bus.unavailable = None
    assert (await world.doc("r1")).submitted_at is None
    await world.bus.deliver(world.emission, record)  # the runner's retry
    assert world.posts(pref) == 1
    assert world.statuses() == [PROCESSANDO]
    assert (await world.doc("r1")).submitted_at is not None


async def test_a_transient_provider_error_leaves_the_command_to_retry(world: World) -> None:
    event = world.emit_command("r1", document=world.nfse(discriminacao="Obra [sandbox:http500=1]"))
    doc = await world.claim("r1", event)
    pref = focus_ref(doc.id, doc.attempt)
    key = t.document_key(TENANT, "nfse", "r1")
    record = await world.bus.send(world.topics.nfse_commands, event, key)
    with pytest.raises(Transient, match="HTTP 500"):
        await world.bus.deliver(world.emission, record)
    # Nothing written for the attempt (no write before the POST), and a callback racing it
    # still finds the note by the attempt its ref names.
    failed = await world.doc("r1")
    assert (failed.provider_ref, failed.submitted_at) == (None, None)
    found = await world.docs.by_provider_ref(pref)
    assert found is not None and found.id == doc.id
    assert world.statuses() == []
    assert world.bus.committed(record.topic, record.partition) == record.offset
    await world.bus.deliver(world.emission, record)  # the runner's retry
    assert (await world.doc("r1")).submitted_at is not None
    assert world.posts(pref) == 2
    assert world.statuses() == [PROCESSANDO]


async def test_a_provider_refusal_is_a_final_explained_error(world: World) -> None:
    # An unreadable sandbox marker: Focus answers 400 to the POST itself.
    event = world.emit_command("r1", document=world.nfse(discriminacao="[sandbox:delay=x]"))
    await world.claim("r1", event)
    await world.command(event)
    doc = await world.doc("r1")
    assert doc.status == ERROR
    assert doc.erros and "Marcador do sandbox" in str(doc.erros[0]["mensagem"])
    assert world.statuses() == [ERROR]


async def test_a_refusal_whose_event_was_lost_goes_out_with_the_redelivery(
    world: World,
) -> None:
    """Focus refused the document, the refusal was recorded, the process died before its
    event: the redelivered command finds the outcome it wrote and sends the event then."""
    event = world.emit_command("r1", document=world.nfse(discriminacao="[sandbox:delay=x]"))
    doc = await world.claim("r1", event)
    record = await world.send(event)
    await world.bus.deliver_dying(world.emission, record)
    assert (await world.doc("r1")).status == ERROR
    assert world.statuses() == []
    await world.bus.deliver(world.emission, record)
    (refusal,) = world.bus.events(world.topics.lifecycle)
    assert refusal.data["status"] == ERROR
    assert refusal.id == f"nfse-{doc.id}-{doc.attempt}-{ERROR}"


async def test_a_refused_ref_is_reused_by_a_new_command_as_a_new_attempt(world: World) -> None:
    refused = world.emit_command("r1", document=world.nfse(discriminacao="[sandbox:delay=x]"))
    await world.claim("r1", refused)
    await world.command(refused)
    await world.command(world.emit_command("r1"))  # a new command id: the client's retry
    doc = await world.doc("r1")
    assert (doc.status, doc.attempt, doc.provider_ref) == (PROCESSING, 2, f"N{doc.id}A2")
    assert world.posts(f"N{doc.id}A2") == 1
    # The error goes out again ahead of the new attempt, under its id (kept once downstream).
    assert world.statuses() == [ERROR, ERROR, PROCESSANDO]
    first, again, _ = world.bus.events(world.topics.lifecycle)
    assert first.id == again.id == f"nfse-{doc.id}-1-{ERROR}"


async def test_a_command_superseded_by_another_is_skipped(world: World) -> None:
    current = world.emit_command("r1")
    doc = await world.claim("r1", current)
    await world.command(world.emit_command("r1"))  # another id, while r1 is processing
    assert world.posts(focus_ref(doc.id, doc.attempt)) == 0
    assert (await world.doc("r1")).command_id == current.id
    assert world.statuses() == []


async def test_a_redelivered_command_after_the_outcome_does_nothing(world: World) -> None:
    event = world.emit_command("r1")
    doc = await world.claim("r1", event)
    record = await world.command(event)
    pref = focus_ref(doc.id, doc.attempt)
    await world.callback(await world.at_focus(pref, "autorizado"))
    await world.bus.deliver(world.emission, record)
    assert world.posts(pref) == 1
    assert world.statuses() == [PROCESSANDO, "autorizado"]


async def test_an_unknown_tenant_or_company_is_an_invalid_document(world: World) -> None:
    stranger = world.emit_command("r1")
    stranger.data["tenant"] = "nobody"
    with pytest.raises(InvalidDocument, match="tenant desconhecido"):
        await world.command(stranger)
    other = world.nfse()
    other["prestador"]["cnpj"] = "07504505000132"  # valid, but not one of acme's companies
    with pytest.raises(InvalidDocument, match="empresa_nao_habilitada"):
        await world.command(world.emit_command("r2", document=other))
    assert world.sandbox.stats.posts == {}


async def test_a_command_outside_its_schema_is_an_invalid_document(world: World) -> None:
    event = world.emit_command("r1")
    del event.data["ref"]
    with pytest.raises(InvalidDocument, match="comando inválido"):
        await world.command(event)


async def test_the_other_consumers_commands_are_left_to_them(world: World) -> None:
    """A cancel command is the cancellation consumer's: the emission consumer only notes that
    it went by (its `cancelado` callback then waits for our record, see test_callbacks), and
    answers nothing, asks Focus nothing."""
    key = t.document_key(TENANT, "nfse", "r1")
    record = await world.bus.send(world.topics.nfse_commands, world.cancel_command("r1"), key)
    await world.bus.deliver(world.emission, record)
    assert world.bus.records(world.topics.replies) == []
    assert world.bus.records(world.topics.lifecycle) == []
    assert world.sandbox.stats.cancellations == {} and world.sandbox.stats.consultas == {}
