"""The consumer runner against the real broker: order per key with concurrency across keys,
bounded in-flight work, commits that never pass unfinished work, retries and dead letters;
plus the pure commit arithmetic and retry delays."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.protocol.metadata import MetadataResponse_v0
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from notaflow.bus import Bus, client_options, ensure_topics
from notaflow.consumers.assignment import (
    ASSIGNORS,
    TopicsNotCoPartitioned,
    copartition_problem,
    split_assignment,
)
from notaflow.consumers.runtime import RetryPolicy, Runner
from notaflow.consumers.runtime.offsets import PartitionOffsets as _Partition
from notaflow.errors import InvalidDocument, Permanent, RateLimited, Stopping, Transient
from notaflow.logs import current_context
from notaflow.settings import Settings
from notaflow.store import RetryLedger, create_engine, migrate
from notaflow.topics import Topics

Handler = Callable[[Any], Awaitable[None]]


@pytest.fixture
def fast(settings: Settings) -> Settings:
    # A group join on this broker takes about half the session timeout: keep it short.
    return settings.replace(kafka_session_timeout_ms=1000, kafka_heartbeat_ms=100)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def produce(
    settings: Settings,
    topic: str,
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
) -> list[Any]:
    """Publish in order (one producer keeps per-partition order); return the metadata."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def committed(settings: Settings, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset, read without joining the group."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def read_all(settings: Settings, topic: str, want: int, timeout: float = 10) -> list[Any]:
    """Every record of `topic` from the beginning, without a group."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None)
    await consumer.start()
    got: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka_partitions)])
        await consumer.seek_to_beginning()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(got) < want:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        got.extend(records)
        # A little longer, to catch records that should not be there.
        for records in (await consumer.getmany(timeout_ms=300)).values():
            got.extend(records)
    finally:
        await consumer.stop()
    return got


@dataclass
class Running:
    runner: Runner
    task: asyncio.Task[None]
    bus: Bus
    stopped_in: float | None = None

    async def stop(self, timeout: float = 15) -> None:
        started = time.monotonic()
        self.runner.stop()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        self.stopped_in = time.monotonic() - started


@contextlib.asynccontextmanager
async def running(
    settings: Settings, name: str, topic: str, handler: Handler, **options: Any
) -> AsyncIterator[Running]:
    bus = Bus(settings)
    await bus.start()
    await bus.wait_connected(10)
    runner = Runner(
        settings,
        name,
        [topic],
        handler,
        bus,
        dead_letter_topic=settings.kafka_topic_prefix + "dead-letter",
        **options,
    )
    handle = Running(runner, asyncio.create_task(runner.run(), name=f"runner-{name}"), bus)
    try:
        yield handle
    finally:
        if not handle.task.done():
            handle.runner.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(handle.task), 1)
            handle.task.cancel()
            with contextlib.suppress(BaseException):
                await handle.task
        await bus.stop()


@dataclass
class Call:
    key: str
    seq: int
    partition: int
    offset: int
    start: float
    end: float = 0.0


@dataclass
class Tracker:
    """Records handler calls and how many run at once."""

    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    max_sleep: float = 0.02

    async def handle(self, record: Any) -> None:
        body = json.loads(record.value)
        call = Call(body["key"], body["seq"], record.partition, record.offset, time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(random.uniform(0, self.max_sleep))
        finally:
            self.in_flight -= 1
        call.end = time.monotonic()
        self.calls.append(call)


def keyed(key: str, seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return key.encode(), json.dumps({"key": key, "seq": seq}).encode(), []


# -- order, concurrency, commits -----------------------------------------------------------


@pytest.mark.slow
async def test_order_per_key_concurrency_across_keys_and_commits(fast: Settings) -> None:
    topic = fast.kafka_topic_prefix + "orders"
    await ensure_topics(fast, [topic, fast.kafka_topic_prefix + "dead-letter"])
    keys = [f"doc-{i}" for i in range(20)]
    seqs: Counter[str] = Counter()
    records = []
    rng = random.Random(7)
    for _ in range(300):
        key = rng.choice(keys)
        records.append(keyed(key, seqs[key]))
        seqs[key] += 1
    meta = await produce(fast, topic, records)
    assert len({m.partition for m in meta}) == 3

    tracker = Tracker()
    async with running(fast, "orders", topic, tracker.handle) as run:
        await eventually(lambda: len(tracker.calls) >= 300)
        await asyncio.sleep(0.2)  # anything handled twice would show up now
        await run.stop()
    assert run.runner.stats.processed == 300

    # All handled, once.
    handled = Counter((c.key, c.seq) for c in tracker.calls)
    assert set(handled.values()) == {1}
    assert sorted(handled) == sorted((k, s) for k in seqs for s in range(seqs[k]))

    # One document's events one after the other, in produced order.
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in sorted(tracker.calls, key=lambda c: c.start):
        by_key[call.key].append(call)
    for key, calls in by_key.items():
        assert [c.seq for c in calls] == list(range(seqs[key])), key
        for earlier, later in itertools.pairwise(calls):
            assert later.start >= earlier.end, f"{key}: seq {later.seq} overlapped its predecessor"

    # Different documents really ran at the same time, also inside one partition.
    assert tracker.max_in_flight > 3
    same_partition_overlap = any(
        a.key != b.key and a.partition == b.partition and a.start < b.end and b.start < a.end
        for a, b in itertools.combinations(tracker.calls, 2)
    )
    assert same_partition_overlap

    # Everything was committed: a new member of the group gets only what comes next.
    await produce(fast, topic, [keyed("fresh", 0)])
    again = Tracker()
    async with running(fast, "orders", topic, again.handle) as run:
        await eventually(lambda: len(again.calls) >= 1)
        await asyncio.sleep(0.5)
        await run.stop()
    assert [(c.key, c.seq) for c in again.calls] == [("fresh", 0)]


async def test_in_flight_is_bounded_by_concurrency(fast: Settings) -> None:
    topic = fast.kafka_topic_prefix + "bounded"
    await ensure_topics(fast, [topic, fast.kafka_topic_prefix + "dead-letter"])
    # Distinct keys, so only the semaphore (not per-key order) limits parallelism.
    await produce(fast, topic, [keyed(f"doc-{i}", 0) for i in range(60)])

    tracker = Tracker(max_sleep=0.03)
    async with running(fast, "bounded", topic, tracker.handle, concurrency=5) as run:
        await eventually(lambda: len(tracker.calls) >= 60)
        await run.stop()
    assert tracker.max_in_flight == 5
    assert len(tracker.calls) == 60


async def test_unfinished_offset_is_not_committed(fast: Settings) -> None:
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "stuck"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(one, topic, [keyed(f"doc-{i}", 0) for i in range(10)])
    stuck_at = 4
    done: list[int] = []

    async def handler(record: Any) -> None:
        if record.offset == stuck_at:
            await asyncio.Event().wait()  # never finishes
        done.append(record.offset)

    async with running(one, "stuck", topic, handler, grace=0.3) as run:
        await eventually(lambda: len(done) == 9)
        await run.stop()
    assert sorted(done) == [o for o in range(10) if o != stuck_at]
    assert run.runner.stats.processed == 9
    assert run.stopped_in is not None and run.stopped_in < 5
    # Later offsets finished, but the commit never passes the one that did not.
    assert await committed(one, "notaflow-stuck", TopicPartition(topic, 0)) == stuck_at


async def test_stop_is_bounded_when_every_slot_is_busy(fast: Settings) -> None:
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "full"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(one, topic, [keyed(f"doc-{i}", 0) for i in range(6)])
    started: list[int] = []

    async def handler(record: Any) -> None:
        started.append(record.offset)
        await asyncio.Event().wait()  # a provider call that hangs

    async with running(one, "full", topic, handler, concurrency=2, grace=0.3) as run:
        await eventually(lambda: len(started) == 2)
        # The grace period bounds shutdown: 0.3 s, then cancel, commit and leave.
        await run.stop(timeout=2)
    assert started == [0, 1]
    assert await committed(one, "notaflow-full", TopicPartition(topic, 0)) is None


async def test_records_waiting_for_a_call_slot_at_stop_are_left_without_an_attempt(
    fast: Settings,
) -> None:
    """The Focus consumers' window is wider than the provider's limit: at a stop, the calls
    out finish and are committed, the records still waiting for a slot raise Stopping and
    stay, whole, for the next owner."""
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "window"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(one, topic, [keyed(f"doc-{i}", 0) for i in range(6)])
    started: list[int] = []
    calls = asyncio.Semaphore(2)  # the provider's limit, as FocusClient holds it

    async def handler(record: Any) -> None:
        await calls.acquire()
        try:
            if run.runner._stopping.is_set():
                raise Stopping("not started")
            started.append(record.offset)
            await asyncio.sleep(0.3)
        finally:
            calls.release()

    async with running(one, "window", topic, handler, concurrency=6, grace=5) as run:
        await eventually(lambda: len(started) == 2)
        await run.stop(timeout=3)
    stats = run.runner.stats
    assert started == [0, 1]
    assert (stats.processed, stats.left_for_redelivery) == (2, 4)
    assert (stats.retried, stats.dead_lettered) == (0, 0)
    assert await committed(one, "notaflow-window", TopicPartition(topic, 0)) == 2

    again = Tracker(max_sleep=0)
    async with running(one, "window", topic, again.handle) as rerun:
        await eventually(lambda: len(again.calls) >= 4)
        await asyncio.sleep(0.3)
        await rerun.stop()
    assert sorted(c.offset for c in again.calls) == [2, 3, 4, 5]


async def test_database_out_of_reach_is_retried_not_dead_lettered(
    fast: Settings, tmp_path: Path
) -> None:
    """A handler whose database is locked by another writer, or not there yet, retries like a
    provider 5xx; a statement error (a missing table) is still the record's own dead letter."""
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "db"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(one, topic, [keyed("locked", 0), keyed("missing", 0)])
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer holds the file
    attempts: Counter[str] = Counter()

    async def handler(record: Any) -> None:
        key = record.key.decode()
        attempts[key] += 1
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            if key == "locked":
                conn.execute("BEGIN IMMEDIATE")  # raises "database is locked" while held
                conn.execute("ROLLBACK")
            else:
                conn.execute("SELECT * FROM nowhere")
        finally:
            conn.close()

    retry = RetryPolicy(base=0.05, maximum=0.1, attempts=50)
    async with running(one, "db", topic, handler, retry=retry) as run:
        await eventually(lambda: attempts["locked"] >= 3 and attempts["missing"] == 1)
        holder.execute("ROLLBACK")  # the other writer is done
        holder.close()
        await eventually(lambda: run.runner.stats.processed == 2)
        await run.stop()
    stats = run.runner.stats
    assert stats.retried == attempts["locked"] - 1
    assert attempts["missing"] == 1 and stats.dead_lettered == 1
    dead = await read_all(one, one.kafka_topic_prefix + "dead-letter", 1)
    assert [r.key for r in dead] == [b"missing"]


