"""How long a consumer's fetch waits for records: short while records flow, longer once idle.

The short wait (`NOTAFLOW_CONSUMER_FETCH_WAIT_MS`, 25) is for the embedded broker, which holds
a fetch for most of its wait even when records arrive meanwhile: it bounds command-to-call
latency there. Kept while nothing comes, it made every idle consumer ask forty times a second:
an idle `notaflow dev` (four consumers) burnt ~20 ms of CPU a second per consumer and ~106 ms
in the broker answering them, a tenth of this 2-core machine doing nothing. After
`IDLE_AFTER` (10 s) without a record the wait becomes `NOTAFLOW_CONSUMER_FETCH_WAIT_IDLE_MS`
(250); the first record after that goes back to the short one. A record counts only if this
consumer takes it: the command topics are shared, and the cancellation consumer, which takes
none of the emit commands it reads, kept the short wait under every emission load (0.12 ms of
CPU a note in `bin/bench pipeline`, most of it asking). Kafka answers a fetch as soon
as records arrive, so there the longer wait costs no latency; on the embedded broker the first
records after ten quiet seconds wait up to ~200 ms more (measured: 80 ms at a 100 ms wait, 200
at 200-300, 300 at 500; idle CPU 8.8, 4.9 and 3.9 ms a second against 30 at 25). Ten seconds,
not one: records that come in bursts a few seconds apart (a paced load, a benchmark's phases)
keep the short wait, and an idle spell that long is where the saving is.

aiokafka has no setter for it: its fetcher reads `_fetch_max_wait_ms` each time it builds a
fetch request, so `apply` sets that (and says so when a new aiokafka no longer has it, which
a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IDLE_AFTER = 10.0  # seconds without a record before the longer wait


@dataclass
class FetchPacer:
    """Pure: told after each fetch whether it brought records, it answers the wait to use
    from now on when that changes (else None)."""

    busy_ms: int
    idle_ms: int
    idle_after: float = IDLE_AFTER
    wait_ms: int = field(init=False)
    _last_records: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.wait_ms = self.busy_ms

    def fetched(self, records: bool, now: float) -> int | None:
        if records or self._last_records is None:
            self._last_records = now
        want = self.busy_ms
        if not records and now - self._last_records >= self.idle_after:
            want = max(self.idle_ms, self.busy_ms)
        if want == self.wait_ms:
            return None
        self.wait_ms = want
        return want


def apply(consumer: Any, wait_ms: int) -> bool:
    """Set an AIOKafkaConsumer's fetch wait for its next fetch requests; False when this
    aiokafka has no such attribute (the wait then stays as the consumer was built with)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    return True
