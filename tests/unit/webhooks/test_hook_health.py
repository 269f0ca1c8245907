"""The hook health rule (`hook_is_failing`): Focus disables "hooks failing most deliveries for
7 days". Its edges by example, and its promises as properties: order does not matter, what is
older than 7 days does not matter, successes never make a hook fail, a hook needs a failed
attempt more than 6 days old and one less than a day old, and then it fails exactly when most
deliveries failed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notaflow.store.hooks import Attempt, hook_is_failing

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)


def ago(age: timedelta, delivery_id: int, ok: bool = False) -> Attempt:
    return Attempt(delivery_id, NOW - age, ok)


# A hook failing all week: one failed delivery in the first day, one in the last.
SPAN = [ago(6.5 * DAY, 1), ago(0.5 * DAY, 2)]


# -- by example ------------------------------------------------------------------------------


def test_failures_across_the_week_fail_the_hook() -> None:
    assert hook_is_failing(SPAN, NOW)
    assert not hook_is_failing([], NOW)
    assert not hook_is_failing(SPAN[:1], NOW)  # nothing failed in the last day
    assert not hook_is_failing(SPAN[1:], NOW)  # nothing failed in the first day


def test_most_means_more_than_half() -> None:
    ok = [ago(3 * DAY, 10, ok=True), ago(2 * DAY, 11, ok=True)]
    assert not hook_is_failing([*SPAN, *ok], NOW)  # 2 of 4
    assert hook_is_failing([*SPAN, ago(4 * DAY, 3), *ok], NOW)  # 3 of 5
    assert hook_is_failing([*SPAN, ok[0]], NOW)  # 2 of 3: a success in between does not save it


def test_a_delivery_counts_by_its_latest_attempt() -> None:
    # Delivery 2 failed in the last day, then got through: a success, and its failure does
    # not count as the last day's either.
    assert not hook_is_failing([*SPAN, ago(0.4 * DAY, 2, ok=True)], NOW)
    # Most deliveries failed (1 and 3), but only a delivery that then got through failed at
    # either end of the week: not failing across the week.
    middle = ago(3 * DAY, 3)
    assert not hook_is_failing([*SPAN, middle, ago(0.4 * DAY, 2, ok=True)], NOW)
    assert not hook_is_failing([*SPAN, middle, ago(6.4 * DAY, 1, ok=True)], NOW)
    assert hook_is_failing([*SPAN, middle], NOW)
    # A success before the failure that followed it (never happens: a success ends a
    # delivery) leaves the delivery failed.
    assert hook_is_failing([*SPAN, ago(0.6 * DAY, 2, ok=True)], NOW)
    # Same instant: the success wins, whatever the order.
    same = [ago(0.5 * DAY, 2, ok=True)]
    assert not hook_is_failing([*SPAN, *same], NOW)
    assert not hook_is_failing([*same, *SPAN], NOW)
    # Retries of a failed delivery are still one delivery.
    retries = [ago(0.5 * DAY - k * timedelta(hours=1), 2) for k in range(1, 5)]
    assert hook_is_failing([*SPAN, *retries], NOW)
    assert not hook_is_failing([*SPAN, *retries, ago(DAY, 20, ok=True), ago(DAY, 21, ok=True)], NOW)


@pytest.mark.parametrize(
    ("age", "in_first_day"),
    [
        (7 * DAY + TICK, False),  # outside the window
        (7 * DAY, True),  # the window's oldest instant
        (6 * DAY + TICK, True),
        (6 * DAY, False),  # exactly 6 days old: not *more* than 6
    ],
)
def test_first_day_edges(age: timedelta, in_first_day: bool) -> None:
    assert hook_is_failing([ago(age, 1), SPAN[1]], NOW) is in_first_day


@pytest.mark.parametrize(
    ("age", "in_last_day"),
    [
        (DAY, False),  # exactly a day old
        (DAY - TICK, True),
        (timedelta(0), True),
        (-timedelta(seconds=5), True),  # another replica's clock runs ahead
    ],
)
def test_last_day_edges(age: timedelta, in_last_day: bool) -> None:
    assert hook_is_failing([SPAN[0], ago(age, 2)], NOW) is in_last_day


def test_attempts_older_than_the_window_are_ignored() -> None:
    # A success 8 days ago is not part of the week; nor is that delivery.
    assert hook_is_failing([*SPAN, ago(8 * DAY, 3, ok=True), ago(8 * DAY, 4, ok=True)], NOW)
    # Only the attempt in the window counts: delivery 1 failed 6.5 days ago (its success 7.5
    # days ago is older, and could not have been followed by a failure anyway).
    assert hook_is_failing([ago(7.5 * DAY, 1, ok=True), *SPAN], NOW)


def test_the_rule_judges_at_now() -> None:
    # The same attempts, judged a day later: the first day's failure has left the window.
    assert hook_is_failing(SPAN, NOW)
    assert not hook_is_failing(SPAN, NOW + DAY)
    # Two days earlier, the oldest failure was not 6 days old yet.
    assert not hook_is_failing(SPAN, NOW - 2 * DAY)


# -- properties ------------------------------------------------------------------------------

EDGES = [
    timedelta(0),
    DAY - TICK,
    DAY,
    6 * DAY,
    6 * DAY + TICK,
    7 * DAY,
    7 * DAY + TICK,
    -timedelta(minutes=1),
]
ages = st.timedeltas(min_value=-timedelta(hours=1), max_value=9 * DAY) | st.sampled_from(EDGES)
attempts = st.lists(
    st.builds(ago, ages, st.integers(min_value=0, max_value=12), st.booleans()), max_size=40
)


@given(attempts, st.randoms(use_true_random=False))
def test_order_does_not_matter(history: list[Attempt], rnd: random.Random) -> None:
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert hook_is_failing(shuffled, NOW) == hook_is_failing(history, NOW)


@given(attempts)
def test_all_success_never_fails(history: list[Attempt]) -> None:
    assert not hook_is_failing([a._replace(ok=True) for a in history], NOW)


@given(attempts)
def test_less_than_a_week_of_history_never_fails(history: list[Attempt]) -> None:
    # Nothing more than 6 days old: the hook is younger, or was not attempted that long ago.
    young = [a for a in history if a.at >= NOW - 6 * DAY]
    assert not hook_is_failing(young, NOW)


@given(attempts, st.lists(ages, min_size=1, max_size=5))
def test_a_successful_delivery_never_turns_a_healthy_hook_failing(
    history: list[Attempt], tries: list[timedelta]
) -> None:
    # A new delivery whose latest attempt got through, maybe after failed ones.
    last = min(tries)
    new = [ago(age, 99, ok=age == last) for age in tries]
    if not hook_is_failing(history, NOW):
        assert not hook_is_failing([*history, *new], NOW)


@given(attempts, st.integers(min_value=0, max_value=12), ages)
def test_a_later_success_never_turns_a_healthy_hook_failing(
    history: list[Attempt], delivery_id: int, age: timedelta
) -> None:
    mine = [a.at for a in history if a.delivery_id == delivery_id]
    later = ago(age, delivery_id, ok=True)
    if not hook_is_failing(history, NOW) and all(at <= later.at for at in mine):
        assert not hook_is_failing([*history, later], NOW)


@given(attempts, st.lists(st.builds(ago, ages, st.just(0), st.booleans()), max_size=5))
def test_what_is_older_than_the_week_does_not_matter(
    history: list[Attempt], old: list[Attempt]
) -> None:
    older = [a._replace(delivery_id=100 + i, at=a.at - 8 * DAY) for i, a in enumerate(old)]
    same_ids = [a._replace(at=NOW - 7 * DAY - TICK) for a in history]
    verdict = hook_is_failing(history, NOW)
    assert hook_is_failing([*history, *older], NOW) == verdict
    assert hook_is_failing([*same_ids, *history], NOW) == verdict


@given(attempts)
def test_a_failing_hook_failed_at_both_ends_of_the_week(history: list[Attempt]) -> None:
    if hook_is_failing(history, NOW):
        failed_ages = [NOW - a.at for a in history if not a.ok]
        assert any(6 * DAY < age <= 7 * DAY for age in failed_ages)
        assert any(age < DAY for age in failed_ages)


@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=20),
    st.lists(st.timedeltas(min_value=DAY, max_value=6 * DAY), min_size=42, max_size=42),
)
def test_across_the_week_it_fails_exactly_when_most_deliveries_failed(
    failed: int, succeeded: int, middle: list[timedelta]
) -> None:
    # Both ends of the week failed (deliveries 0 and 1); the rest anywhere in between.
    history = [*SPAN[::-1]]
    history += [ago(middle[i], 10 + i) for i in range(failed)]
    history += [ago(middle[21 + i], 100 + i, ok=True) for i in range(succeeded)]
    assert hook_is_failing(history, NOW) is (2 + failed > succeeded)
