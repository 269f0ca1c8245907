"""Proof 3 of the reliability promises: the provider goes down (HTTP 500s, then requests that
hang past the client's timeout) and comes back. Every note ends authorized exactly once, the
number of attempts and the delays between them are what the retry policy says, and a note that
keeps failing is dead-lettered after exactly the policy's attempts, other notes unaffected."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow.settings import Settings
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import wait_for

NOTES = 30
BASE, MAXIMUM, ATTEMPTS = 0.25, 1.0, 20  # the retry policy under test
FOCUS_TIMEOUT = 1.0
RETRY_LINE = re.compile(r"emission: retry (\d+) in ([\d.]+)s")


def cap(failures: int) -> float:
    """The longest delay the policy allows after `failures` failed attempts (full jitter:
    uniform between 0 and this)."""
    return min(MAXIMUM, BASE * 2 ** (failures - 1))


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    policy = settings.replace(
        consumer_retry_base=BASE,
        consumer_retry_max=MAXIMUM,
        consumer_max_attempts=ATTEMPTS,
        focus_timeout=FOCUS_TIMEOUT,
        log_format="json",  # the consumer's retry decisions, with the note's ref, for the checks
    )
    s = Stack(policy, tmp_path, sandbox_delay=0.1).start()
    yield s
    s.stop()


def outage(stack: Stack, mode: str, seconds: float) -> None:
    body = {"mode": mode, "seconds": seconds, "hang": 5}
    httpx.post(f"{stack.sandbox}/_sandbox/outage", json=body).raise_for_status()


def test_provider_outage_then_recovery(stack: Stack) -> None:
    doc = with_valid_cnpjs(JSON_EXAMPLE)
    doomed = with_valid_cnpjs(JSON_EXAMPLE)
    doomed["servico"]["discriminacao"] = "Serviço [sandbox:http500=1000]"
    with stack.client() as c:  # the consumer is up and has its partitions
        assert c.post("/v2/nfse", params={"ref": "warmup"}, json=doc).status_code == 202
    stack.wait_status("warmup", {"autorizado"}, timeout=30)
    outage(stack, "http500", 2.0)
    with stack.client() as c:
        for i in range(NOTES):
            assert c.post("/v2/nfse", params={"ref": f"out{i}"}, json=doc).status_code == 202
        assert c.post("/v2/nfse", params={"ref": "doomed"}, json=doomed).status_code == 202
    # Half-way through, the 500s turn into requests that hang past the client's timeout.
    time.sleep(1.5)
    outage(stack, "timeout", 2.0)

    for i in range(NOTES):
        stack.wait_status(f"out{i}", {"autorizado"}, timeout=60)

    def dead_letters() -> list[dict[str, Any]]:
        out = stack.run("dlq", "list")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    [letter] = wait_for(dead_letters, 60, 0.5)
    with stack.client() as c:
        assert c.get("/v2/nfse/doomed").json()["status"] == "processando_autorizacao"

    stats = stack.focus_stats()
    assert len(stats["authorizations"]) == NOTES + 1
    assert set(stats["authorizations"].values()) == {1}, "each note authorized exactly once"

    timeline: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Logged as they finish: a hanging request lands after later ones. Order by arrival.
    requests = httpx.get(f"{stack.sandbox}/_sandbox/requests").json()
    for request in sorted(requests, key=lambda r: r["at"]):
        timeline[request["ref"]].append(request)
    [doomed_ref] = stats["http500"]  # the only ref whose 500s came from its own marker
    del timeline[next(iter(timeline))]  # the warm-up note
    assert len(timeline) == NOTES + 1
    for ref, calls in timeline.items():
        statuses = [call["status"] for call in calls]
        assert len(calls) <= ATTEMPTS, (ref, statuses)
        if ref == doomed_ref:
            continue
        # Accepted once. A 202 whose answer reached the client after its timeout is retried,
        # and the retry finds the note already there (422) or the outage (500/504).
        assert statuses.count(202) == 1, (ref, statuses)
        assert set(statuses) <= {202, 422, 500, 504}, (ref, statuses)
    assert all(len(calls) > 1 for calls in timeline.values()), "the outage hit every note"
    assert any(call["status"] == 504 for calls in timeline.values() for call in calls)

    # The policy, as the consumer applied it: the n-th retry of a note waits a delay drawn
    # from [0, min(max, base * 2^(n-1))] (full jitter), one retry per failed attempt.
    decisions: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in (stack.log_dir / "consumer-emission.log").read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        found = RETRY_LINE.match(entry["message"])
        if found and entry.get("ref") not in (None, "warmup"):
            decisions[entry["ref"]].append((int(found[1]), float(found[2])))
    assert set(decisions) == {f"out{i}" for i in range(NOTES)} | {"doomed"}
    delays: list[tuple[float, float]] = []
    for ref, made in decisions.items():
        assert [n for n, _ in made] == list(range(1, len(made) + 1)), (ref, made)
        for n, delay in made:
            assert 0 <= delay <= cap(n) + 0.01, (ref, n, delay)  # logged to 2 decimals
            delays.append((delay, cap(n)))
    assert len(decisions["doomed"]) == ATTEMPTS - 1
    failed = sum(1 for calls in timeline.values() for c in calls if c["status"] != 202)
    retries = sum(len(made) for made in decisions.values())
    # Every failed POST was followed by one retry (timeouts that did reach the sandbox count
    # once there and once here), except the doomed note's last, which went to dead letters.
    assert retries >= failed - 1, (retries, failed)
    # Full jitter: delays spread over [0, cap], not all at one end.
    short = sum(1 for delay, c in delays if delay < c / 2) / len(delays)
    assert 0.25 < short < 0.75, short
    # And the consumer really waited them: at the sandbox, consecutive POSTs of the doomed
    # note are at least the chosen delay apart.
    doomed_calls = timeline[doomed_ref]
    for (n, delay), (before, after) in zip(
        decisions["doomed"], itertools.pairwise(doomed_calls), strict=True
    ):
        assert after["at"] - before["at"] >= delay - 0.02, (n, delay)

    # The note that never succeeds: exactly the policy's attempts, then the dead-letter topic.
    doomed_statuses = [c["status"] for c in timeline[doomed_ref]]
    assert len(doomed_statuses) == ATTEMPTS and set(doomed_statuses) <= {500, 504}
    assert letter["attempts"] == str(ATTEMPTS) or letter["attempts"] == ATTEMPTS, letter
    assert "HTTP 500" in letter["error"]
    print(
        f"\noutage: {NOTES} notes + 1 doomed, {sum(len(c) for c in timeline.values())} POSTs "
        f"({failed} failed), {retries} retries, {short:.0%} of delays under half their cap, "
        f"doomed note dead-lettered after {len(timeline[doomed_ref])} attempts"
    )
