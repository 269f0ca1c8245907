"""What may be committed: per partition, the offset after the longest prefix of finished records.

Records finish out of order (different documents run concurrently inside a partition), so a
commit never passes a record that has not finished: a crash redelivers only unfinished work
(the handlers are idempotent) and skips none.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Partition = TypeVar("Partition")


@dataclass
class PartitionOffsets:
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


class Offsets(Generic[Partition]):
    """The commit positions of the partitions this member holds."""

    def __init__(self) -> None:
        self._parts: dict[Partition, PartitionOffsets] = {}

    def fetched(self, tp: Partition, offset: int) -> None:
        self._parts.setdefault(tp, PartitionOffsets()).add(offset)

    def finished(self, tp: Partition, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # None: the partition was released meanwhile
            part.done(offset)

    def next_commit(self, tp: Partition) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.next_commit

    def to_commit(
        self, only: set[Partition] | None = None
    ) -> dict[Partition, tuple[PartitionOffsets, int]]:
        """The positions that moved since they were last committed (with their partition's
        state, which `committed` marks clean)."""
        return {
            tp: (part, part.next_commit)
            for tp, part in self._parts.items()
            if part.dirty and part.next_commit is not None and (only is None or tp in only)
        }

    @staticmethod
    def committed(positions: dict[Partition, tuple[PartitionOffsets, int]]) -> None:
        # A revoke may have dropped a partition meanwhile, and records may have finished:
        # only what was committed is clean.
        for part, offset in positions.values():
            if part.next_commit == offset:
                part.dirty = False

    def forget(self, tp: Partition) -> None:
        self._parts.pop(tp, None)
