"""Which member of a consumer group reads which partitions: co-partitioned topics together.

A consumer that reads several topics whose records share the document key (the emission
consumer: commands and Focus's callbacks) keeps a document's records in order only if partition
p of every one of those topics is read by the same process. aiokafka's default assignor
(round-robin over topic-partitions) does that only when the member count divides the partition
count: with 4 members over 6 partitions, a note's command ran in one process and its callback
in another, and the note's lifecycle went backwards.

The range assignor lays each topic's partitions out in order over the members sorted by id:
with equal partition counts every topic is cut at the same places, so partition p of every
topic lands on the same member, for any member count. aiokafka ships it; we check, before
joining, that the counts are equal (a topic created by hand with another count silently breaks
key co-location, as murmur2(key) % count differs), and, on every assignment, that what we were
given is co-located.

Round-robin stays in the list as a fallback only so that a rolling upgrade can join a group
whose older members know nothing else (the group picks a protocol every member supports, and
each member's first choice wins once all members are new): while both versions run, documents
may be split as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from notaflow.bus import client_options
from notaflow.errors import ConfigurationError
from notaflow.settings import Settings

ASSIGNORS = (RangePartitionAssignor, RoundRobinPartitionAssignor)


class TopicsNotCoPartitioned(ConfigurationError):
    """The topics a consumer reads together have different partition counts (or are missing)."""


def copartition_problem(counts: Mapping[str, int | None]) -> str | None:
    """Why these topics cannot be read together with keys co-located, or None when they can.
    `counts` is each topic's partition count (None: the topic does not exist)."""
    missing = sorted(topic for topic, n in counts.items() if not n)
    if missing:
        return f"topic(s) missing or without partitions: {', '.join(missing)}"
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{topic}={n}" for topic, n in sorted(counts.items()))
        return (
            f"topics read together must have the same partition count so that one document's "
            f"records land on one consumer ({listed}); recreate or grow them to the same count"
        )
    return None


def split_assignment(assigned: Iterable[TopicPartition], topics: Iterable[str]) -> set[int]:
    """The partition numbers assigned for some but not all of `topics`: empty when the
    assignment keeps every subscribed topic's partition p on this member together."""
    wanted = set(topics)
    by_number: dict[int, set[str]] = {}
    for tp in assigned:
        by_number.setdefault(tp.partition, set()).add(tp.topic)
    return {p for p, got in by_number.items() if got != wanted}


async def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int | None]:
    """Each topic's partition count, from the broker's metadata (None: no such topic)."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    counts: dict[str, int | None] = dict.fromkeys(topics)
    for entry in described:
        if entry["topic"] in counts and not entry["error_code"]:
            counts[entry["topic"]] = len(entry["partitions"])
    return counts


async def require_copartitioned(settings: Settings, topics: list[str]) -> None:
    """Refuse (TopicsNotCoPartitioned) to read `topics` together unless their partition counts
    are equal. One topic needs nothing."""
    if len(topics) < 2:
        return
    problem = copartition_problem(await partition_counts(settings, topics))
    if problem is not None:
        raise TopicsNotCoPartitioned(problem)
