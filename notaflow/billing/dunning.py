"""Dunning: which reminder step (days after the due date) an overdue invoice has reached, and
a tenant's steps as configured."""

from __future__ import annotations

from datetime import date
from typing import Any

DEFAULT_DUNNING_STEPS = (3, 10)


def dunning_step(due: date, today: date, steps: tuple[int, ...] | list[int]) -> int | None:
    """The latest reminder step (days after due) reached today; earlier steps a job missed are
    not sent late, the customer gets the current reminder only."""
    overdue = (today - due).days
    reached = [s for s in steps if 0 < s <= overdue]
    return max(reached) if reached else None


def parse_steps(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("dunning steps must be a non-empty list of days")
    steps = sorted({int(v) for v in value})
    if steps[0] < 1 or steps[-1] > 365:
        raise ValueError("dunning steps must be between 1 and 365 days")
    return tuple(steps)