# -- retries and dead letters --------------------------------------------------------------


async def test_retries_and_dead_letters(fast: Settings) -> None:
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "work"
    dlq = one.kafka_topic_prefix + "dead-letter"
    await ensure_topics(one, [topic, dlq])
    plan = [
        ("A", "flaky"),  # 0: two transient failures, then success
        ("B", "doomed"),  # 1: transient forever: dead-lettered after 4 attempts
        ("B", "ok"),  # 2: the same document continues after its dead letter
        ("C", "invalid"),  # 3: InvalidDocument: dead-lettered at once
        ("D", "refused"),  # 4: Permanent: dead-lettered at once
        ("E", "crash"),  # 5: an unexpected, non-retriable error: dead-lettered at once
        ("F", "limited"),  # 6: 429 with Retry-After 0.3 s, then success
        ("G", "ok"),  # 7: the partition keeps flowing
    ]
    await produce(
        one,
        topic,
        [
            (key.encode(), json.dumps({"do": do}).encode(), [("ce_id", f"id-{i}".encode())])
            for i, (key, do) in enumerate(plan)
        ],
    )
    attempts: Counter[int] = Counter()
    times: dict[int, list[float]] = defaultdict(list)
    finished: list[int] = []

    async def handler(record: Any) -> None:
        attempts[record.offset] += 1
        times[record.offset].append(time.monotonic())
        do = json.loads(record.value)["do"]
        n = attempts[record.offset]
        if do == "flaky" and n <= 2:
            raise Transient(f"HTTP 503 (try {n})")
        if do == "doomed":
            raise Transient("HTTP 502")
        if do == "invalid":
            raise InvalidDocument("prestador.cnpj", "CNPJ do prestador inválido")
        if do == "refused":
            raise Permanent("Focus refused our token")
        if do == "crash":
            raise RuntimeError("handler bug")
        if do == "limited" and n == 1:
            raise RateLimited("Focus rate limit reached", retry_after=0.3)
        finished.append(record.offset)

    policy = RetryPolicy(base=0.01, maximum=0.05, attempts=4)
    async with running(one, "work", topic, handler, retry=policy) as run:
        await eventually(lambda: run.runner.stats.processed == len(plan))
        await run.stop()

    assert attempts == {0: 3, 1: 4, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 1}
    assert sorted(finished) == [0, 2, 6, 7]
    assert times[2][0] > times[1][-1], "the document's next event waited for the dead letter"
    assert times[6][1] - times[6][0] >= 0.29, "the provider's Retry-After beats a short backoff"
    stats = run.runner.stats
    assert (stats.retried, stats.dead_lettered) == (2 + 3 + 1, 4)
    assert await committed(one, "notaflow-work", TopicPartition(topic, 0)) == len(plan)

    letters = {int(dict(r.headers)["dlq_origin_offset"]): r for r in await read_all(one, dlq, 4)}
    assert sorted(letters) == [1, 3, 4, 5]
    expected = {
        1: ("4", "Transient: HTTP 502"),
        3: ("1", "invalid: prestador.cnpj: CNPJ do prestador inválido"),
        4: ("1", "Permanent: Focus refused our token"),
        5: ("1", "RuntimeError: handler bug"),
    }
    for offset, (tries, error) in expected.items():
        record = letters[offset]
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["dlq_origin_topic"] == topic
        assert headers["dlq_origin_partition"] == "0"
        assert headers["dlq_origin_offset"] == str(offset)
        assert headers["dlq_attempts"] == tries
        assert headers["dlq_error"] == error
        assert headers["dlq_consumer"] == "work"
        assert int(headers["dlq_time"]) > 0
        assert headers["ce_id"] == f"id-{offset}", "the original headers travel along"
        assert record.key == plan[offset][0].encode()
        assert json.loads(record.value) == {"do": plan[offset][1]}


