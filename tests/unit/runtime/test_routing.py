"""Routes (which handler takes which event) and the in-memory bus that feeds them."""

from __future__ import annotations

import pytest

from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument
from notaflow.routing import Routes
from notaflow.testing import InMemoryBus


def event(type_: str, n: int = 0) -> Event:
    return Event(type=type_, source="test", data={"n": n})


async def test_an_event_goes_to_the_handler_of_its_topic_and_type() -> None:
    seen: list[tuple[str, int]] = []

    async def a(e: Event) -> None:
        seen.append(("a", e.data["n"]))

    async def b(e: Event) -> None:
        seen.append(("b", e.data["n"]))

    routes = Routes().add("commands", "x", a).add("commands", "y", b).add("events", "x", b)
    assert routes.topics() == ["commands", "events"]
    assert await routes.dispatch("commands", event("x", 1))
    assert await routes.dispatch("events", event("x", 2))
    assert await routes.dispatch("commands", event("y", 3))
    assert not await routes.dispatch("commands", event("z", 4))  # another consumer's
    assert not await routes.dispatch("other", event("x", 5))
    assert seen == [("a", 1), ("b", 2), ("b", 3)]


async def test_a_route_of_some_statuses_takes_those_and_the_events_that_do_not_say() -> None:
    seen: list[str] = []

    async def handler(e: Event) -> None:
        seen.append(e.id)

    routes = Routes().include(
        Routes().add("lifecycle", "status", handler, statuses={"autorizado", "cancelado"})
    )
    for id_, status in [("a", "autorizado"), ("p", "processando_autorizacao"), ("n", ""),
                        ("c", "cancelado")]:  # fmt: skip
        event = Event(type="status", source="test", data={}, id=id_, status=status)
        assert await routes.dispatch("lifecycle", event) == (id_ != "p")
    assert seen == ["a", "n", "c"]
    assert routes.wants("lifecycle", "status", "autorizado")
    assert not routes.wants("lifecycle", "status", "processando_autorizacao")
    assert routes.wants("lifecycle", "status", "")  # no ce_status: the handler judges
    assert not routes.wants("lifecycle", "other", "autorizado")


async def test_a_pair_is_routed_once_also_across_included_routes() -> None:
    async def handler(e: Event) -> None:
        return None

    routes = Routes().add("commands", "x", handler)
    with pytest.raises(ValueError, match="routed twice"):
        routes.add("commands", "x", handler)
    with pytest.raises(ValueError, match="routed twice"):
        routes.include(Routes().add("commands", "x", handler))
    routes.include(Routes().add("mail", "m", handler))
    assert routes.topics() == ["commands", "mail"]


async def test_the_in_memory_bus_keeps_records_per_partition_by_key() -> None:
    bus = InMemoryBus(partitions=3)
    for n in range(30):
        await bus.publish("t", event("x", n), f"doc-{n % 5}".encode())
    by_key: dict[bytes | None, set[int]] = {}
    for record in bus.records("t"):
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(parts) == 1 for parts in by_key.values())  # one document, one partition
    assert len({p for parts in by_key.values() for p in parts}) > 1
    assert [e.data["n"] for e in bus.events("t")] == list(range(30))


async def test_deliver_commits_only_what_finished_and_drain_follows_what_handlers_publish() -> None:
    bus = InMemoryBus(partitions=1)
    handled: list[int] = []

    async def first(e: Event) -> None:
        if e.data["n"] == 1:
            raise RuntimeError("boom")
        handled.append(e.data["n"])
        await bus.publish("second", event("y", e.data["n"] * 10), b"k")

    async def second(e: Event) -> None:
        handled.append(e.data["n"])

    routes = Routes().add("first", "x", first).add("second", "y", second)
    records = [await bus.send("first", event("x", n), b"k") for n in range(3)]
    with pytest.raises(RuntimeError):
        await bus.deliver(routes, records[1])
    assert bus.committed("first", 0) == 0
    await bus.deliver(routes, records[0])
    assert bus.committed("first", 0) == 1  # not past the failed record
    assert await bus.drain(routes) == 3  # records[2], then what the handlers published
    assert handled == [0, 2, 0, 20]


async def test_a_record_that_is_not_a_cloudevent_reaches_no_handler() -> None:
    bus = InMemoryBus()

    async def handler(e: Event) -> None:
        raise AssertionError("must not run")

    await bus.publish_raw("t", b"{}", b"k", [("ce_type", b"x")])
    with pytest.raises(InvalidDocument, match="ce_id"):
        await bus.deliver(Routes().add("t", "x", handler), bus.records("t")[0])


async def test_an_unavailable_bus_raises_for_one_record_and_for_many() -> None:
    bus = InMemoryBus()
    bus.unavailable = BusUnavailable("down")
    with pytest.raises(BusUnavailable):
        await bus.publish("t", event("x"), b"k")
    with pytest.raises(BusUnavailable):
        await bus.publish_many("t", [(b"k", event("x"))])
    assert bus.records("t") == []


async def test_deliver_dying_stops_the_handler_at_the_event_it_picks() -> None:
    bus = InMemoryBus()
    steps: list[str] = []

    async def handler(e: Event) -> None:
        steps.append("written")
        await bus.publish("out", event("a"), b"k")
        try:
            await bus.publish("out", event("b"), b"k")
        except Exception:  # a process that dies is caught by nothing
            steps.append("caught")
        steps.append("after")

    routes = Routes().add("in", "x", handler)
    record = await bus.send("in", event("x"), b"k")
    await bus.deliver_dying(routes, record, at=lambda e: e.type == "b")
    assert steps == ["written"]
    assert [e.type for e in bus.events("out")] == ["a"]
    assert bus.committed("in", record.partition) == 0  # not finished: redelivered
    # Dying at an event the handler never publishes is a test that tests nothing.
    with pytest.raises(AssertionError, match="no event"):
        await bus.deliver_dying(routes, record, at=lambda e: e.type == "z")
    await bus.publish("out", event("b"), b"k")  # the bus is whole again
