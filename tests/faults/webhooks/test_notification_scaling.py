"""Per-note order and exactly-once deliveries while the notification consumer scales, with the
production processes: the ingress, the Focus sandbox, `notaflow consume emission` and
`cancellation`, and several `notaflow consume notification` members in one group, over topics
of 6 partitions; a real SMTP server (the project's aiosmtpd sink) and a real hook receiver.

Notes arrive in an open loop, a fifth of them cancelled while in flight, while the notification
members go 1 -> 3 -> 2 -> 1 (the joins move partitions away from members with deliveries under
way; the leaves are SIGTERMs, which drain). Each note's hook and e-mail go out side by side
and its lifecycle events are handled in order, skipping `processando_autorizacao` by its
`ce_status` header.

The proof: every note's `autorizado` hook and e-mail delivered exactly once, the cancelled
ones' `cancelado` hook and e-mail exactly once and after the `autorizado` ones; nothing
dead-lettered; the SIGTERMed members exited 0. A SIGKILLed member is
`test_notification_kill.py`'s."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from notaflow import topics as t
from notaflow.settings import Settings
from testkit.kafka import read_topic
from testkit.stack import Stack
from testkit.waiting import sleep_until, wait_for
from tests.faults.runtime.test_rebalance import _all_final, send_load
from tests.faults.webhooks.world import World, notification_world

SEED = int(os.environ.get("NOTAFLOW_FAULT_SEED", "6"))
RATE, DURATION = 10.0, 16.0  # notes per second, seconds of notes


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[World]:
    with notification_world(
        settings,
        tmp_path,
        ("emission", "cancellation", "notification"),
        kafka_partitions=6,
        kafka_session_timeout_ms=4000,
        cancel_wait=5.0,
        consumer_retry_base=0.5,
        consumer_retry_max=1.0,
        consumer_max_attempts=60,
        hooks_retry_schedule="0.3,0.6,1",
    ) as world:
        yield world


def scale(stack: Stack, rng: random.Random, started: float, log: list[str]) -> None:
    """1 -> 3 -> 2 -> 1 notification members while the notes flow. Runs in a thread."""

    def at(second: float) -> None:
        sleep_until(started, second)

    at(3 + rng.uniform(0, 2))
    for n in (2, 3):
        stack.spawn(["consume", "notification"], f"consumer-notification-{n}")
    log.append(f"{time.monotonic() - started:.1f}s 3 members")
    for second in (9, 14):
        at(second + rng.uniform(0, 2))
        victim = rng.choice([p for p in stack.members("notification") if p.process.poll() is None])
        victim.process.send_signal(signal.SIGTERM)
        log.append(f"{time.monotonic() - started:.1f}s SIGTERM {victim.name}")
        victim.process.wait(30)


def test_scaling_notification_delivers_each_note_once_and_in_order(world: World) -> None:
    stack = world.stack
    run = uuid.uuid4().hex[:6]
    context = f"seed {SEED}"
    started = time.monotonic()
    changes: list[str] = []
    scaling = threading.Thread(
        target=scale, args=(stack, random.Random(SEED + 1), started, changes)
    )
    scaling.start()
    try:
        refs, cancels = asyncio.run(
            send_load(
                stack, random.Random(SEED), rate=RATE, duration=DURATION, prefix=f"n{run}",
                tomador_email=lambda ref: f"{ref}@cliente.example",
            )
        )  # fmt: skip
    finally:
        scaling.join()
    cancelled = set(cancels)
    assert set(cancels.values()) <= {200, 202}, f"{context}: cancel answers {cancels}"
    try:
        wait_for(lambda: _all_final(stack, refs, cancelled), 90, 0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{context}: not settled; {changes}\n{stack.logs()}") from exc

    def wanted(ref: str) -> list[str]:
        return ["autorizado", "cancelado"] if ref in cancelled else ["autorizado"]

    # Hooks and e-mails, each note's in the order they arrived.
    def hooks() -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for seen in list(world.receiver.seen):
            body = json.loads(seen.body)
            out[body["ref"]].append(body["status"])
        return out

    def mails() -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for mail in world.sink.received():
            (address,) = mail.rcpt_tos
            subject = str(mail.message["Subject"])
            out[address.split("@")[0]].append(
                "cancelado" if "cancelada" in subject else "autorizado"
            )
        return out

    def delivered() -> bool:
        h, m = hooks(), mails()
        return all(len(h[r]) >= len(wanted(r)) and len(m[r]) >= len(wanted(r)) for r in refs)

    try:
        wait_for(delivered, 60, 0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{context}: not delivered; {changes}\n{stack.logs()}") from exc
    time.sleep(1.0)  # any second delivery still on its way
    by_hook, by_mail = hooks(), mails()
    wrong_hooks = {r: by_hook[r] for r in refs if by_hook[r] != wanted(r)}
    wrong_mails = {r: by_mail[r] for r in refs if by_mail[r] != wanted(r)}
    assert not wrong_hooks, f"{context}: hooks {list(wrong_hooks.items())[:5]}; {changes}"
    assert not wrong_mails, f"{context}: e-mails {list(wrong_mails.items())[:5]}; {changes}"
    dead = read_topic(
        stack.settings.kafka_bootstrap, t.Topics(stack.settings.kafka_topic_prefix).dead_letter
    )
    assert not dead, f"{context}: {len(dead)} record(s) dead-lettered"
    left = [p for p in stack.members("notification") if p.process.poll() is not None]
    assert [p.process.returncode for p in left] == [0, 0], f"{context}: {changes}"
    assert len(cancelled) >= len(refs) // 6, f"{context}: {len(cancelled)} cancelled"
    print(
        f"\n[notification scaling] seed={SEED} notes={len(refs)} cancelled={len(cancelled)} "
        f"hooks={sum(map(len, by_hook.values()))} e-mails={sum(map(len, by_mail.values()))} "
        f"changes={changes}"
    )