class SteadyPolicy(RetryPolicy):
    def delay(self, attempt: int, hint: float | None = None) -> float:
        return max(self.maximum, hint or 0.0)


@pytest.mark.slow
async def test_retry_schedule_survives_a_restart(fast: Settings, database_url: str) -> None:
    """A record failing transiently is stopped mid-backoff; the next runner (a restart, or the
    partition's next owner) continues its attempt count from the ledger instead of starting
    over, so the policy's attempt limit holds across restarts."""
    one = fast.replace(kafka_partitions=1, database_url=database_url)
    engine = create_engine(database_url)
    await migrate(engine)
    ledger = RetryLedger(engine)
    topic = one.kafka_topic_prefix + "flaky"
    dlq = one.kafka_topic_prefix + "dead-letter"
    await ensure_topics(one, [topic, dlq])
    await produce(one, topic, [(b"A", b"doomed", []), (b"B", b"fine", [])])
    calls: Counter[int] = Counter()

    async def handler(record: Any) -> None:
        calls[record.offset] += 1
        if record.value == b"doomed":
            raise Transient("HTTP 503")

    # A steady 1 s between attempts, not full jitter: two near-zero draws in a row let the
    # record spend all four attempts before the stop landed (seen once in CI on PostgreSQL).
    policy = SteadyPolicy(base=1.0, maximum=1.0, attempts=4)
    try:
        async with running(one, "flaky", topic, handler, retry=policy, ledger=ledger) as run:
            await eventually(lambda: calls[0] >= 2 and calls[1] == 1)
            await run.stop()
        # Stopped in its backoff: uncommitted, and the ledger knows how many attempts failed.
        before = calls[0]
        assert 2 <= before < 4
        assert await committed(one, "notaflow-flaky", TopicPartition(topic, 0)) is None
        [state] = (await ledger.load("flaky", [(topic, 0)])).values()
        assert state.attempts == before and state.last_error == "Transient: HTTP 503"

        async with running(one, "flaky", topic, handler, retry=policy, ledger=ledger) as run:
            await eventually(lambda: run.runner.stats.dead_lettered == 1)
            await eventually(lambda: calls[1] == 2)  # redelivered: it was never committed
            await run.stop()
        assert calls[0] == 4, "attempts before the restart + after it = the policy's four"
        [letter] = await read_all(one, dlq, 1)
        assert dict(letter.headers)["dlq_attempts"] == b"4"
        assert await ledger.load("flaky", [(topic, 0)]) == {}, "finished records leave no row"
        assert await committed(one, "notaflow-flaky", TopicPartition(topic, 0)) == 2
    finally:
        await engine.dispose()


