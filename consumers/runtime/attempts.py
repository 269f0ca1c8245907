"""One record's way through its handler: the envelope decoded once, the attempts, the backoff
between them, and the dead letter when it cannot succeed.

- The envelope is decoded once per record, before any attempt: a record that is not a
  CloudEvent we can read is dead-lettered with the reason before any handler runs; the handler
  routed for the record's topic and event type (`notaflow.routing.Routes`) gets the `Event`.
- A Transient (or a retriable error, or the database's own transient state) is retried
  with the policy's backoff, blocking only its own document; a Permanent, an invalid
  document or exhausted retries go to the dead-letter topic.
- A stop or a revoke during the backoff leaves the record uncommitted, its schedule in the
  retry ledger: the partition's next owner resumes it where it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import SpanKind

from notaflow import tracing
from notaflow.consumers.runtime.dead_letters import DeadLetters
from notaflow.consumers.runtime.retries import RetryPolicy, RetrySchedule
from notaflow.envelope import Event, decode
from notaflow.errors import InvalidDocument, Stopping, Transient
from notaflow.metrics import Metrics
from notaflow.routing import Routes
from notaflow.store.db import transient_error
from notaflow.store.retries import Coordinates

log = logging.getLogger(__name__)
RecordHandler = Callable[[Any], Awaitable[None]]


@dataclass
class Stats:
    processed: int = 0
    skipped: int = 0  # of the processed: a type no handler here takes (Runner._unrouted)
    retried: int = 0
    dead_lettered: int = 0
    left_for_redelivery: int = 0
    last_progress: float = field(default_factory=time.monotonic)


class Attempts:
    def __init__(
        self,
        name: str,
        group: str,
        handler: Routes | RecordHandler,
        retry: RetryPolicy,
        schedule: RetrySchedule,
        dead_letters: DeadLetters,
        stopping: asyncio.Event,
        stats: Stats,
        metrics: Metrics | None = None,
    ) -> None:
        self._name = name
        self._group = group
        self._routes = handler if isinstance(handler, Routes) else None
        self._record_handler = None if isinstance(handler, Routes) else handler
        self._retry = retry
        self._schedule = schedule
        self._dead_letters = dead_letters
        self._stopping = stopping
        self._stats = stats
        self._metrics = metrics

    async def handle(self, record: Any, trace: Mapping[str, str], fence: asyncio.Event) -> str:
        """Decode the envelope (once, whatever the retries), then handle with retries.
        Returns the outcome: processed or dead_lettered."""
        event: Event | None = None
        if self._routes is not None:
            try:
                event = decode(record.headers, record.value)
            except InvalidDocument as exc:
                # No handler could read it, now or later: nothing to retry.
                await self._dead_letter(record, f"invalid: {exc.field}: {exc.message}", 1)
                self._schedule.finished((record.topic, record.partition, record.offset))
                return "dead_lettered"
        return await self._handle_with_retries(record, event, trace, fence)

    async def _call(self, record: Any, event: Event | None) -> None:
        if event is not None and self._routes is not None:
            await self._routes.dispatch(record.topic, event)
        elif self._record_handler is not None:
            await self._record_handler(record)

    async def _handle_with_retries(
        self, record: Any, event: Event | None, trace: Mapping[str, str], fence: asyncio.Event
    ) -> str:
        at: Coordinates = (record.topic, record.partition, record.offset)
        attempt = 1
        earlier = await self._schedule.earlier(at)
        if earlier is not None:
            # Redelivered after a restart or a rebalance in the middle of its backoff: continue
            # the schedule where it was, instead of starting over at attempt 1.
            attempt = earlier.attempts + 1
            if attempt > self._retry.attempts:
                await self._dead_letter(record, earlier.last_error or "retries exhausted", attempt)
                self._schedule.finished(at)
                return "dead_lettered"
            wait = (earlier.next_at - datetime.now(UTC)).total_seconds()
            if wait > 0 and not await self._pause(wait, fence):
                raise asyncio.CancelledError  # stopping: the next owner resumes the schedule
        while True:
            try:
                # Built only when tracing is on: this runs once per record.
                attributes: dict[str, Any] = (
                    {
                        **tracing.messaging_attributes(
                            "process",
                            record.topic,
                            group=self._group,
                            partition=record.partition,
                            offset=record.offset,
                        ),
                        "notaflow.consumer": self._name,
                        "notaflow.attempt": attempt,
                    }
                    if tracing.enabled()
                    else {}
                )
                with tracing.span(
                    f"process {record.topic}",
                    kind=SpanKind.CONSUMER,
                    carrier=trace,
                    **attributes,
                ):
                    await self._call(record, event)
                self._schedule.finished(at)
                return "processed"
            except Stopping:
                # Nothing was sent: the next owner of the partition starts this attempt over.
                raise asyncio.CancelledError from None
            except InvalidDocument as exc:
                await self._dead_letter(record, f"invalid: {exc.field}: {exc.message}", attempt)
                self._schedule.finished(at)
                return "dead_lettered"
            except Transient as exc:
                error = f"{type(exc).__name__}: {exc}"
                hint = exc.retry_after
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database's own state (down, restarting, a deadlock, a lock held by
                # another writer) is transient too: dead-lettering every record through a
                # database restart would leave an operator to replay them all.
                if not (getattr(exc, "retriable", False) or transient_error(exc)):
                    log.warning(
                        "%s: permanent failure at offset %s: %r", self._name, record.offset, exc
                    )
                    await self._dead_letter(record, f"{type(exc).__name__}: {exc}", attempt)
                    self._schedule.finished(at)
                    return "dead_lettered"
                error, hint = f"{type(exc).__name__}: {exc}", None
            if self._stopping.is_set():
                # Leave it uncommitted: the next owner of the partition retries it.
                self._schedule.remember(at, attempt, 0.0, error)
                raise asyncio.CancelledError
            if attempt >= self._retry.attempts:
                await self._dead_letter(record, error, attempt)
                self._schedule.finished(at)
                return "dead_lettered"
            delay = self._retry.delay(attempt, hint)
            log.info("%s: retry %d in %.2fs: %s", self._name, attempt, delay, error)
            self._stats.retried += 1
            if self._metrics is not None:
                self._metrics.consumer_record(self._name, "retried")
            self._schedule.remember(at, attempt, delay, error)
            attempt += 1
            if not await self._pause(delay, fence):
                # Stopping or revoked mid-backoff: the ledger has the schedule.
                raise asyncio.CancelledError

    async def _pause(self, seconds: float, fence: asyncio.Event) -> bool:
        """Sleep unless a stop is asked for or the partition is revoked; False then."""
        if self._stopping.is_set() or fence.is_set():
            return False
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(fence.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return not (self._stopping.is_set() or fence.is_set())

    async def _dead_letter(self, record: Any, error: str, attempts: int) -> None:
        await self._dead_letters.send(record, error, attempts)
        self._stats.dead_lettered += 1
