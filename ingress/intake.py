"""Group commit for the ingress's hot path: the claims and publishes of concurrent requests
share one database transaction and one Kafka batch per partition.

A request's answer still means what the design promises: 2xx only after its ref is claimed
in the database and its command acknowledged by Kafka (acks=all). Batches form by themselves:
the next one starts as soon as the previous claim transaction ends, so an idle ingress adds no
latency and a busy one pays one commit and one produce request per batch instead of per
request. Claims of batch N+1 overlap the publish of batch N.

One publish at a time: a publish waits for the acks of the one before it anyway (the bus keeps
one batch of ours pending per partition, and every batch spans the partitions), so what is
claimed meanwhile is published together when it ends, as one set of Kafka batches instead of
one set per claim batch each queued behind the last (fewer, fuller batches: less CPU per
record, fewer wake-ups). If that publish fails, what was claimed behind it is answered at once
(503, claims released) rather than after one more timeout, as the bus does for batches queued
behind a failed one.

A re-emission after `erro_autorizacao` takes the ref from the errored attempt, and the ingress
is then the next to move the note: it publishes that error's lifecycle event again, ahead of
the new attempt's command. The consumer that recorded the error may have died before its
event went out; the redelivered callback that would send it finds the note at the new attempt
and may not publish an older status, so the client's `erro_autorizacao` hook and the stream's
record would be lost. Under its deterministic id, a copy of an event that did go out is kept
once downstream. Only re-emissions pay for it: one more produce before their commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from notaflow import topics as t
from notaflow.batcher import GroupBatcher, Pending
from notaflow.bus import Bus
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, RefInUse
from notaflow.store import Claim, ClaimRequest, DocumentStore
from notaflow.views import status_event

log = logging.getLogger(__name__)

_Item = tuple[ClaimRequest, Event, bytes]
_Claimed = tuple[_Item, Claim, "asyncio.Future[Claim | RefInUse]"]


class Intake:
    def __init__(
        self,
        documents: DocumentStore,
        bus: Bus,
        topic: str,
        lifecycle: str,
        max_batch: int = 256,
        max_publish: int = 1024,
    ) -> None:
        self._docs = documents
        self._bus = bus
        self._topic = topic
        self._lifecycle = lifecycle
        self._max_publish = max_publish
        self._claims: GroupBatcher[_Item, Claim | RefInUse] = GroupBatcher(
            self._claim, max_batch=max_batch, settle=self._claimed_batch, failed=_db_failed
        )
        self._claimed: list[_Claimed] = []
        self._publisher: asyncio.Task[None] | None = None

    async def submit(self, request: ClaimRequest, event: Event, key: bytes) -> Claim:
        """Claim `request.ref` and publish `event`; raises RefInUse or BusUnavailable."""
        claim = await self._claims.submit((request, event, key))
        assert isinstance(claim, Claim)  # a refusal is raised, never returned
        return claim

    async def _claim(self, batch: list[_Item]) -> list[Claim | RefInUse]:
        try:
            return await self._docs.claim_many([item[0] for item in batch])
        except Exception as exc:  # the database failed: nothing was claimed
            log.warning("claim batch failed: %r", exc)
            raise

    def _claimed_batch(
        self, batch: Pending[_Item, Claim | RefInUse], results: Sequence[Claim | RefInUse]
    ) -> None:
        """A claim batch's answers: refusals at once, claims once their commands are in Kafka."""
        claimed: list[_Claimed] = []
        for (item, future), result in zip(batch, results, strict=True):
            if isinstance(result, RefInUse):
                if not future.done():
                    future.set_exception(result)
            else:
                claimed.append((item, result, future))
        if claimed:
            self._claimed += claimed
            if self._publisher is None or self._publisher.done():
                self._publisher = asyncio.create_task(self._publish_claimed())

    async def _publish_claimed(self) -> None:
        while self._claimed:
            n = self._max_publish
            group, self._claimed = self._claimed[:n], self._claimed[n:]
            error = await self._publish(group)
            if error is not None and self._claimed:
                # Queued behind a failed publish: answered now, with nothing sent.
                behind, self._claimed = self._claimed, []
                await self._fail(
                    behind, BusUnavailable("Kafka failed the publish queued ahead of these")
                )

    async def _publish(self, claimed: list[_Claimed]) -> BusUnavailable | None:
        replaced = [
            status_event(claim.replaced, t.SOURCE_INGRESS, item[1].trace())
            for item, claim, _ in claimed
            if claim.replaced is not None
        ]
        try:
            if replaced:  # acknowledged before the commands: the new attempt's events follow
                await self._bus.publish_many(self._lifecycle, replaced)
            await self._bus.publish_many(
                self._topic, [(item[2], item[1]) for item, _, _ in claimed]
            )
        except BusUnavailable as error:
            await self._fail(claimed, error)
            return error
        for _, claim, future in claimed:
            if not future.done():
                future.set_result(claim)
        return None

    async def _fail(self, claimed: list[_Claimed], error: BusUnavailable) -> None:
        log.warning("publish of %d commands failed: %s", len(claimed), error)
        # Not in Kafka means not accepted: give the refs back for the clients' retries.
        for _, claim, _ in claimed:
            try:
                await self._docs.release(claim)
            except Exception:
                log.exception("could not release claim %s", claim)
        for _, _, future in claimed:
            if not future.done():
                future.set_exception(error)


def _db_failed(exc: Exception) -> BusUnavailable:
    return BusUnavailable(f"database unavailable: {exc!r}")