# -- pure parts ----------------------------------------------------------------------------


def test_partition_commits_only_the_finished_prefix() -> None:
    part = _Partition()
    for offset in (10, 11, 12, 13):
        part.add(offset)
    assert (part.next_commit, part.dirty) == (10, False)
    part.done(12)  # out of order: nothing to commit yet
    assert (part.next_commit, part.dirty) == (10, False)
    part.done(10)
    assert (part.next_commit, part.dirty) == (11, True)
    part.dirty = False  # as after a commit
    part.done(11)  # releases 11 and the already finished 12
    assert (part.next_commit, part.dirty) == (13, True)
    part.done(13)
    assert part.next_commit == 14
    assert part.pending == {}


def test_partition_skips_gaps_between_offsets() -> None:
    part = _Partition()
    for offset in (5, 8, 20):  # compaction or transaction markers leave holes
        part.add(offset)
    part.done(20)
    assert part.next_commit == 5
    part.done(5)
    assert part.next_commit == 8
    part.done(8)
    assert part.next_commit == 21
    part.add(30)
    part.done(30)
    assert part.next_commit == 31


def test_partition_ignores_unknown_and_repeated_offsets() -> None:
    part = _Partition()
    part.add(0)
    part.add(1)
    part.done(7)  # never added (partition revoked and reassigned meanwhile)
    assert (part.next_commit, part.dirty) == (0, False)
    part.done(0)
    part.done(0)
    assert part.next_commit == 1
    assert part.pending == {1: False}


