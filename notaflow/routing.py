"""Which handler takes which event: a table keyed by (topic, CloudEvents type).

A consumer declares its handlers here instead of switching on `event.type` inside one
`handle(record)`; the runner (`notaflow.consumers.runtime`) decodes each record's envelope once,
dead-letters one it cannot read before any handler runs, and calls the handler routed for the
record's topic and type with the decoded `Event` (the envelope's fields and its data). An event
with no route is not an error: the command topics are shared, and another consumer's group
takes the types this one leaves (as `notaflow.testing`'s in-memory bus does, for unit tests).
The runner tells those by their `ce_type` header (`wants`) and skips them before decoding.

A route may also take only some statuses of a lifecycle event (`statuses`): the notification
consumer delivers outcomes, not `processando_autorizacao`, half of a note's lifecycle events.
The runner tells the others by their `ce_status` header (`wants`); an event without one (a
producer from before the header) goes to the handler, which judges the data's status itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from notaflow.envelope import Event

EventHandler = Callable[[Event], Awaitable[None]]


class Routes:
    def __init__(self) -> None:
        self._table: dict[tuple[str, str], EventHandler] = {}
        # The routes that take only some statuses (absent: every event of the type).
        self._statuses: dict[tuple[str, str], frozenset[str]] = {}

    def add(
        self,
        topic: str,
        event_type: str,
        handler: EventHandler,
        *,
        statuses: Collection[str] | None = None,
    ) -> Routes:
        """Route `event_type` on `topic` to `handler`; one handler per pair. `statuses`: only
        the events with one of these statuses (the `ce_status` attribute), when they say."""
        if (topic, event_type) in self._table:
            raise ValueError(f"{event_type} on {topic} is routed twice")
        self._table[(topic, event_type)] = handler
        if statuses is not None:
            self._statuses[(topic, event_type)] = frozenset(statuses)
        return self

    def include(self, other: Routes) -> Routes:
        """Take another consumer's routes as well (one process running both)."""
        for key, handler in other._table.items():
            self.add(*key, handler, statuses=other._statuses.get(key))
        return self

    def topics(self) -> list[str]:
        """The topics to subscribe to, in the order they were first routed."""
        return list(dict.fromkeys(topic for topic, _ in self._table))

    def find(self, topic: str, event_type: str) -> EventHandler | None:
        return self._table.get((topic, event_type))

    def wants(self, topic: str, event_type: str, status: str) -> bool:
        """Whether an event of this type and status (its `ce_status`; "" when it has none) goes
        to a handler here."""
        key = (topic, event_type)
        if key not in self._table:
            return False
        only = self._statuses.get(key)
        return only is None or not status or status in only

    async def dispatch(self, topic: str, event: Event) -> bool:
        """Run the handler for this event; False when none takes it (the event is skipped)."""
        if not self.wants(topic, event.type, event.status):
            return False
        await self._table[(topic, event.type)](event)
        return True
