"""The consumer runner: Kafka in, handler calls out, offsets committed only when safe.

- Order per document, parallel across documents: records with the same key run one after the
  other (a chain of tasks per key); different keys run concurrently, even inside one partition.
- Bounded in-flight work: a semaphore caps the records being handled; fetching pauses when full.
- Commits: for each partition, the offset after the longest prefix of finished records, so a
  crash redelivers only unfinished work (handlers are idempotent) and never skips any.
- Failures: a Transient is retried with exponential backoff and jitter, blocking only
  its own document; a Permanent, an unreadable record or exhausted retries go to the
  dead-letter topic with origin, error and attempt count, and the partition moves on.
- Retries survive restarts: a retrying record stays uncommitted in Kafka (so it comes back to
  whoever owns the partition next), and its attempt count and next due time are written to a
  retry ledger in the database, read back on assignment. Unlike retry topics, this keeps the
  per-document order: a document's later events wait behind its retrying command.
- Shutdown (SIGTERM -> `stop()`): stop fetching, let in-flight work finish within a grace
  period, commit, leave the group.
- Rebalances: co-partitioned topics are assigned together (`consumers.assignment`), so one
  document's records, whatever topic they come from, run in one process. A revoked
  partition is fenced before it is given up: its records that have not started (waiting
  behind their document's earlier record, or in a retry's backoff) start nothing, the ones
  running get the grace period to finish, whatever still runs then is cancelled, and only then
  is the finished prefix committed and the partition released. With a broker that waits for
  every member to rejoin before it reassigns (Kafka does), the next owner never runs a record
  while we still do; the embedded broker was seen not to wait, and there the lifecycle's
  conditional publish (`consumers.lifecycle.publish_if_current`) keeps late results harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry.trace import SpanKind

from notaflow import tracing
from notaflow.bus import Bus, client_options
from notaflow.consumers.assignment import ASSIGNORS, require_copartitioned, split_assignment
from notaflow.errors import InvalidDocument, Stopping, Transient
from notaflow.logs import log_context, redact_text, trace_id_of
from notaflow.metrics import Metrics
from notaflow.settings import Settings
from notaflow.store.db import transient_error
from notaflow.store.retries import Coordinates, RetryLedger, RetryState

log = logging.getLogger(__name__)
Handler = Callable[[Any], Awaitable[None]]


@dataclass
class RetryPolicy:
    base: float = 1.0
    maximum: float = 60.0
    attempts: int = 8

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Full-jitter exponential backoff; a provider's Retry-After wins when longer."""
        backoff = random.uniform(0, min(self.maximum, self.base * 2 ** (attempt - 1)))
        return max(backoff, hint or 0.0)


@dataclass
class _Partition:
    pending: dict[int, bool] = field(default_factory=dict)  # offset -> done
    order: list[int] = field(default_factory=list)  # the pending offsets, a min-heap
    next_commit: int | None = None  # offset to commit (last done prefix + 1)
    dirty: bool = False

    def add(self, offset: int) -> None:
        if offset not in self.pending:
            heapq.heappush(self.order, offset)
        self.pending[offset] = False  # fetched again (a seek): it must finish again
        if self.next_commit is None:
            self.next_commit = offset

    def done(self, offset: int) -> None:
        if offset in self.pending:
            self.pending[offset] = True
        # Advance over the finished prefix; offsets may have gaps (compaction, transactions).
        # A heap, not a sort per call: the window holds hundreds of records per partition.
        while self.order:
            off = self.order[0]
            if not self.pending[off]:
                self.next_commit = off
                return
            heapq.heappop(self.order)
            del self.pending[off]
            self.next_commit = off + 1
            self.dirty = True


@dataclass
class Stats:
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    left_for_redelivery: int = 0
    last_progress: float = field(default_factory=time.monotonic)


