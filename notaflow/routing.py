"""Which handler takes which event: a table keyed by (topic, CloudEvents type).

A consumer declares its handlers here instead of switching on `event.type` inside one
`handle(record)`; the runner (`notaflow.consumers.runtime`) decodes each record's envelope once,
dead-letters one it cannot read before any handler runs, and calls the handler routed for the
record's topic and type with the decoded `Event` (the envelope's fields and its data). An event
with no route is not an error: the command topics are shared, and another consumer's group
takes the types this one leaves (as `notaflow.testing`'s in-memory bus does, for unit tests).
The runner tells those by their `ce_type` header (`find`) and skips them before decoding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from notaflow.envelope import Event

EventHandler = Callable[[Event], Awaitable[None]]


class Routes:
    def __init__(self) -> None:
        self._table: dict[tuple[str, str], EventHandler] = {}

    def add(self, topic: str, event_type: str, handler: EventHandler) -> Routes:
        """Route `event_type` on `topic` to `handler`; one handler per pair."""
        if (topic, event_type) in self._table:
            raise ValueError(f"{event_type} on {topic} is routed twice")
        self._table[(topic, event_type)] = handler
        return self

    def include(self, other: Routes) -> Routes:
        """Take another consumer's routes as well (one process running both)."""
        for (topic, event_type), handler in other._table.items():
            self.add(topic, event_type, handler)
        return self

    def topics(self) -> list[str]:
        """The topics to subscribe to, in the order they were first routed."""
        return list(dict.fromkeys(topic for topic, _ in self._table))

    def find(self, topic: str, event_type: str) -> EventHandler | None:
        return self._table.get((topic, event_type))

    async def dispatch(self, topic: str, event: Event) -> bool:
        """Run the handler for this event; False when none is routed (the event is skipped)."""
        handler = self._table.get((topic, event.type))
        if handler is None:
            return False
        await handler(event)
        return True
