"""An `erro_autorizacao` whose lifecycle event was lost still reaches the client, through the
real processes (ingress, emission and notification consumers, the Focus sandbox, a hook
receiver), on both databases.

The emission consumer records the error a callback brings, then publishes its event. A process
that dies between the two leaves the error for the callback's redelivery to send; but a client
that re-emits the ref first moves the note to its second attempt, and the redelivered callback
then may not publish an older status. The test leaves the note in exactly the state such a
crash leaves (the error written as the consumer writes it, its event never sent: a SIGKILL
cannot be aimed between two lines from outside) and re-emits through the ingress, which sends
the error's event ahead of the new attempt's command. Without that, the client never hears of
the error."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from notaflow import topics as t
from notaflow.envelope import Event, decode
from notaflow.lifecycle import AUTHORIZED, ERROR, PROCESSING
from notaflow.settings import Settings
from notaflow.store import DocumentStore, create_engine
from testkit.kafka import read_topic
from testkit.receiver import Receiver, ReceiverServer
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import wait_for

ERROS = [{"codigo": "E160", "mensagem": "Inscrição municipal inválida", "correcao": None}]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ReceiverServer()
    yield server.start()
    server.stop()


@pytest.fixture
def stack(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(
        settings.replace(database_url=database_url, hooks_allow_private=True),
        tmp_path,
        consumers=("emission", "notification"),
    ).start()
    yield s
    s.stop()


def note(discriminacao: str) -> dict[str, object]:
    doc = copy.deepcopy(with_valid_cnpjs(JSON_EXAMPLE))
    doc["servico"]["discriminacao"] = discriminacao
    doc["tomador"].pop("email", None)  # hooks only: the e-mail is another consumer's concern
    return doc


def crash_after_the_error(database_url: str, ref: str) -> tuple[int, int]:
    """What the emission consumer writes for an error callback, and nothing it publishes."""

    async def write() -> tuple[int, int]:
        engine = create_engine(database_url)
        docs = DocumentStore(engine)
        try:
            # The hand-over's record follows its lifecycle event (event first): wait for it.
            deadline = time.monotonic() + 20
            while True:
                doc = await docs.get("acme", "nfse", ref)
                if doc is not None and doc.submitted_at is not None:
                    break
                assert time.monotonic() < deadline, doc
                await asyncio.sleep(0.05)
            assert doc.status == PROCESSING
            erro = await docs.transition(doc.id, doc.attempt, ERROR, "emission", erros=ERROS)
            assert erro is not None
            return doc.id, doc.attempt
        finally:
            docs.close()
            await engine.dispose()

    return asyncio.run(write())


def test_a_re_emission_delivers_the_error_its_crashed_writer_never_published(
    stack: Stack, receiver: Receiver, database_url: str
) -> None:
    with stack.client() as c:
        hook = c.post(
            "/v2/hooks",
            json={"cnpj": "51916585000125", "event": "nfse", "url": receiver.url("/lost")},
        )
        assert hook.status_code == 200, hook.text
        # Focus keeps it processing for a minute: no callback of its own during the test.
        first = c.post("/v2/nfse", params={"ref": "lost1"}, json=note("Obra [sandbox:delay=60]"))
        assert first.status_code == 202, first.text

    def lifecycle() -> list[Event]:
        topic = t.Topics(stack.settings.kafka_topic_prefix).lifecycle
        return [
            decode(r.headers, r.value) for r in read_topic(stack.settings.kafka_bootstrap, topic)
        ]

    def handed_over() -> bool:
        return any(e.status == PROCESSING for e in lifecycle())

    wait_for(handed_over, 20)
    doc_id, attempt = crash_after_the_error(database_url, "lost1")
    assert stack.wait_status("lost1", {ERROR})["erros"] == ERROS
    assert receiver.seen == []  # nothing published it

    with stack.client() as c:  # the client corrects the note and emits the ref again
        again = c.post("/v2/nfse", params={"ref": "lost1"}, json=note("Obra corrigida"))
        assert again.status_code == 202, again.text
    stack.wait_status("lost1", {AUTHORIZED})

    def hooks() -> list[dict[str, object]]:
        return [json.loads(s.body) for s in receiver.seen if s.path == "/lost"]

    wait_for(lambda: len(hooks()) >= 2, 20)
    assert [(h["ref"], h["status"]) for h in hooks()] == [("lost1", ERROR), ("lost1", AUTHORIZED)]
    assert hooks()[0]["erros"] == ERROS

    assert [(e.id, e.status) for e in lifecycle()] == [
        (f"nfse-{doc_id}-{attempt}-{PROCESSING}", PROCESSING),
        (f"nfse-{doc_id}-{attempt}-{ERROR}", ERROR),  # sent by the ingress, under its id
        (f"nfse-{doc_id}-{attempt + 1}-{PROCESSING}", PROCESSING),
        (f"nfse-{doc_id}-{attempt + 1}-{AUTHORIZED}", AUTHORIZED),
    ]
