"""When a failed webhook delivery is tried again: Focus NFe's schedule, with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

#: Focus NFe's retry delays, in seconds, after the first failed delivery.
RETRY_SCHEDULE: tuple[float, ...] = (60, 1800, 3600, 10800, 86400)


def next_attempt_delay(
    attempt: int,
    schedule: Sequence[float] = RETRY_SCHEDULE,
    jitter: float = 0.1,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before retry number `attempt` (1 = the first retry), ±`jitter` of it;
    None once the schedule is exhausted: give up."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if attempt > len(schedule):
        return None
    base = float(schedule[attempt - 1])
    return base * (1 + uniform(-jitter, jitter)) if jitter else base