class Runner:
    def __init__(
        self,
        settings: Settings,
        name: str,
        topics: list[str],
        handler: Handler,
        bus: Bus,
        dead_letter_topic: str,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        grace: float = 20.0,
        metrics: Metrics | None = None,
        ledger: RetryLedger | None = None,
    ) -> None:
        self._metrics = metrics
        self._ledger = ledger
        self._retry_state: dict[Coordinates, RetryState] = {}
        self._ledger_changes: dict[Coordinates, RetryState | None] = {}
        self._retry_state_loaded = asyncio.Event()
        self._retry_state_loaded.set()
        self._settings = settings
        self.name = name
        self._topics = topics
        self._handler = handler
        self._bus = bus
        self._dlq = dead_letter_topic
        self._slots = asyncio.Semaphore(concurrency or settings.consumer_concurrency)
        self._retry = retry or RetryPolicy(
            settings.consumer_retry_base,
            settings.consumer_retry_max,
            settings.consumer_max_attempts,
        )
        self._grace = grace
        self._chains: dict[bytes | None, asyncio.Task[None]] = {}
        # Offset -> its running task, per partition: what a revoke waits for.
        self._inflight: dict[TopicPartition, dict[int, asyncio.Task[None]]] = {}
        # Set when the partition is revoked: its records that have not started stay unstarted.
        # A task keeps the fence of the assignment it was scheduled under.
        self._fences: dict[TopicPartition, asyncio.Event] = {}
        self._generation = 0  # bumped on every revoke: a fetched batch older than it is stale
        self._parts: dict[TopicPartition, _Partition] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.stats = Stats()
        self.assigned = asyncio.Event()

    def stop(self) -> None:
        """Signal-safe: only sets a flag; `run` does the ordered shutdown."""
        self._stopping.set()

    async def run(self) -> None:
        # Before joining: topics whose partition counts differ cannot keep a document's records
        # on one member whatever the assignor does.
        await require_copartitioned(self._settings, self._topics)
        consumer = AIOKafkaConsumer(
            **client_options(self._settings),
            group_id=f"{self._settings.kafka_group_prefix}{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=self._settings.kafka_heartbeat_ms,
            max_poll_interval_ms=300_000,
            # A fetch waits at most this long for records. The embedded broker answers at the
            # end of the wait even when records arrived during it: with the default 500 ms, the
            # consumer benchmark's paced commands waited 150 ms (p50) before their POST, 35-43
            # with 100 and its p99 held the whole wait; 13-22 ms with 25. Kafka answers as soon
            # as records arrive, so there it only sets how often an idle consumer asks
            # (NOTAFLOW_CONSUMER_FETCH_WAIT_MS: 25 asks forty times a second).
            fetch_max_wait_ms=self._settings.consumer_fetch_wait_ms,
            # Partition p of every topic to one member, for any member count (see
            # consumers.assignment); a revoke may wait the grace period for running records, so
            # the group waits that long for us to rejoin.
            partition_assignment_strategy=ASSIGNORS,
            rebalance_timeout_ms=max(
                self._settings.kafka_session_timeout_ms, int((self._grace + 5) * 1000)
            ),
        )
        self._consumer = consumer
        consumer.subscribe(self._topics, listener=_Listener(self))
        await consumer.start()
        flusher = asyncio.create_task(self._flush_retry_state_forever())
        try:
            last_commit = time.monotonic()
            while not self._stopping.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200, max_records=500)
                except KafkaError as exc:
                    log.warning("%s: fetch failed: %r", self.name, exc)
                    await asyncio.sleep(0.5)
                    continue
                # After the fetch, not before: getmany waits out a rebalance and returns only
                # records of the assignment that follows it (taken before, a batch fetched
                # under the new assignment looked stale and was dropped, with the fetch
                # position already past it: the partitions stalled until the next rebalance).
                generation = self._generation
                for tp, records in batches.items():
                    for record in records:
                        if not await self._slot_or_stop():
                            break  # unscheduled records stay uncommitted: redelivered later
                        if self._generation != generation:
                            # A rebalance while we waited for a slot: the rest of this batch
                            # belongs to whoever owns its partitions now (us again, maybe,
                            # from the committed offset, which is not past these records).
                            self._slots.release()
                            break
                        self._schedule(tp, record)
                    if self._stopping.is_set() or self._generation != generation:
                        break
                if time.monotonic() - last_commit > 0.5:
                    await self.commit()
                    last_commit = time.monotonic()
                    if self._metrics is not None:
                        for tp, lag in self.lag().items():
                            self._metrics.set_consumer_lag(self.name, tp.topic, tp.partition, lag)
        finally:
            await self._drain()
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            await self.flush_retry_state()
            with contextlib.suppress(Exception):
                await consumer.stop()

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high-water mark, per assigned partition (for metrics, health)."""
        consumer = self._consumer
        out: dict[TopicPartition, int] = {}
        if consumer is None:
            return out
        for tp in consumer.assignment():
            high, part = consumer.highwater(tp), self._parts.get(tp)
            if high is not None and part is not None and part.next_commit is not None:
                out[tp] = max(high - part.next_commit, 0)
        return out

    def busy(self) -> bool:
        return bool(self._tasks) or any(self.lag().values())

    async def _slot_or_stop(self) -> bool:
        """Wait for a free slot, but give up as soon as a stop is asked for, so a handler that
        hangs while holding every slot cannot keep the consumer from shutting down."""
        if self._stopping.is_set():
            return False
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire.done() and not acquire.cancelled():
            if self._stopping.is_set():
                self._slots.release()
                return False
            return True
        acquire.cancel()
        return False

    def _schedule(self, tp: TopicPartition, record: Any) -> None:
        part = self._parts.setdefault(tp, _Partition())
        part.add(record.offset)
        inflight = self._inflight.setdefault(tp, {})
        if record.offset in inflight:
            # Defensive: a revoke waits for (or cancels) the partition's running records before
            # it is given up, so a record fetched again should never find its old task. If one
            # does, the running task finishes it; a second task would only do the work twice.
            self._slots.release()
            return
        fence = self._fences.setdefault(tp, asyncio.Event())
        previous = self._chains.get(record.key)
        task = asyncio.create_task(self._run_one(tp, record, previous, fence))
        inflight[record.offset] = task
        self._chains[record.key] = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._forget, tp, record.offset, record.key))

    def _forget(
        self, tp: TopicPartition, offset: int, key: bytes | None, task: asyncio.Task[None]
    ) -> None:
        running = self._inflight.get(tp)
        if running is not None and running.get(offset) is task:
            del running[offset]
        self._tasks.discard(task)
        if self._chains.get(key) is task:
            del self._chains[key]

    async def _run_one(
        self,
        tp: TopicPartition,
        record: Any,
        previous: asyncio.Task[None] | None,
        fence: asyncio.Event,
    ) -> None:
        try:
            if previous is not None:
                # Same document: wait for the earlier event whatever became of it.
                await asyncio.wait([previous])
            if fence.is_set():
                # The partition was revoked while this record waited its turn: it is the next
                # owner's now, and starting it here could race that owner's copy.
                raise asyncio.CancelledError
            timer = (
                self._metrics.processing(self.name)
                if self._metrics is not None
                else contextlib.nullcontext()
            )
            context = _record_context(record)
            traceparent = context.pop("traceparent", None)
            # The record's ids on every line about it: its attempts, retries and dead letter.
            with timer, log_context(**context):
                outcome = await self._handle_with_retries(record, traceparent, fence)
        except BaseException as exc:
            # Not done (shutdown, a revoke, or even the dead-letter publish failed): the offset
            # stays uncommitted and the record comes back to whoever owns the partition next.
            self.stats.left_for_redelivery += 1
            if isinstance(exc, asyncio.CancelledError) and (
                self._stopping.is_set() or fence.is_set()
            ):
                # A shutdown or a rebalance can leave hundreds (the window): counted in the
                # stop line, not as failures.
                log.debug("%s: offset %s left for redelivery", self.name, record.offset)
            else:
                if self._metrics is not None:
                    self._metrics.consumer_record(self.name, "failed")
                log.exception("%s: offset %s left for redelivery", self.name, record.offset)
            raise
        else:
            if self._metrics is not None:
                self._metrics.consumer_record(self.name, outcome)
            self.stats.processed += 1
            self.stats.last_progress = time.monotonic()
            part = self._parts.get(tp)
            if part is not None:
                part.done(record.offset)
        finally:
            self._slots.release()

    async def _handle_with_retries(
        self, record: Any, traceparent: str | None, fence: asyncio.Event
    ) -> str:
        """Returns the outcome: processed or dead_lettered."""
        at: Coordinates = (record.topic, record.partition, record.offset)
        attempt = 1
        # Records can be fetched while the assignment callback is still reading the ledger.
        await self._retry_state_loaded.wait()
        earlier = self._retry_state.get(at)
        if earlier is not None:
            # Redelivered after a restart or a rebalance in the middle of its backoff: continue
            # the schedule where it was, instead of starting over at attempt 1.
            attempt = earlier.attempts + 1
            if attempt > self._retry.attempts:
                await self._dead_letter(record, earlier.last_error or "retries exhausted", attempt)
                self._retried_out(at)
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
                            group=f"{self._settings.kafka_group_prefix}{self.name}",
                            partition=record.partition,
                            offset=record.offset,
                        ),
                        "notaflow.consumer": self.name,
                        "notaflow.attempt": attempt,
                    }
                    if tracing.enabled()
                    else {}
                )
                with tracing.span(
                    f"process {record.topic}",
                    kind=SpanKind.CONSUMER,
                    parent_traceparent=traceparent,
                    **attributes,
                ):
                    await self._handler(record)
                self._retried_out(at)
                return "processed"
            except Stopping:
                # Nothing was sent: the next owner of the partition starts this attempt over.
                raise asyncio.CancelledError from None
            except InvalidDocument as exc:
                await self._dead_letter(record, f"invalid: {exc.field}: {exc.message}", attempt)
                self._retried_out(at)
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
                        "%s: permanent failure at offset %s: %r", self.name, record.offset, exc
                    )
                    await self._dead_letter(record, f"{type(exc).__name__}: {exc}", attempt)
                    self._retried_out(at)
                    return "dead_lettered"
                error, hint = f"{type(exc).__name__}: {exc}", None
            if self._stopping.is_set():
                # Leave it uncommitted: the next owner of the partition retries it.
                self._remember(at, attempt, 0.0, error)
                raise asyncio.CancelledError
            if attempt >= self._retry.attempts:
                await self._dead_letter(record, error, attempt)
                self._retried_out(at)
                return "dead_lettered"
            delay = self._retry.delay(attempt, hint)
            log.info("%s: retry %d in %.2fs: %s", self.name, attempt, delay, error)
            self.stats.retried += 1
            if self._metrics is not None:
                self._metrics.consumer_record(self.name, "retried")
            self._remember(at, attempt, delay, error)
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

    def _remember(self, at: Coordinates, attempts: int, delay: float, error: str) -> None:
        state = RetryState(attempts, datetime.now(UTC) + timedelta(seconds=delay), error)
        self._retry_state[at] = state
        if self._ledger is not None:
            self._ledger_changes[at] = state  # written by the flusher, off the retry's path

    def _retried_out(self, at: Coordinates) -> None:
        """The record is finished: its retry state, if it had any, goes."""
        if self._retry_state.pop(at, None) is not None and self._ledger is not None:
            self._ledger_changes[at] = None

    async def flush_retry_state(self) -> None:
        """Write the retry changes gathered since the last flush (every 0.2 s, on revoke and
        at shutdown). A crash loses at most that much of the schedule's progress."""
        if self._ledger is None or not self._ledger_changes:
            return
        changes, self._ledger_changes = self._ledger_changes, {}
        try:
            await self._ledger.apply(self.name, changes)
        except BaseException as exc:  # keep them for the next flush; the retries go on
            self._ledger_changes = {**changes, **self._ledger_changes}
            if not isinstance(exc, Exception):
                raise  # cancelled (shutdown): the final flush writes them
            log.warning("%s: could not record retry state: %r", self.name, exc)

    async def _flush_retry_state_forever(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self.flush_retry_state()

    async def load_retry_state(self, assigned: set[TopicPartition]) -> None:
        """On assignment: the retries the previous owner (or our previous life) left under way."""
        if self._ledger is None or self._consumer is None or not assigned:
            return
        self._retry_state_loaded.clear()
        try:
            for tp in assigned:
                offset = await self._consumer.committed(tp)
                if offset is not None:
                    await self._ledger.forget_before(self.name, tp.topic, tp.partition, offset)
            partitions = [(tp.topic, tp.partition) for tp in assigned]
            found = await self._ledger.load(self.name, partitions)
        except Exception as exc:  # degrade to fresh schedules rather than block the assignment
            log.warning("%s: could not load retry state: %r", self.name, exc)
            return
        finally:
            self._retry_state_loaded.set()
        self._retry_state.update(found)
        if found:
            log.info("%s: resuming %d retries under way", self.name, len(found))

    def forget_retry_state(self, revoked: set[TopicPartition]) -> None:
        names = {(tp.topic, tp.partition) for tp in revoked}
        for at in [at for at in self._retry_state if (at[0], at[1]) in names]:
            del self._retry_state[at]

    async def _dead_letter(self, record: Any, error: str, attempts: int) -> None:
        headers = list(record.headers or [])
        headers += [
            ("dlq_consumer", self.name.encode()),
            ("dlq_origin_topic", record.topic.encode()),
            ("dlq_origin_partition", str(record.partition).encode()),
            ("dlq_origin_offset", str(record.offset).encode()),
            ("dlq_error", redact_text(error, 2000).encode()),  # no credentials in headers
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_time", str(int(time.time() * 1000)).encode()),
        ]
        log.warning("%s: dead-lettering offset %s: %s", self.name, record.offset, error)
        # If even the DLQ publish fails, this raises and the offset stays uncommitted.
        await self._bus.publish_raw(self._dlq, record.value, record.key, headers)
        self.stats.dead_lettered += 1

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        parts = {
            tp: (part, part.next_commit)
            for tp, part in self._parts.items()
            if part.dirty and part.next_commit is not None and (only is None or tp in only)
        }
        if not parts:
            return
        try:
            await consumer.commit({tp: offset for tp, (_, offset) in parts.items()})
        except (CommitFailedError, KafkaError) as exc:
            log.warning("%s: commit failed (will be redelivered): %r", self.name, exc)
            return
        # A revoke may have dropped a partition meanwhile, and records may have finished:
        # only what was committed is clean.
        for part, offset in parts.values():
            if part.next_commit == offset:
                part.dirty = False

    async def release(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes these partitions away: fence them, let their running records
        finish within the grace period (cancel what is left), commit what finished, hand over
        the retry schedule, and forget them. Only then may the next owner start on them."""
        self._generation += 1  # first, before any wait: the fetch loop drops its stale batch
        for tp in revoked:
            fence = self._fences.pop(tp, None)
            if fence is not None:
                fence.set()
        running = [task for tp in revoked for task in self._inflight.get(tp, {}).values()]
        started = time.monotonic()
        cancelled = 0
        if running:
            _, pending = await asyncio.wait(running, timeout=self._grace)
            cancelled = len(pending)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        await self.commit(revoked)
        await self.flush_retry_state()  # the next owner reads where we got to
        self.forget_retry_state(revoked)
        for tp in revoked:
            self._parts.pop(tp, None)
            # A task that ignored its cancellation must not make a later fetch of its record
            # look like a duplicate (the partition would stall behind it).
            self._inflight.pop(tp, None)
            if self._metrics is not None:
                self._metrics.forget_partition(self.name, tp.topic, tp.partition)
        if running:
            log.info(
                "%s: released %d partition(s) after %.2fs: %d record(s) were running, "
                "%d cancelled at the grace period",
                self.name,
                len(revoked),
                time.monotonic() - started,
                len(running),
                cancelled,
            )

    def check_assignment(self, assigned: set[TopicPartition]) -> None:
        """Say so if this member got partition p of some of its topics and not the others
        (a group still running an older member that only knows round-robin)."""
        split = split_assignment(assigned, self._topics)
        if split:
            log.warning(
                "%s: partitions %s are not assigned for all of %s together: one document's "
                "records may run in two processes until the next rebalance",
                self.name,
                sorted(split),
                ", ".join(self._topics),
            )
        else:
            log.info(
                "%s: assigned partitions %s of %d topic(s)",
                self.name,
                sorted({tp.partition for tp in assigned}),
                len(self._topics),
            )

    async def _drain(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        await self.commit()


def _record_context(record: Any) -> dict[str, Any]:
    """What every log line about this record carries: event id, tenant, ref, trace id."""
    headers = {k: v for k, v in (record.headers or ()) if v is not None}

    def text(name: str) -> str | None:
        value = headers.get(name)
        return value.decode(errors="replace") if isinstance(value, bytes) else None

    return {
        "event_id": text("ce_id"),
        "tenant": text("ce_tenant"),
        "ref": text("ce_subject"),
        "trace_id": trace_id_of(text("traceparent")),
        "traceparent": text("traceparent"),
    }


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.release(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._runner.check_assignment(set(assigned))
        await self._runner.load_retry_state(set(assigned))
        if assigned:
            self._runner.assigned.set()
