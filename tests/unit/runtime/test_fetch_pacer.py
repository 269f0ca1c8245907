"""The fetch wait: short while records flow, long after a second without any."""

from __future__ import annotations

from notaflow.consumers.runtime.fetch_wait import FetchPacer


def test_short_while_records_flow_long_once_idle_short_again_at_the_first_record() -> None:
    p = FetchPacer(busy_ms=25, idle_ms=500, idle_after=1.0)
    assert p.wait_ms == 25
    assert p.fetched(False, 0.0) is None  # the first fetch starts the clock
    assert p.fetched(True, 0.5) is None
    assert p.fetched(False, 1.2) is None  # 0.7 s without records: still busy
    assert p.fetched(False, 1.5) == 500
    assert p.fetched(False, 9.0) is None  # told once
    assert p.fetched(True, 9.1) == 25
    assert p.fetched(False, 9.2) is None
    assert p.fetched(False, 10.2) == 500


def test_an_idle_wait_below_the_busy_one_never_shortens_it() -> None:
    p = FetchPacer(busy_ms=100, idle_ms=20, idle_after=0.0)
    assert p.fetched(False, 0.0) is None
    assert p.fetched(False, 5.0) is None
    assert p.wait_ms == 100