class SortedPartition:
    """The obvious version (sort the pending offsets on every finish), as the oracle."""

    def __init__(self) -> None:
        self.pending: dict[int, bool] = {}
        self.next_commit: int | None = None
        self.dirty = False

    def add(self, offset: int) -> None:
        self.pending[offset] = False
        if self.next_commit is None:
            self.next_commit = offset

    def done(self, offset: int) -> None:
        if offset in self.pending:
            self.pending[offset] = True
        for off in sorted(self.pending):
            if not self.pending[off]:
                self.next_commit = off
                break
            del self.pending[off]
            self.next_commit = off + 1
            self.dirty = True


@hypothesis_settings(max_examples=1000)  # pure and fast; the rare interleavings need the examples
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "done", "commit"]), st.integers(0, 30)),
        min_size=1,
        max_size=120,
    )
)
def test_partition_heap_agrees_with_sorting(steps: list[tuple[str, int]]) -> None:
    """Offsets added in any order (gaps, repeats, offsets finished before being added), in
    any interleaving with finishes and commits: same commit point, same pending set."""
    part, oracle = _Partition(), SortedPartition()
    for action, offset in steps:
        if action == "add":
            part.add(offset)
            oracle.add(offset)
        elif action == "done":
            part.done(offset)
            oracle.done(offset)
        else:
            part.dirty = oracle.dirty = False
        assert (part.next_commit, part.dirty) == (oracle.next_commit, oracle.dirty)
        assert part.pending == oracle.pending


def test_retry_delay_bounds() -> None:
    policy = RetryPolicy(base=0.5, maximum=4.0, attempts=8)
    for attempt in range(1, 9):
        cap = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays), attempt
        assert len(set(delays)) > 1, "jittered"
    assert max(policy.delay(8) for _ in range(300)) > 2.0  # the cap, not the base, bounds it


