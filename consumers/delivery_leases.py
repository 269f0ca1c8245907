"""Delivery locks as leases: short, and renewed while their attempt runs.

A delivery row is locked while it is attempted, so replicas (and a process's own retry pass)
never send it at once. The lock used to be fixed at two minutes, longer than the slowest
attempt (an SMTP server at its timeouts, an e-mail queued behind others at the server's
pace): a process that died left its deliveries under way locked that long before anyone
tried them again.

Here the lock is a lease of `lease` seconds that the process renews, every third of it, for
every attempt under way, in one statement. A process that dies stops renewing, and its
deliveries are free a lease later for the retry pass of any replica. An attempt whose lease
could not be renewed (the database unreachable, or slower than a third of the lease) is
stopped before the lease can run out and is not recorded: the row stays pending, and whoever
takes it once the lease has ended attempts it again. A lease renewed before it ran out was
never free, so no other process can hold it meanwhile.

What a stop cannot undo is an e-mail whose text was all sent and whose answer had not come
back: the server may have taken it, and the next attempt sends it again. That takes the
database failing in the middle of one send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from notaflow.errors import Transient

log = logging.getLogger(__name__)

DEFAULT_LEASE = 15.0  # NOTAFLOW_DELIVERY_LEASE's default


class LeaseLost(Transient):
    """The attempt was stopped: its lock could not be kept. Whoever takes the delivery once
    the lease has run out attempts it again."""


class Renewer(Protocol):
    async def renew(self, delivery_ids: Sequence[int], seconds: float) -> set[int]: ...


class _Held:
    """`async with`: the lease of one delivery kept while the block runs. LeaseLost when the
    block was stopped because it could not be."""

    __slots__ = ("_id", "_leases", "_scope")

    def __init__(self, leases: Leases, delivery_id: int) -> None:
        self._leases, self._id = leases, delivery_id
        # A scope with no deadline (no timer is scheduled): the renewal loop ends it, if it
        # must, by giving it one that has passed.
        self._scope = asyncio.timeout(None)

    async def __aenter__(self) -> None:
        await self._scope.__aenter__()
        self._leases._held[self._id] = self._scope

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._leases._held.pop(self._id, None)
        try:
            await self._scope.__aexit__(kind, exc, tb)
        except TimeoutError as error:
            if self._scope.expired():
                raise LeaseLost(f"the lock of delivery {self._id} could not be kept") from error
            raise
        return None


class Leases:
    """The leases of the attempts under way in one process, and the loop that renews them."""

    def __init__(self, deliveries: Renewer, lease: float) -> None:
        if lease <= 0:
            raise ValueError(f"a lease must be positive, not {lease}")
        self._deliveries = deliveries
        self.lease = lease
        self._held: dict[int, asyncio.Timeout] = {}

    def held(self, delivery_id: int) -> _Held:
        """Keep the lock of `delivery_id`, just taken for `lease` seconds, while the block runs."""
        return _Held(self, delivery_id)

    @property
    def under_way(self) -> int:
        return len(self._held)

    async def renew_once(self) -> None:
        """One pass: every lease held is renewed, or its attempt is stopped. Bounded by a third
        of the lease, so a stop comes at the latest two thirds into a lease."""
        ids = list(self._held)
        if not ids:
            return
        try:
            async with asyncio.timeout(self.lease / 3):
                kept = await self._deliveries.renew(ids, self.lease)
        except Exception as exc:
            log.warning("could not renew %d delivery locks, stopping their attempts: %r",
                        len(ids), exc)  # fmt: skip
            kept = set()
        now = asyncio.get_running_loop().time()
        for delivery_id in ids:
            scope = self._held.get(delivery_id)
            # A scope stopped by an earlier pass and still running (its block caught the
            # cancellation to clean up) is left to end; a stopped scope cannot be rescheduled.
            if delivery_id not in kept and scope is not None and not scope.expired():
                scope.reschedule(now)  # ends the attempt's block with LeaseLost

    async def run(self) -> None:
        """Renew every third of a lease, until cancelled (after the attempts have ended: a
        stopping consumer still finishes the ones under way)."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.renew_once()
            except Exception:  # the loop must outlive any one pass: the leases depend on it
                log.exception("delivery lease renewal pass failed")
