"""Fault injection: PostgreSQL stops and comes back while commands stream in.

The whole product runs in production form (Focus sandbox, `notaflow ingress`, `notaflow consume
emission`, each its own process) on its own PostgreSQL cluster, which is shut down (fast
shutdown: every session cut, as in a restart or a failover) in the middle of an open-loop
stream of `POST /v2/nfse`, kept down a few seconds and started again on the same port. The
promise under test: every request is answered 202 or 503 (in the Focus dialect, with
Retry-After) within a bound, never a 500 and never a hang; `/readyz` fails while the database
is away and recovers; every 202 ends `autorizado`, none twice; the consumer retries what the
outage interrupted instead of dead-lettering it, and nobody is restarted. Callbacks Focus sent
while the database was away are answered 503; the sandbox sends them again, and the reconciler
completes any note whose callback gave up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notaflow import topics as t
from notaflow.settings import Settings
from testkit.kafka import read_topic
from testkit.postgres import ThrowawayPostgres, pg_binaries
from testkit.stack import Stack
from testkit.streaming import Stream, open_loop
from tests.faults.runtime.test_broker_outage import settle

INTERVAL = 1 / 20  # a command every 50 ms whatever the answers (open loop)
BEFORE, DOWN, AFTER = 3.0, 5.0, 3.0
# Every request answered within this, outage or not: a claim that cannot reach the database
# fails at once (connection refused) or after the pool's pre-ping; nothing waits long.
ANSWER_BOUND = 5.0

# Its own cluster, not the session's `postgres` fixture: mark it by hand for `-m "not postgres"`.
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    if pg_binaries() is None:
        pytest.skip("PostgreSQL server binaries not installed (bin/test installs them as root)")
    server = ThrowawayPostgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(settings: Settings, pg: ThrowawayPostgres, tmp_path: Path) -> Iterator[Stack]:
    on_pg = settings.replace(
        database_url=pg.create_database("outage"),
        # Backoff that outlasts the outage several times over, without the production minute.
        consumer_retry_base=0.2,
        consumer_retry_max=2.0,
        consumer_max_attempts=30,
    )
    s = Stack(on_pg, tmp_path, sandbox_delay=0.3, consumers=("emission",)).start()
    yield s
    s.stop()


async def stream(stack: Stack, pg: ThrowawayPostgres) -> tuple[Stream, tuple[float, ...]]:
    async def script(now: Callable[[], float]) -> tuple[float, ...]:
        await asyncio.sleep(BEFORE)
        await asyncio.to_thread(pg.halt)
        down_at = now()
        await asyncio.sleep(DOWN)
        restart_at = now()
        await asyncio.to_thread(pg.resume)
        up_at = now()
        await asyncio.sleep(AFTER)
        return down_at, restart_at, up_at

    return await open_loop(stack, INTERVAL, "db", script, timeout=4 * ANSWER_BOUND)


def test_database_outage_loses_no_accepted_command_and_dead_letters_nothing(
    stack: Stack, pg: ThrowawayPostgres
) -> None:
    started = time.monotonic()
    run, (down_at, restart_at, up_at) = asyncio.run(stream(stack, pg))
    answers = run.answers
    statuses = Counter(a.status for a in answers)
    context = f"statuses {dict(statuses)}; down {down_at:.1f}-{up_at:.1f}s"

    # Answered, in time, 202 or 503 in the Focus dialect: never a 500, never a hang.
    assert set(statuses) <= {202, 503}, (
        context,
        [(a.ref, a.status, a.body) for a in answers if a.status not in (202, 503)][:5],
    )
    slowest = max(a.latency for a in answers)
    assert slowest < ANSWER_BOUND, f"{context}: slowest answer {slowest:.1f}s"
    refused = [a for a in answers if a.status == 503]
    assert refused, f"{context}: the outage never showed"
    for a in refused:
        assert a.body["codigo"] == "servico_indisponivel" and a.retry_after, a
        # Refused while the database was away (plus the moments it took to notice either way).
        assert down_at - 1.0 <= a.sent <= up_at + 2.0, (context, a)
    assert statuses[202] > 0

    # Not ready while away (the probe runs every 0.2 s), ready again after.
    away = [status for at, _, status in run.ready if down_at + 0.5 < at < restart_at]
    assert away and all(s != 200 for s in away), (context, run.ready)
    assert run.ready[-1][2] == 200, (context, run.ready[-5:])

    # Every 202 ends authorized; the reconciler completes the few whose callback gave up.
    accepted = [a.ref for a in answers if a.status == 202]
    states = settle(stack, accepted, stall=10.0, timeout=90.0)
    reconciled = 0
    if any(s == "processando_autorizacao" for s in states.values()):
        reconciled = sum(s == "processando_autorizacao" for s in states.values())
        stack.run("reconcile", "--older-than", "0", "--limit", "1000")
        states = settle(stack, accepted, stall=10.0, timeout=60.0)
    assert Counter(states.values()) == {"autorizado": len(accepted)}, (
        context,
        Counter(states.values()),
    )
    # ... each once at the provider.
    posts = stack.focus_stats()["posts"]
    emitted_twice = [ref for ref, n in posts.items() if n > 1]
    # A 503'd ref was never claimed: it is unknown to notaflow and the provider alike.
    with stack.client() as c:
        for a in refused[:20]:
            assert c.get(f"/v2/nfse/{a.ref}").status_code == 404, a

    # The consumer retried through the outage: nothing dead-lettered, nobody restarted.
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    dead = read_topic(stack.settings.kafka_bootstrap, topics.dead_letter)
    assert dead == [], f"{context}: {len(dead)} dead-lettered"
    for proc in stack.procs:
        assert proc.process.poll() is None, f"{proc.name} exited\n{stack.logs()}"
    consumer_log = next(p for p in stack.procs if p.name == "consumer-emission").output()
    retries = consumer_log.count(": retry ")
    print(
        f"\n[database outage] sent={len(answers)} {dict(statuses)} "
        f"down={down_at:.1f}s..{up_at:.1f}s slowest={slowest:.2f}s "
        f"authorized={len(accepted)} reconciled={reconciled} consumer_retries={retries} "
        f"dead_lettered=0 provider_posts={sum(posts.values())} "
        f"refs_posted_twice={len(emitted_twice)} total={time.monotonic() - started:.1f}s"
    )