def test_retry_delay_hint_wins_when_longer() -> None:
    policy = RetryPolicy(base=0.1, maximum=1.0)
    assert policy.delay(1, hint=5.0) == 5.0
    assert policy.delay(20, hint=30.0) == 30.0
    assert all(policy.delay(3, hint=0.05) >= 0.05 for _ in range(100))
    assert all(policy.delay(3, hint=0.0) <= 0.4 for _ in range(100))
    assert all(0 <= policy.delay(3, hint=None) <= 0.4 for _ in range(100))


# -- assignment: co-partitioned topics together (issue 13) ---------------------------------


def _cluster(counts: dict[str, int]) -> ClusterMetadata:
    """Broker metadata as a MetadataResponse carries it: topics and their partitions."""
    cluster = ClusterMetadata()
    cluster.update_metadata(
        MetadataResponse_v0(
            [(0, "127.0.0.1", 9092)],
            [(0, topic, [(0, p, 0, [0], [0]) for p in range(n)]) for topic, n in counts.items()],
        )
    )
    return cluster


def _assign(
    assignor: type[AbstractPartitionAssignor], counts: dict[str, int], members: int
) -> dict[str, set[TopicPartition]]:
    """What the group leader computes: member id -> topic-partitions."""
    subscription = assignor.metadata(sorted(counts))
    ids = {f"member-{i}-{random.random()}": subscription for i in range(members)}
    return {
        member: set(given.partitions())
        for member, given in assignor.assign(_cluster(counts), ids).items()
    }


def _colocated(assignment: dict[str, set[TopicPartition]], topics: list[str]) -> bool:
    return not any(split_assignment(tps, topics) for tps in assignment.values())


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 6])
def test_the_runners_assignor_gives_partition_p_of_every_topic_to_one_member(
    members: int,
) -> None:
    topics = ["t.nfse.commands", "t.nfce.commands", "t.provider.events"]
    # The first choice is what a group of current members agrees on.
    assignor = ASSIGNORS[0]
    for partitions in (1, 3, 6, 12):
        assignment = _assign(assignor, dict.fromkeys(topics, partitions), members)
        assert _colocated(assignment, topics), (members, partitions, assignment)
        # Every partition of every topic, once, spread as evenly as the count allows.
        every = [tp for tps in assignment.values() for tp in tps]
        assert sorted(every) == sorted(
            TopicPartition(t, p) for t in topics for p in range(partitions)
        )
        numbers = [len({tp.partition for tp in tps}) for tps in assignment.values()]
        assert max(numbers) - min(numbers) <= 1, (members, partitions, numbers)


def test_round_robin_splits_a_document_when_the_members_do_not_divide_the_partitions() -> None:
    """Why the default had to go (and that the check above can fail): 4 members over 6
    partitions put a note's command and its callback in two processes."""
    topics = ["t.nfse.commands", "t.nfce.commands", "t.provider.events"]
    split = _assign(RoundRobinPartitionAssignor, dict.fromkeys(topics, 6), 4)
    assert not _colocated(split, topics)
    assert _colocated(_assign(RoundRobinPartitionAssignor, dict.fromkeys(topics, 6), 3), topics)


def test_copartition_problem_names_the_counts() -> None:
    assert copartition_problem({"a": 6, "b": 6, "c": 6}) is None
    problem = copartition_problem({"a": 6, "b": 4})
    assert problem is not None and "a=6" in problem and "b=4" in problem
    missing = copartition_problem({"a": 6, "b": None})
    assert missing is not None and "b" in missing


def test_split_assignment_finds_partition_numbers_given_for_some_topics_only() -> None:
    topics = ["a", "b"]
    together = {TopicPartition("a", 0), TopicPartition("b", 0), TopicPartition("a", 3)}
    assert split_assignment(together, topics) == {3}
    assert split_assignment(together - {TopicPartition("a", 3)}, topics) == set()
    assert split_assignment(set(), topics) == set()


