"""The per-tenant scheduler of the consumer window (issue 15): tenants served in turn, a cap
per tenant, FIFO per tenant (so per document), a bounded buffer, and queued work dropped on
revoke without touching what runs."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from notaflow.consumers.fairness import (
    FairQueue,
    backlog_view,
    credit_cap,
    tenant_cap,
    tenant_of,
)


def test_tenants_are_served_in_turn_not_in_arrival_order() -> None:
    q: FairQueue[str] = FairQueue(window=100)
    for i in range(50):
        q.push("burst", f"b{i}")
    q.push("t1", "x1")
    q.push("t2", "y1")
    started = [q.pop() for _ in range(6)]
    assert [s[0][0] for s in started if s] == ["burst", "t1", "t2", "burst", "burst", "burst"]


def test_one_tenant_holds_at_most_its_cap_and_the_rest_stays_free_for_others() -> None:
    q: FairQueue[int] = FairQueue(window=8, cap=tenant_cap(8))
    assert q.cap == 6
    for i in range(100):
        q.push("burst", i)
    got = []
    while (turn := q.pop()) is not None:
        got.append(turn)
    assert len(got) == 6  # two places stay free while "burst" waits for its credits
    q.push("other", 1)
    assert q.pop() == (("other", ""), 1)
    q.finished(("burst", ""))
    assert q.pop() == (("burst", ""), 6)  # FIFO within the tenant
    assert q.pop() is None  # window full


def test_a_lone_tenant_still_gets_its_cap_and_the_window_is_never_exceeded() -> None:
    q: FairQueue[int] = FairQueue(window=4)  # no cap: the whole window
    for i in range(10):
        q.push("only", i)
    only = ("only", "")
    assert [q.pop() for _ in range(5)] == [(only, 0), (only, 1), (only, 2), (only, 3), None]


def test_the_buffer_bounds_what_is_fetched_ahead() -> None:
    q: FairQueue[int] = FairQueue(window=2, buffer=3)
    for i in range(3):
        assert q.has_room()
        q.push("a", i)
    assert not q.has_room()
    q.pop()
    assert not q.has_room()  # running still counts
    q.finished(("a", ""))
    assert q.has_room()


def test_drop_takes_only_queued_items_and_backlog_counts_both() -> None:
    q: FairQueue[tuple[int, str]] = FairQueue(window=10)
    for i in range(4):
        q.push("a", (i % 2, f"a{i}"))
    q.push("b", (1, "b0"))
    assert q.pop() == (("a", ""), (0, "a0"))
    assert q.backlog() == {"a": 4, "b": 1}
    dropped = q.drop(lambda item: item[0] == 1)
    assert sorted(d[1] for d in dropped) == ["a1", "a3", "b0"]
    assert q.backlog() == {"a": 2}
    assert q.detail() == {"a": (1, 1)}
    assert q.pop() == (("a", ""), (0, "a2"))


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), max_size=200))
def test_every_item_starts_once_in_fifo_order_per_tenant_and_document(
    pushes: list[tuple[str, int]],
) -> None:
    q: FairQueue[tuple[str, int, int]] = FairQueue(window=3, cap=2)
    for seq, (tenant, doc) in enumerate(pushes):
        q.push(tenant, (tenant, doc, seq))
    started: list[tuple[str, int, int]] = []
    running: list[tuple[str, str]] = []
    while q.held:
        turn = q.pop()
        if turn is None:
            # Window full (or every tenant at its cap): the oldest running one finishes.
            q.finished(running.pop(0))
            continue
        running.append(turn[0])
        started.append(turn[1])
        assert q.running <= 3
    assert sorted(started, key=lambda s: s[2]) == [(t, d, i) for i, (t, d) in enumerate(pushes)]
    for tenant in "abcd":
        seqs = [s[2] for s in started if s[0] == tenant]
        assert seqs == sorted(seqs)


@dataclass
class Rec:
    key: bytes | None
    headers: list[tuple[str, bytes]]


def test_tenant_of_reads_the_key_then_the_header() -> None:
    assert tenant_of(Rec(b"acme:nfse:r1", [])) == "acme"
    assert tenant_of(Rec(b"no-colon", [("ce_tenant", b"beta")])) == "beta"
    assert tenant_of(Rec(None, [])) == ""


def test_backlog_view_estimates_the_drain_at_the_tenants_credit_rate() -> None:
    view = backlog_view(
        {"burst": (2900, 100), "calm": (0, 1), "new": (5, 0)}, {"burst": 50.0, "calm": 50.0}.get
    )
    assert [t["tenant"] for t in view["tenants"]] == ["burst", "new", "calm"]
    assert view["tenants"][0]["drains_in_seconds"] == 60.0
    assert view["tenants"][1]["drains_in_seconds"] is None  # no answer told its rate yet


def test_callbacks_do_not_wait_behind_commands_but_a_document_keeps_its_order() -> None:
    q: FairQueue[str] = FairQueue(window=10, cap=2)
    for i in range(5):
        q.push("burst", f"cmd{i}", lane="commands", key=f"doc{i}")
    q.push("burst", "cmd4-again", lane="commands", key="doc4")
    assert [q.pop(), q.pop()] == [(("burst", "commands"), "cmd0"), (("burst", "commands"), "cmd1")]
    assert q.pop() is None  # the commands wait for credits, at their cap
    q.push("burst", "cb0", lane="callbacks", key="doc0")  # doc0's command started: own lane
    q.push("burst", "cb4", lane="callbacks", key="doc4")  # doc4's are still queued: behind them
    assert q.pop() == (("burst", "callbacks"), "cb0")
    assert q.pop() is None
    q.finished(("burst", "commands"))
    q.finished(("burst", "commands"))
    order = [turn[1] for turn in iter(q.pop, None)]
    q.finished(("burst", "commands"))
    q.finished(("burst", "commands"))
    order += [turn[1] for turn in iter(q.pop, None)]
    q.finished(("burst", "commands"))
    q.finished(("burst", "commands"))
    order += [turn[1] for turn in iter(q.pop, None)]
    # cb4 followed doc4's queued records into the commands queue, and starts after them.
    assert order == ["cmd2", "cmd3", "cmd4", "cmd4-again", "cb4"]
    assert q.backlog() == {"burst": 2}  # cb0 and cb4 running


def test_a_queue_runs_what_its_credits_pay_for_once_they_are_known() -> None:
    # The tenant's token: 5 credits a second once Focus's first answer told it (None before).
    rates: dict[str, float | None] = {"burst": None}

    def cap(slot: tuple[str, str]) -> int | None:
        tenant, lane = slot
        return credit_cap(rates[tenant]) if lane == "nfse" else None

    q: FairQueue[int] = FairQueue(window=100, cap=75, slot_cap=cap)
    for i in range(200):
        q.push("burst", i, lane="nfse")
        q.push("burst", 1000 + i, lane="nfce")
    first = [q.pop() for _ in range(20)]
    assert all(turn is not None for turn in first)  # unknown rate: only the tenant cap
    rates["burst"] = 5.0
    assert credit_cap(5.0) == 10 and credit_cap(0.5) == 4 and credit_cap(None) is None
    while (turn := q.pop()) is not None:
        first.append(turn)
    lanes = [slot[1] for slot, _ in (t for t in first if t is not None)]
    assert lanes.count("nfse") == 10  # 10 started before the rate was known: no more now
    assert lanes.count("nfce") == 75  # no credits there: the tenant cap alone
    for _ in range(10):
        q.finished(("burst", "nfse"))  # its 10 running are done: 10 more may start
    again = []
    while (turn := q.pop()) is not None:
        again.append(turn[0])
    assert again == [("burst", "nfse")] * 10
