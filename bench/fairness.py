"""Fairness benchmark (issue 15): one tenant's burst against the others' trickle, each tenant
with its own Focus token, against a Focus stand-in that enforces credits per token.

    bin/bench fairness [--tenants 20] [--burst 3000] [--credits 50] [--latency 0.1]
                       [--idle-seconds 40] [--database sqlite|postgres] [--fifo]

What runs (all on loopback, each its own process): the embedded broker, the database after
`notaflow migrate`, `notaflow ingress`, `notaflow consume emission` (each tenant's Focus token,
`focus-<tenant>`, is its provider account, created in the database before the run and sealed
with a throwaway NOTAFLOW_ACCOUNT_KEYS: the resolver the production consumer uses), and
`bench/focus_stub.py` playing Focus: 202
after LATENCY (100 ms), the `autorizado` callback to the ingress 200 ms later, and credits per
token scaled from Focus's 100 a minute to 100 per 2-second window (CREDITS per second: 50).

1. Idle: the trickle tenants (all but one) each POST one note per second for IDLE seconds.
2. Burst: the burst tenant POSTs BURST notes at once (16 connections) while the trickle goes
   on, until the burst has drained (every burst note `autorizado`).

Reported from the same run: the burst's drain time (first POST to last `autorizado`) against
its credit bound (BURST credits / CREDITS per second: one credit per note, the POST; the
download of the XML its callback names goes without credentials and costs none), and the
trickle tenants' p50/p99 from POST to `autorizado` (the lifecycle event's Kafka timestamp) in
each phase. Checks: every note
`autorizado`, no note POSTed (accepted) twice at the stand-in and no second `autorizado` per
note, and no 429 beyond the first of a token's window. Targets: burst ≥ 0.9 of its bound,
trickle p99 ≤ 1.25× the idle phase's.

`--fifo` is the contrast: the consumer starts records in fetch order, one queue for everyone
(as before the per-tenant queues), credits still per token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline import Http, note_body
from notaflow.account_keys import new_key
from notaflow.accounts import Provider
from notaflow.launch.broker import free_port
from notaflow.settings import Settings
from notaflow.store import TenantStore, create_engine
from notaflow.store.accounts import AccountStore, secret_box
from notaflow.topics import Topics
from testkit.broker import start_broker
from testkit.postgres import ThrowawayPostgres
from testkit.processes import NOTAFLOW, ROOT
from testkit.waiting import wait_http

CNPJ = "51916585000125"  # the stand-in's XML names it: every tenant emits for it
WINDOW = 2.0  # Focus's minute, scaled
CREDITS_PER_NOTE = 1  # the POST (the callback's XML download carries no token)


def focus_token(tenant: str) -> str:
    return f"focus-{tenant}"


def run_fifo_consumer() -> None:
    """`--consumer-fifo`: the contrast. The emission consumer as `notaflow consume emission`
    runs it, but every record in one queue, started in fetch order (as before the per-tenant
    queues), so the burst holds the window while it waits for its credits."""
    import notaflow.consumers.runtime.runner as runner
    from notaflow.launch.cli import _run_fast
    from notaflow.launch.processes import run_consumer

    runner.tenant_of = lambda record: ""  # type: ignore[assignment]
    _run_fast(run_consumer(Settings.from_env(), "emission"))


class Lifecycle:
    """Reads the lifecycle topic: when each note was `autorizado` (the record's timestamp,
    set by the emission consumer when it published) and how many distinct events said so."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.authorized: dict[str, float] = {}
        self.ids: dict[str, set[str]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_wait_ms=25,
        )  # fmt: skip
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self._consumer:
            if json.loads(record.value).get("status") != "autorizado":
                continue
            key = record.key.decode()
            ce_id = dict(record.headers).get("ce_id", b"").decode()
            self.ids[key].add(ce_id)
            self.authorized.setdefault(key, record.timestamp / 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()


async def trickle(
    base: str, tokens: dict[str, str], seconds: float, prefix: str, posted: dict[str, float]
) -> None:
    """Each tenant POSTs one note per second (its own phase in the second)."""

    async def one(tenant: str) -> None:
        http = Http(base, tokens[tenant])
        await asyncio.sleep(random.random())
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            ref = f"{prefix}{n}"
            posted[f"{tenant}:nfse:{ref}"] = time.time()
            status, body = await http.request("POST", f"/v2/nfse?ref={ref}", note_body(ref))
            if status != 202:
                raise RuntimeError(f"{tenant} {ref}: {status} {body[:200]!r}")
            n += 1
            await asyncio.sleep(max(0.0, start + n - time.monotonic()))
        http.close()

    await asyncio.gather(*(one(tenant) for tenant in tokens))


async def burst(base: str, authorization: str, tenant: str, notes: int) -> float:
    """POST every note as fast as the ingress takes them; the time the first was sent."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(notes):
        queue.put_nowait(f"B{i}")
    first = time.time()

    async def worker() -> None:
        http = Http(base, authorization)
        while not queue.empty():
            ref = queue.get_nowait()
            status, body = await http.request("POST", f"/v2/nfse?ref={ref}", note_body(ref))
            if status != 202:
                raise RuntimeError(f"{tenant} {ref}: {status} {body[:200]!r}")
        http.close()

    await asyncio.gather(*(worker() for _ in range(16)))
    return first


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    """User + system CPU of each process so far (Linux /proc)."""
    out = {}
    for name, proc in procs.items():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def p50_p99(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan")

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return at(0.50), at(0.99)


async def wait_authorized(
    lifecycle: Lifecycle, keys: set[str], timeout: float, procs: dict[str, Any]
) -> None:
    deadline = time.monotonic() + timeout
    while not keys <= lifecycle.authorized.keys():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            missing = len(keys - lifecycle.authorized.keys())
            raise RuntimeError(f"{missing} note(s) not autorizado after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def measure(
    args: argparse.Namespace, settings: Settings, procs: dict[str, Any], world: str
) -> int:
    engine = create_engine(settings.database_url)
    tenants = [f"t{i:02d}" for i in range(args.tenants)]
    auth: dict[str, str] = {}
    store = TenantStore(engine)
    accounts = AccountStore(engine, secret_box(settings))
    for tenant in tenants:
        token = await store.create(tenant, tenant, [CNPJ], token=f"ingress-{tenant}")
        auth[tenant] = "Basic " + base64.b64encode(f"{token}:".encode()).decode()
        # Each company's own Focus token, as an operator would give it (`notaflow account
        # create ... focus`): the consumer resolves it per note.
        await accounts.create(
            tenant, CNPJ, Provider.FOCUS, {"environment": "homologacao"}, focus_token(tenant)
        )
    await engine.dispose()
    burster, trickles = tenants[0], {t: auth[t] for t in tenants[1:]}
    base = settings.public_url
    lifecycle = Lifecycle(settings.kafka_bootstrap, Topics(settings.kafka_topic_prefix).lifecycle)
    await lifecycle.start()
    try:
        # Warm-up, not measured: the consumer has joined its group and every tenant's token
        # has had its first answer (its credit window is known).
        warm: dict[str, float] = {}
        await trickle(base, auth, 1, "W", warm)
        await wait_authorized(lifecycle, set(warm), 120, procs)
        print(f"idle phase: {len(trickles)} tenants, one note per second each, "
              f"{args.idle_seconds:.0f} s", flush=True)  # fmt: skip
        idle_posted: dict[str, float] = {}
        cpu0, t0 = cpu_seconds(procs), time.monotonic()
        await trickle(base, trickles, args.idle_seconds, "I", idle_posted)
        cpu1, t1 = cpu_seconds(procs), time.monotonic()
        await wait_authorized(lifecycle, set(idle_posted), 60, procs)

        print(f"burst phase: {burster} sends {args.burst} notes at once; the trickle goes on",
              flush=True)  # fmt: skip
        burst_posted: dict[str, float] = {}
        burst_keys = {f"{burster}:nfse:B{i}" for i in range(args.burst)}
        stop = asyncio.Event()

        async def trickle_until_drained() -> None:
            rounds = 0
            while not stop.is_set():
                await trickle(base, trickles, 5, f"T{rounds}x", burst_posted)
                rounds += 1

        trickling = asyncio.create_task(trickle_until_drained())
        await asyncio.sleep(1.0)  # the trickle is flowing when the burst lands
        burst_start = await burst(base, auth[burster], burster, args.burst)
        accepted_in = time.time() - burst_start
        bound = args.burst * CREDITS_PER_NOTE / args.credits
        try:
            await wait_authorized(lifecycle, burst_keys, bound * 4 + 60, procs)
        finally:
            stop.set()
            await trickling
        await wait_authorized(lifecycle, set(burst_posted), 60, procs)
        drained = max(lifecycle.authorized[k] for k in burst_keys) - burst_start
        cpu2, t2 = cpu_seconds(procs), time.monotonic()
    finally:
        await lifecycle.stop()

    async with httpx.AsyncClient(base_url=world, timeout=30) as c:
        arrivals = (await c.get("/_stats")).json()
        windows: dict[str, dict[str, list[int]]] = (await c.get("/_rate")).json()
    accepted = Counter(ref for ref, _, status in arrivals if status == 202)
    posted_twice = sum(1 for n in accepted.values() if n > 1)
    authorized_twice = sum(1 for ids in lifecycle.ids.values() if len(ids) > 1)
    refused = sum(w[1] for per in windows.values() for w in per.values())
    beyond_first = sum(max(0, w[1] - 1) for per in windows.values() for w in per.values())
    burst_credits = sum(w[0] for w in windows.get(focus_token(burster), {}).values())

    def latencies(posted: dict[str, float]) -> list[float]:
        return [lifecycle.authorized[k] - t for k, t in posted.items()]

    # Where in the burst phase the trickle waited: 5-second slices from the burst's start.
    timeline = defaultdict(list)
    for key, at in burst_posted.items():
        timeline[int((at - burst_start) // 5)].append(lifecycle.authorized[key] - at)
    for phase, (a, b, seconds) in {
        "idle": (cpu0, cpu1, t1 - t0),
        "burst": (cpu1, cpu2, t2 - t1),
    }.items():
        print(f"CPU share of a core, {phase} phase: " + ", ".join(
            f"{name} {(b[name] - a[name]) / seconds:.0%}" for name in procs
        ))  # fmt: skip
    print("trickle during the burst, by 5 s slice from its start (notes, p50, max ms):")
    print("  " + "  ".join(
        f"{i * 5:+d}s:{len(v)},{p50_p99(v)[0] * 1000:.0f},{max(v) * 1000:.0f}"
        for i, v in sorted(timeline.items())
    ))  # fmt: skip
    idle = p50_p99(latencies(idle_posted))
    busy = p50_p99(latencies(burst_posted))
    efficiency = bound / drained
    ratio = busy[1] / idle[1]
    print()
    print(
        f"burst: {args.burst} notes accepted in {accepted_in:.1f} s, drained in "
        f"{drained:.1f} s; credit bound {bound:.1f} s ({args.credits:g} credits/s, "
        f"{burst_credits} credits spent): {efficiency:.2f} of the bound (target >= 0.9)"
    )
    print(
        f"trickle POST -> autorizado, idle:  p50 {idle[0] * 1000:.0f} ms  p99 "
        f"{idle[1] * 1000:.0f} ms  ({len(idle_posted)} notes)"
    )
    print(
        f"trickle POST -> autorizado, burst: p50 {busy[0] * 1000:.0f} ms  p99 "
        f"{busy[1] * 1000:.0f} ms  ({len(burst_posted)} notes): p99 {ratio:.2f}x idle "
        "(target <= 1.25)"
    )
    print(
        f"429 answered: {refused} ({beyond_first} beyond the first of a window; target 0); "
        f"notes POSTed twice: {posted_twice}; notes authorized twice: {authorized_twice}"
    )
    ok = efficiency >= 0.9 and ratio <= 1.25 and beyond_first == 0
    ok = ok and posted_twice == 0 and authorized_twice == 0
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


def main() -> int:
    if "--consumer-fifo" in sys.argv:
        run_fifo_consumer()
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--burst", type=int, default=3000)
    p.add_argument("--credits", type=float, default=50.0, help="per token per second")
    p.add_argument("--latency", type=float, default=0.1, help="Focus's answer to the POST (s)")
    p.add_argument("--idle-seconds", type=float, default=40.0)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument(
        "--fifo", action="store_true", help="contrast: records in fetch order, no tenant turns"
    )
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-fairness-"))
    broker = start_broker(tmp / "broker.log")
    pg = ThrowawayPostgres() if args.database == "postgres" else None
    db_url = pg.start() if pg else f"sqlite:///{tmp / 'bench.db'}"
    world_port, port = free_port(), free_port()
    world = f"http://127.0.0.1:{world_port}"
    secret = "bench-" + uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,
        database_url=db_url,
        port=port,
        public_url=base,
        focus_base_url=world,
        focus_token="bench-unused",  # every tenant has its own account
        account_keys=new_key(),
        focus_webhook_secret=secret,
        health_port=0,
        health_host="127.0.0.1",
        log_level="WARNING",
    )
    env = {**os.environ, **settings.env()}
    log_path = Path(tempfile.gettempdir()) / "bench-fairness.log"  # kept, to explain failures
    log = open(log_path, "wb")  # noqa: SIM115
    procs: dict[str, Any] = {}
    try:
        subprocess.run([*NOTAFLOW, "migrate"], env=env, cwd=ROOT, check=True, stdout=log)
        limit = round(args.credits * WINDOW)
        procs["world"] = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "focus_stub.py"), str(world_port),
             str(args.latency), "--callback", f"{base}/webhooks/focus/nfse", "--secret", secret,
             "--rate-limit", str(limit), "--rate-window", str(WINDOW)],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_http(f"{world}/_count", proc=procs["world"])
        consumer = (
            [sys.executable, str(Path(__file__).resolve()), "--consumer-fifo"]
            if args.fifo
            else [*NOTAFLOW, "consume", "emission"]
        )
        procs["emission"] = subprocess.Popen(consumer, env=env, cwd=ROOT, stdout=log, stderr=log)
        procs["ingress"] = subprocess.Popen(
            [*NOTAFLOW, "ingress"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        wait_http(f"{base}/readyz", 60, proc=procs["ingress"])
        return asyncio.run(measure(args, settings, procs, world))
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        if pg:
            pg.stop()
        print(f"(processes' output: {log_path})")


if __name__ == "__main__":
    sys.exit(main())