async def test_runner_refuses_topics_with_different_partition_counts(fast: Settings) -> None:
    commands, events = fast.kafka_topic_prefix + "commands", fast.kafka_topic_prefix + "events"
    await ensure_topics(fast, [commands, fast.kafka_topic_prefix + "dead-letter"])
    await ensure_topics(fast.replace(kafka_partitions=2), [events])  # made by hand, say
    bus = Bus(fast)
    await bus.start()
    try:
        runner = Runner(fast, "mixed", [commands, events], Tracker().handle, bus, "dlq")
        with pytest.raises(TopicsNotCoPartitioned, match=r"commands=3.*events=2"):
            await asyncio.wait_for(runner.run(), 20)
        assert not runner.assigned.is_set()  # refused before joining the group
    finally:
        await bus.stop()


@pytest.mark.slow
async def test_consume_refuses_to_start_in_one_line(fast: Settings, tmp_path: Path) -> None:
    """`notaflow consume emission` as an operator runs it, against a provider-events topic
    created by hand with another partition count: exit 1, one line naming the counts."""
    names = Topics(fast.kafka_topic_prefix)
    await ensure_topics(fast.replace(kafka_partitions=2), [names.provider_events])
    settings = fast.replace(
        database_url=f"sqlite:///{tmp_path / 'notaflow.db'}", health_port=0, log_level="WARNING"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "notaflow.launch.cli", "consume", "emission"],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    output = (done.stdout + done.stderr).strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert output[-1].startswith("notaflow consume emission: refusing to start: "), output
    assert f"{names.provider_events}=2" in output[-1] and f"{names.nfse_commands}=3" in output[-1]


