"""Per-document order while the emission consumer scales (issue 13), with the production
processes: the ingress, the Focus sandbox answering slowly, `notaflow consume cancellation`
and several `notaflow consume emission` members in one group, over topics of 6 partitions.

Commands arrive in an open loop while the emission members go 1 -> 4 -> 6 -> 2 (the last four
changes are SIGTERM, SIGKILL, SIGTERM, SIGKILL); a cancel follows every fifth note while its
emission is still in flight. With aiokafka's default assignor, 4 members over 6 partitions put
a note's command and its Focus callback in two processes, and dozens of notes per run went
`processando_autorizacao` -> `autorizado` -> `processando_autorizacao` on the lifecycle topic.

The proof: every note authorized exactly once at the provider, the cancelled ones cancelled
once; on the lifecycle topic every note's statuses in order (processando, autorizado,
cancelado) with no regression; nothing dead-lettered; every emission member got partition p of
all its topics together; the SIGTERMed members exited 0. The moments come from a seeded
generator (NOTAFLOW_FAULT_SEED, in every failure message); run with -s to see the figures."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow import topics as t
from notaflow.settings import Settings
from testkit.kafka import read_topic
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import sleep_until, wait_for
from tests.faults.runtime.test_crash import fetch_notes

SEED = int(os.environ.get("NOTAFLOW_FAULT_SEED", "6"))
PARTITIONS = 6
RATE = 10.0  # commands per second, open loop
DURATION = 30.0  # seconds of commands
CANCEL_EVERY = 5
RANK = {"processando_autorizacao": 0, "autorizado": 1, "cancelado": 2}


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    scaled = settings.replace(
        kafka_partitions=PARTITIONS,
        # A SIGKILLed member keeps its partitions this long (no progress on them meanwhile).
        kafka_session_timeout_ms=4000,
        cancel_wait=5.0,
        # A cancel waits (retrying) while its note is being authorized, which the rebalances
        # stall for seconds at a time: as in production, it must outwait them.
        consumer_retry_base=0.5,
        consumer_retry_max=1.0,
        consumer_max_attempts=60,
    )
    s = Stack(scaled, tmp_path, sandbox_delay=0.3, consumers=("emission", "cancellation"))
    s.start()
    yield s
    s.stop()


def scale(stack: Stack, rng: random.Random, started: float, log: list[str]) -> None:
    """1 -> 4 -> 6 -> 2 emission members while the commands flow. Runs in a thread."""

    def at(second: float) -> None:
        sleep_until(started, second)

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - started:.1f}s {what}")

    spawned = 1
    at(4 + rng.uniform(0, 2))
    for _ in range(3):
        spawned += 1
        stack.spawn(["consume", "emission"], f"consumer-emission-{spawned}")
    note("4 members")
    at(12 + rng.uniform(0, 2))
    for _ in range(2):
        spawned += 1
        stack.spawn(["consume", "emission"], f"consumer-emission-{spawned}")
    note("6 members")
    at(20 + rng.uniform(0, 2))
    victims = rng.sample(stack.members("emission"), 4)
    for n, (victim, sig) in enumerate(
        zip(victims, [signal.SIGTERM, signal.SIGKILL] * 2, strict=True)
    ):
        victim.process.send_signal(sig)
        note(f"{sig.name} {victim.name}")
        if n % 2 == 1:
            at(25 + rng.uniform(0, 2))
        else:
            time.sleep(rng.uniform(0.2, 1.0))
    for victim in victims:
        victim.process.wait(30)  # the SIGTERMed ones drain first
    note(f"{len([p for p in stack.members('emission') if p.process.poll() is None])} members")


async def send_load(
    stack: Stack,
    rng: random.Random,
    *,
    rate: float = RATE,
    duration: float = DURATION,
    prefix: str = "scale",
    tomador_email: Callable[[str], str] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """POST /v2/nfse at `rate` for `duration` (each must be 202); every CANCEL_EVERY-th note
    is cancelled 0.2-1.5 s later, while its emission is in flight. `tomador_email`: each
    note's tomador address, by ref (else the example's). Returns the refs and the cancels'
    HTTP answers."""
    example = with_valid_cnpjs(JSON_EXAMPLE)
    refs: list[str] = []
    cancels: dict[str, int] = {}
    refused: list[tuple[str, int, str]] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=stack.base, auth=(stack.token, ""), limits=limits, timeout=30
    ) as client:

        async def one(n: int) -> None:
            ref = f"{prefix}{n:04d}"
            document = example
            if tomador_email is not None:
                document = copy.deepcopy(example)
                document["tomador"]["email"] = tomador_email(ref)
            r = await client.post("/v2/nfse", params={"ref": ref}, json=document)
            if r.status_code != 202:
                refused.append((ref, r.status_code, r.text))
                return
            refs.append(ref)
            if n % CANCEL_EVERY == 0:
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                r = await client.request(
                    "DELETE", f"/v2/nfse/{ref}", json={"justificativa": "Cancelada no teste"}
                )
                cancels[ref] = r.status_code

        t0 = time.monotonic()
        tasks = []
        for n in range(int(rate * duration)):
            tasks.append(asyncio.create_task(one(n)))
            await asyncio.sleep(max(0.0, t0 + (n + 1) / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    assert not refused, f"commands not accepted: {refused[:5]}"
    return refs, cancels


def lifecycle_by_ref(stack: Stack) -> dict[str, list[tuple[str, str]]]:
    """Each note's (status, ce_id) in the order of the lifecycle topic (one note's events are
    in one partition, read in offset order)."""
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    records = read_topic(stack.settings.kafka_bootstrap, topics.lifecycle)
    records.sort(key=lambda r: (r.partition, r.offset))
    out: dict[str, list[tuple[str, str]]] = {}
    for record in records:
        headers = {k: (v or b"").decode() for k, v in record.headers or ()}
        data = json.loads(record.value)
        out.setdefault(data["ref"], []).append((data["status"], headers["ce_id"]))
    return out


def test_scaling_1_4_6_2_with_sigterm_and_sigkill_keeps_every_note_in_order(
    stack: Stack,
) -> None:
    context = f"seed {SEED}"
    rng = random.Random(SEED)
    slow = {"mode": "slow", "hang": 0.8, "seconds": 600}
    httpx.post(f"{stack.sandbox}/_sandbox/outage", json=slow).raise_for_status()
    started = time.monotonic()
    changes: list[str] = []
    scaling = threading.Thread(
        target=scale, args=(stack, random.Random(SEED + 1), started, changes)
    )
    scaling.start()
    try:
        refs, cancels = asyncio.run(send_load(stack, rng))
    finally:
        scaling.join()
    sent_in = time.monotonic() - started
    cancelled = set(cancels)
    assert set(cancels.values()) <= {200, 202}, (
        f"{context}: cancel answers {Counter(cancels.values())}"
    )

    try:
        notes = wait_for(lambda: _all_final(stack, refs, cancelled), 90, 0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{context}: not settled; changes {changes}\n{stack.logs()}") from exc
    settled_in = time.monotonic() - started

    # Every note: authorized once at the provider; the cancelled ones cancelled once.
    stats = stack.focus_stats()
    emissions, authorizations = Counter(stats["emissions"]), Counter(stats["authorizations"])
    assert len(authorizations) == len(refs), f"{context}: {len(authorizations)} authorized"
    assert set(authorizations.values()) == {1}, f"{context}: {authorizations.most_common(3)}"
    twice = {ref: c for ref, c in emissions.items() if c > 1}
    assert not twice, f"{context}: provider refs emitted more than once: {twice}"
    assert sum(emissions.values()) == len(refs), context
    cancellations = Counter(stats["cancellations"])
    assert len(cancellations) == len(cancelled) and set(cancellations.values()) == {1}, context
    numbers = {(body["cnpj_prestador"], body["numero"]) for body in notes.values()}
    assert len(numbers) == len(refs), f"{context}: notes share numbers"

    # The lifecycle topic: every note's statuses in order, never backwards.
    lifecycle = lifecycle_by_ref(stack)
    assert set(lifecycle) == set(refs), f"{context}: lifecycle for {len(lifecycle)} notes"
    regressions: dict[str, list[str]] = {}
    duplicates = 0
    for ref, events in lifecycle.items():
        statuses = [status for status, _ in events]
        ranks = [RANK[status] for status in statuses]
        if any(b < a for a, b in itertools.pairwise(ranks)):
            regressions[ref] = statuses
        final = "cancelado" if ref in cancelled else "autorizado"
        wanted = ["processando_autorizacao", "autorizado"] + (
            ["cancelado"] if final == "cancelado" else []
        )
        distinct = list(dict.fromkeys(statuses))
        assert distinct == wanted, f"{context}: {ref} went {statuses}, wanted {wanted}"
        duplicates += len(events) - len({ce_id for _, ce_id in events})
    assert not regressions, (
        f"{context}: {len(regressions)} notes went backwards, e.g. "
        f"{list(regressions.items())[:3]}; changes {changes}"
    )
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    dead = read_topic(stack.settings.kafka_bootstrap, topics.dead_letter)
    assert not dead, f"{context}: {len(dead)} record(s) dead-lettered"

    # The members: co-located assignments only; the SIGTERMed ones drained and exited 0.
    members = stack.members("emission")
    logs = {p.name: p.output() for p in members}
    split = [name for name, text in logs.items() if "not assigned for all" in text]
    assert not split, f"{context}: split assignments in {split}"
    terminated = [p for p in members if p.process.returncode == 0]
    killed = [p for p in members if p.process.returncode == -signal.SIGKILL]
    assert (len(terminated), len(killed)) == (2, 2), (
        f"{context}: exit codes {[p.process.returncode for p in members]}"
    )
    releases = [
        (int(m.group(2)), int(m.group(3)), float(m.group(1)))
        for text in logs.values()
        for m in re.finditer(
            r"released \d+ partition\(s\) after ([\d.]+)s: (\d+) record\(s\) were running, "
            r"(\d+) cancelled",
            text,
        )
    ]
    waited = [r for r in releases if r[0]]
    print(
        f"\n[rebalance] seed={SEED} notes={len(refs)} cancelled={len(cancelled)} "
        f"cancel_answers={dict(Counter(cancels.values()))} changes={changes} "
        f"sent_in={sent_in:.1f}s settled_in={settled_in:.1f}s "
        f"posts={sum(Counter(stats['posts']).values())} emissions={sum(emissions.values())} "
        f"lifecycle_records={sum(len(e) for e in lifecycle.values())} "
        f"duplicate_ids={duplicates} regressions=0 "
        f"releases={len(releases)} with_running={len(waited)} "
        f"records_waited={sum(r[0] for r in waited)} "
        f"cancelled_at_grace={sum(r[1] for r in waited)} "
        f"longest_release={max((r[2] for r in waited), default=0.0):.2f}s"
    )


def _all_final(stack: Stack, refs: list[str], cancelled: set[str]) -> dict[str, Any] | None:
    notes = fetch_notes(stack, refs)
    for ref, body in notes.items():
        if body.get("status") != ("cancelado" if ref in cancelled else "autorizado"):
            return None
    return notes
