"""An in-memory bus for unit tests (FastStream's TestBroker is the model).

`InMemoryBus` is a `notaflow.bus.Publisher`: hand it to a consumer instead of the Kafka bus and
it keeps every record the consumer publishes, per topic and partition (the key picks the
partition as Kafka's default partitioner does). `deliver` feeds a record to a consumer's
`Routes` the way the runner does: the envelope decoded once, the handler routed for its topic
and event type called with the `Event`; a handler's exception reaches the test, and the record
then stays uncommitted, as it would in Kafka. `deliver_dying` delivers a record to a handler
whose process dies just before it publishes an event (a state written, its event never sent),
the moment the redeliveries have to repair. `drain` delivers what was published on the routed
topics, in order, including what the handlers publish meanwhile (a command's lifecycle event
reaching the notification consumer).

What it does not do is the runner's job, tested against the real broker: retries and their
schedule, dead letters, order across concurrent documents, rebalances.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from notaflow.bus import murmur2
from notaflow.envelope import Event, decode
from notaflow.errors import BusUnavailable
from notaflow.routing import Routes


class _ProcessDied(BaseException):
    """The process of `InMemoryBus.deliver_dying`'s handler died. A BaseException, as a SIGKILL
    is caught by nothing: no handler's `except Exception` sees it."""


@dataclass(frozen=True)
class Record:
    """A record as a consumer fetches it (the attributes of aiokafka's ConsumerRecord it reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def event(self) -> Event:
        return decode(self.headers, self.value)


class InMemoryBus:
    def __init__(self, partitions: int = 3) -> None:
        self._partitions = partitions
        self._logs: dict[tuple[str, int], list[Record]] = defaultdict(list)
        self._order: list[Record] = []  # every record, in the order it was published
        self._done: set[tuple[str, int, int]] = set()
        self._delivered: set[tuple[str, int, int]] = set()
        # Set to make every publish fail, as the Kafka bus does when the broker is away.
        self.unavailable: BusUnavailable | None = None
        self._dies_at: Callable[[Event], bool] | None = None

    # -- the Publisher interface -----------------------------------------------------------

    async def publish(self, topic: str, event: Event, key: bytes) -> None:
        self._dying(event)
        self._append(topic, key, event.value(), event.headers())

    async def publish_many(self, topic: str, records: list[tuple[bytes, Event]]) -> None:
        if self.unavailable is not None:
            raise self.unavailable
        for _, event in records:
            self._dying(event)
        for key, event in records:
            self._append(topic, key, event.value(), event.headers())

    def _dying(self, event: Event) -> None:
        if self._dies_at is not None and self._dies_at(event):
            raise _ProcessDied(f"died before publishing {event.type} {event.id}")

    async def publish_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        self._append(topic, key, value, headers)

    def _append(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Record:
        if self.unavailable is not None:
            raise self.unavailable
        partition = (murmur2(key) & 0x7FFFFFFF) % self._partitions if key else 0
        log = self._logs[(topic, partition)]
        record = Record(topic, partition, len(log), key, value, tuple(headers))
        log.append(record)
        self._order.append(record)
        return record

    # -- what a test reads -----------------------------------------------------------------

    def records(self, topic: str) -> list[Record]:
        """Every record published on `topic`, in publish order."""
        return [r for r in self._order if r.topic == topic]

    def events(self, topic: str, event_type: str | None = None) -> list[Event]:
        """The events published on `topic` (of one type, if given), in publish order."""
        events = [r.event() for r in self.records(topic)]
        return [e for e in events if event_type is None or e.type == event_type]

    def committed(self, topic: str, partition: int) -> int:
        """What the runner would commit: the offset after the longest finished prefix."""
        offset = 0
        while (topic, partition, offset) in self._done:
            offset += 1
        return offset

    # -- feeding a consumer ----------------------------------------------------------------

    async def send(self, topic: str, event: Event, key: bytes) -> Record:
        """Publish as another system would (the ingress, the reconciler), and return the record."""
        return self._append(topic, key, event.value(), event.headers())

    async def deliver(self, routes: Routes, record: Record) -> bool:
        """Hand one record to the consumer: True if a handler took it, False if none is
        routed for its type. Raises what the decoding or the handler raised; the record is then
        not finished (not committed), as in the runner."""
        self._delivered.add((record.topic, record.partition, record.offset))
        taken = await routes.dispatch(record.topic, record.event())
        self._done.add((record.topic, record.partition, record.offset))
        return taken

    async def deliver_dying(
        self, routes: Routes, record: Record, at: Callable[[Event], bool] = lambda _: True
    ) -> None:
        """Deliver `record` to a handler whose process dies just before it publishes the first
        event `at` picks (any event, by default): what it wrote and published before that
        stays, that event and everything after it never happen. AssertionError if the
        handler never came to publish such an event."""
        self._dies_at = at
        try:
            await self.deliver(routes, record)
        except _ProcessDied:
            return
        finally:
            self._dies_at = None
        raise AssertionError("the handler published no event it was to die at")

    async def drain(self, routes: Routes) -> int:
        """Deliver every record of the routed topics not delivered yet, oldest first, until
        none is left (handlers may publish more); returns how many were delivered."""
        topics = set(routes.topics())
        count = 0
        while True:
            waiting = [
                r
                for r in self._order
                if r.topic in topics and (r.topic, r.partition, r.offset) not in self._delivered
            ]
            if not waiting:
                return count
            await self.deliver(routes, waiting[0])
            count += 1

    # -- the rest of the Kafka bus's surface, for code that starts and stops its bus -------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_connected(self, timeout: float) -> None:
        return None

    async def ready(self) -> bool:
        return self.unavailable is None
