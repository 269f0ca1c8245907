"""The consumer runner: Kafka in, handler calls out, offsets committed only when safe.

The runner holds the consumer's life (fetch loop, rebalances, shutdown); the parts it drives
each have their module:
- `window`: bounded in-flight work, order per document (a chain of tasks per key), fences;
- `attempts`: one record through its handler: the envelope decoded once (an unreadable one
  dead-lettered before any handler), retries with backoff, the dead letter;
- `offsets`: commits of the longest prefix of finished records per partition only;
- `retries`: the backoff policy, and the schedule of retrying records in the database (it
  survives restarts);
- `dead_letters`: where a record that cannot be handled goes, with origin, error and attempts.

- Shutdown (SIGTERM -> `stop()`): stop fetching, let in-flight work finish within a grace
  period, commit, leave the group.
- Rebalances: co-partitioned topics are assigned together (`consumers.assignment`), so one
  document's records, whatever topic they come from, run in one process. A revoked
  partition is fenced before it is given up: its records that have not started start nothing,
  the ones running get the grace period to finish, whatever still runs then is cancelled, and
  only then is the finished prefix committed and the partition released. With a broker that
  waits for every member to rejoin before it reassigns (Kafka does), the next owner never runs
  a record while we still do; the embedded broker was seen not to wait, and there the
  lifecycle's conditional publish (`consumers.lifecycle_events.publish_if_current`) keeps late
  results harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from notaflow.bus import Publisher, client_options
from notaflow.consumers.assignment import ASSIGNORS, require_copartitioned, split_assignment
from notaflow.consumers.fairness import tenant_of
from notaflow.consumers.runtime import fetch_wait
from notaflow.consumers.runtime.attempts import Attempts, RecordHandler, Stats
from notaflow.consumers.runtime.dead_letters import DeadLetters
from notaflow.consumers.runtime.offsets import Offsets
from notaflow.consumers.runtime.retries import RetryPolicy, RetrySchedule
from notaflow.consumers.runtime.window import Start, Window
from notaflow.logs import deferred_log_context, trace_id_of
from notaflow.metrics import Metrics
from notaflow.routing import Routes
from notaflow.settings import Settings
from notaflow.store.retries import RetryLedger
from notaflow.tracing import TRACE_HEADERS

log = logging.getLogger(__name__)


class Runner:
    def __init__(
        self,
        settings: Settings,
        name: str,
        topics: list[str],
        handler: Routes | RecordHandler,
        bus: Publisher,
        dead_letter_topic: str,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        grace: float = 20.0,
        metrics: Metrics | None = None,
        ledger: RetryLedger | None = None,
        tenant_cap: int | None = None,
        slot_cap: Callable[[tuple[str, str]], int | None] | None = None,
        fetch_idle_after: float = fetch_wait.IDLE_AFTER,
    ) -> None:
        self._fetch_idle_after = fetch_idle_after
        self._metrics = metrics
        self._settings = settings
        self.name = name
        self._topics = topics
        self._schedule = RetrySchedule(name, ledger)
        self._grace = grace
        self._stopping = asyncio.Event()
        # `tenant_cap`: records of one tenant (and topic) running at most; `slot_cap`: a
        # (tenant, topic) queue's own, below it (`consumers.fairness`).
        self._window: Window[TopicPartition] = Window(
            concurrency or settings.consumer_concurrency, self._stopping, tenant_cap, None, slot_cap
        )
        self._offsets: Offsets[TopicPartition] = Offsets()
        self._routes = handler if isinstance(handler, Routes) else None
        self._consumer: AIOKafkaConsumer | None = None
        self.stats = Stats()
        self.assigned = asyncio.Event()
        self._attempts = Attempts(
            name,
            f"{settings.kafka_group_prefix}{name}",
            handler,
            retry
            or RetryPolicy(
                settings.consumer_retry_base,
                settings.consumer_retry_max,
                settings.consumer_max_attempts,
            ),
            self._schedule,
            DeadLetters(name, bus, dead_letter_topic),
            self._stopping,
            self.stats,
            metrics,
        )

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
        flusher = asyncio.create_task(self._schedule.flush_forever())
        window = self._window
        # Short fetch waits while records flow, long ones once idle (`fetch_wait`).
        pacer = fetch_wait.FetchPacer(
            self._settings.consumer_fetch_wait_ms,
            self._settings.consumer_fetch_wait_idle_ms,
            self._fetch_idle_after,
        )
        paced = True
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
                generation = window.generation
                handled = False  # a record here takes: skipped ones alone keep no short wait
                for tp, records in batches.items():
                    for record in records:
                        if not await window.slot_or_stop():
                            break  # unscheduled records stay uncommitted: redelivered later
                        if window.generation != generation:
                            # A rebalance while we waited for room: the rest of this batch
                            # belongs to whoever owns its partitions now (us again, maybe,
                            # from the committed offset, which is not past these records).
                            break
                        # Pending in its partition from now: the committed offset stays
                        # before it however long it waits for its tenant's turn.
                        self._offsets.fetched(tp, record.offset)
                        if self._unrouted(record):
                            self._skip(tp, record)
                            continue
                        handled = True
                        window.start(
                            tp,
                            record.offset,
                            record.key,
                            self._starter(tp, record),
                            tenant_of(record),
                            record.topic,
                        )
                    if self._stopping.is_set() or window.generation != generation:
                        break
                # Told after the records are sorted: the cancellation consumer reads every emit
                # command and takes none, and those alone kept it asking forty times a second.
                wait = pacer.fetched(handled, time.monotonic())
                if wait is not None and paced and not fetch_wait.apply(consumer, wait):
                    paced = False
                    log.warning("%s: this aiokafka cannot change its fetch wait", self.name)
                if time.monotonic() - last_commit > 0.5:
                    await self.commit()
                    last_commit = time.monotonic()
                    if self._metrics is not None:
                        for tp, lag in self.lag().items():
                            self._metrics.set_consumer_lag(self.name, tp.topic, tp.partition, lag)
                        self._metrics.set_tenant_backlog(window.tenant_backlog())
        finally:
            await self._drain()
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            await self._schedule.flush()
            with contextlib.suppress(Exception):
                await consumer.stop()

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high-water mark, per assigned partition (for metrics, health)."""
        consumer = self._consumer
        out: dict[TopicPartition, int] = {}
        if consumer is None:
            return out
        for tp in consumer.assignment():
            high, position = consumer.highwater(tp), self._offsets.next_commit(tp)
            if high is not None and position is not None:
                out[tp] = max(high - position, 0)
        return out

    def backlog(self) -> dict[str, tuple[int, int]]:
        """(queued, running) records per tenant: the operator's view of who waits."""
        return self._window.backlog()

    def busy(self) -> bool:
        return bool(self._window.tasks) or any(self.lag().values())

    def _unrouted(self, record: Any) -> bool:
        """A record no handler here takes: of a type none takes (the command topics are shared,
        and every command reaches every group that reads one of its types: the cancellation
        consumer sees every emit, the notification consumer too), or of a status its route
        leaves (`Routes.wants`: the notification consumer's `processando_autorizacao`). Told by
        the `ce_type` and `ce_status` headers, the last of each as `envelope.decode` reads
        them; a record without a readable type goes the whole way, to be dead-lettered if it
        cannot be decoded."""
        routes = self._routes
        if routes is None:
            return False
        event_type = status = None
        for name, value in record.headers or ():
            if name == "ce_type":
                event_type = value
            elif name == "ce_status":
                status = value
        if not event_type:
            return False
        try:
            return not routes.wants(
                record.topic, event_type.decode(), status.decode() if status else ""
            )
        except UnicodeDecodeError:
            return False

    def _skip(self, tp: TopicPartition, record: Any) -> None:
        """Done with a record no handler takes, as the whole way would be (`Routes.dispatch`
        skips it): counted as processed, its offset committable, but without a task, the
        window, the decoding or the attempt machinery (half the cancellation consumer's CPU
        went on the emit commands it skipped: 0.09 -> 0.05 ms per note in the pipeline bench,
        and the notification consumer's 1.2 -> 1.1)."""
        self._offsets.finished(tp, record.offset)
        if self._metrics is not None:
            self._metrics.consumer_record(self.name, "processed")
        self.stats.processed += 1
        self.stats.skipped += 1
        self.stats.last_progress = time.monotonic()

    def _starter(self, tp: TopicPartition, record: Any) -> Start:
        def start(
            previous: asyncio.Task[None] | None, fence: asyncio.Event
        ) -> Coroutine[Any, Any, None]:
            return self._run_one(tp, record, previous, fence)

        return start

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
            # The record's ids on every line about it: its attempts, retries and dead letter.
            with timer, deferred_log_context(functools.partial(_record_context, record)):
                outcome = await self._attempts.handle(record, _trace_carrier(record), fence)
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
            self._offsets.finished(tp, record.offset)

    async def flush_retry_state(self) -> None:
        await self._schedule.flush()

    async def load_retry_state(self, assigned: set[TopicPartition]) -> None:
        """On assignment: the retries the previous owner (or our previous life) left under way."""
        consumer = self._consumer
        if consumer is None:
            return

        async def committed(topic: str, partition: int) -> int | None:
            offset: int | None = await consumer.committed(TopicPartition(topic, partition))
            return offset

        await self._schedule.load([(tp.topic, tp.partition) for tp in assigned], committed)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        positions = self._offsets.to_commit(only)
        if not positions:
            return
        try:
            await consumer.commit({tp: offset for tp, (_, offset) in positions.items()})
        except (CommitFailedError, KafkaError) as exc:
            log.warning("%s: commit failed (will be redelivered): %r", self.name, exc)
            return
        self._offsets.committed(positions)

    async def release(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes these partitions away: fence them, let their running records
        finish within the grace period (cancel what is left), commit what finished, hand over
        the retry schedule, and forget them. Only then may the next owner start on them."""
        running = self._window.fence(revoked)
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
        await self._schedule.flush()  # the next owner reads where we got to
        self._schedule.forget((tp.topic, tp.partition) for tp in revoked)
        for tp in revoked:
            self._offsets.forget(tp)
            self._window.release(tp)
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
        self._window.drop_queued()  # not started: redelivered to the next owner
        tasks = self._window.tasks
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=self._grace)
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
    }


def _trace_carrier(record: Any) -> dict[str, str]:
    """The record's trace headers (traceparent, tracestate, baggage): the remote parent of its
    `process` span, with the client's tracestate and baggage kept in the span's context."""
    carrier = {}
    for name, value in record.headers or ():
        if name in TRACE_HEADERS and isinstance(value, bytes) and name not in carrier:
            carrier[name] = value.decode(errors="replace")
    return carrier


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