@pytest.mark.slow
async def test_two_runners_over_three_partitions_read_each_document_in_one_place(
    fast: Settings,
) -> None:
    """The real group protocol on the real broker: two members, two topics of three
    partitions (the round-robin default split them); every member holds partition p of both
    topics or of neither, and each document's records from both topics run in one runner."""
    three = fast.replace(kafka_partitions=3)
    topics = [three.kafka_topic_prefix + "commands", three.kafka_topic_prefix + "events"]
    await ensure_topics(three, [*topics, three.kafka_topic_prefix + "dead-letter"])
    seen: dict[str, set[str]] = defaultdict(set)  # key -> runners that handled it

    def handler_of(name: str) -> Handler:
        async def handle(record: Any) -> None:
            seen[record.key.decode()].add(name)

        return handle

    bus = Bus(three)
    await bus.start()
    await bus.wait_connected(10)
    runners = [
        Runner(three, "colocated", topics, handler_of(f"r{i}"), bus, topics[0] + ".dlq")
        for i in range(2)
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:

        def settled() -> bool:
            held = [r._consumer.assignment() if r._consumer else set() for r in runners]
            return all(held) and sum(len(h) for h in held) == 6

        await eventually(settled, timeout=30)
        for runner in runners:
            assert runner._consumer is not None
            assert split_assignment(runner._consumer.assignment(), topics) == set()
        keys = [f"doc-{i}" for i in range(60)]
        for topic in topics:
            await produce(three, topic, [keyed(key, 0) for key in keys])
        await eventually(lambda: len(seen) == 60, timeout=20)
        assert all(len(names) == 1 for names in seen.values()), dict(seen)
        assert len({name for names in seen.values() for name in names}) == 2
    finally:
        for runner in runners:
            runner.stop()
        await asyncio.wait(tasks, timeout=15)
        await bus.stop()


# -- fencing a revoked partition (issue 13) -------------------------------------------------


async def test_revoke_waits_for_running_records_and_starts_nothing_more(fast: Settings) -> None:
    """What the rebalance listener does with the partitions it gives up: the record under way
    finishes (within the grace period), the one queued behind it on the same document and the
    one waiting out a 30 s retry start nothing, and the commit covers exactly what finished."""
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "fence"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(
        one, topic, [keyed("slow", 0), keyed("slow", 1), keyed("retry", 0), keyed("other", 0)]
    )
    started: list[tuple[str, int]] = []
    finished: list[tuple[str, int]] = []

    async def handler(record: Any) -> None:
        body = json.loads(record.value)
        started.append((body["key"], body["seq"]))
        if body["key"] == "slow" and body["seq"] == 0:
            await asyncio.sleep(0.6)  # a provider call under way when the revoke comes
        if body["key"] == "retry":
            raise RateLimited("429", retry_after=30.0)
        finished.append((body["key"], body["seq"]))

    async with running(one, "fence", topic, handler, grace=5.0) as run:
        await eventually(lambda: ("other", 0) in finished and ("retry", 0) in started)
        assert ("slow", 0) not in finished
        began = time.monotonic()
        await run.runner.release({TopicPartition(topic, 0)})
        took = time.monotonic() - began
        # It waited for the call under way (not for the 30 s backoff), and no longer.
        assert ("slow", 0) in finished
        assert 0.2 < took < 3, took
        await asyncio.sleep(0.5)
        assert ("slow", 1) not in started  # queued behind it: fenced, never started
        assert started.count(("retry", 0)) == 1  # its backoff ended with the partition
        assert run.runner.stats.left_for_redelivery == 2
        # Offsets 0 (slow 0) and 3 (other) finished; 1 and 2 are the next owner's.
        assert await committed(one, "notaflow-fence", TopicPartition(topic, 0)) == 1
        await run.stop()


async def test_revoke_cancels_what_outlives_the_grace_period(fast: Settings) -> None:
    one = fast.replace(kafka_partitions=1)
    topic = one.kafka_topic_prefix + "fencehang"
    await ensure_topics(one, [topic, one.kafka_topic_prefix + "dead-letter"])
    await produce(one, topic, [keyed("hang", 0), keyed("fine", 0)])
    started: list[str] = []
    finished: list[str] = []

    async def handler(record: Any) -> None:
        key = json.loads(record.value)["key"]
        started.append(key)
        if key == "hang":
            await asyncio.Event().wait()  # a call that never answers
        finished.append(key)

    async with running(one, "fencehang", topic, handler, grace=0.3) as run:
        await eventually(lambda: finished == ["fine"] and "hang" in started)
        began = time.monotonic()
        await run.runner.release({TopicPartition(topic, 0)})
        assert time.monotonic() - began < 2.5
        assert not run.runner._window.tasks  # cancelled: nothing of it can act after the release
        assert await committed(one, "notaflow-fencehang", TopicPartition(topic, 0)) is None
        await run.stop()


# -- log lines ---------------------------------------------------------------------------------


async def test_a_records_log_lines_carry_its_ids_and_only_its_own(fast: Settings) -> None:
    """Every line a handler logs names its record (event id, tenant, ref, trace id, from the
    headers, made only when a line is logged), records running at once each their own."""
    topic = fast.kafka_topic_prefix + "logged"
    await ensure_topics(fast, [topic, fast.kafka_topic_prefix + "dead-letter"])
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    def headers(i: int) -> list[tuple[str, bytes]]:
        out = [("ce_id", f"ev-{i}".encode()), ("ce_tenant", b"acme"), ("ce_subject", b"r%d" % i)]
        if i % 2 == 0:  # odd records have no trace: no trace_id on their lines
            out.append(("traceparent", f"00-{trace}-00f067aa0ba902b7-01".encode()))
        return out

    await produce(fast, topic, [(b"k%d" % i, b"{}", headers(i)) for i in range(8)])
    seen: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append({"message": record.getMessage(), **current_context()})

    logger = logging.getLogger("tests.runner.logged")
    logger.setLevel(logging.INFO)
    logger.addHandler(keep := Keep())
    handled: list[str] = []

    async def handle(record: Any) -> None:
        await asyncio.sleep(random.uniform(0, 0.02))  # interleaved with the others
        logger.info("handling %s", dict(record.headers)["ce_id"].decode())
        handled.append(record.key.decode())

    try:
        async with running(fast, "logged", topic, handle) as run:
            await eventually(lambda: len(handled) >= 8)
            await run.stop()
        logger.info("outside")
    finally:
        logger.removeHandler(keep)
    lines = {line["message"]: line for line in seen}
    for i in range(8):
        line = lines[f"handling ev-{i}"]
        assert (line["event_id"], line["tenant"], line["ref"]) == (f"ev-{i}", "acme", f"r{i}")
        assert line.get("trace_id") == (trace if i % 2 == 0 else None)
    assert lines["outside"] == {"message": "outside"}
