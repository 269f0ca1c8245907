"""Floor benchmark: what one note's I/O costs with nothing of notaflow around it, on this
machine, so the pipeline benchmark's CPU per note can be read against the least this design
could spend.

    bin/bench floor [--ops 3000] [--rounds 3] [--concurrency 32] [--rate 0]

One note through the pipeline (`bench/pipeline.py`) is, at the least, this much I/O done by
notaflow's processes (the peers, the broker and the stand-in world, are not counted there and
are not counted here):

    2  HTTP requests served       the client's POST /v2/nfse, Focus's callback (ingress)
    3  HTTP exchanges made        the Focus POST, the XML download (emission), the hook POST
                                  (notification)
    4  Kafka records produced     the command and the callback (ingress), two lifecycle events
                                  (emission), acks=all
    6  Kafka records read         the emission group reads the command and the callback, the
                                  cancellation group the command, the notification group the
                                  command and both lifecycle events
    8  SQLite rows written        the claim, the hand-over, `autorizado`, the XML, two delivery
                                  rows created and two recorded
    4  SQLite rows read           the note by provider ref and by id (emission), the note and
                                  the matching hooks (notification)
    1  SMTP transaction           the tomador's e-mail on a kept connection

Each is measured here alone, OPS times at CONCURRENCY in flight (SMTP: 4 connections, as the
mailer keeps), with the libraries notaflow uses and their defaults, and nothing else:
- served: a bare ASGI endpoint that parses the note's JSON and answers 202, under uvicorn's
  defaults without the access log (`bench/bare_app.py asgi`: no Starlette, which the ingress's
  two hot routes skip too), its own process, loaded from here over keep-alive connections; its
  CPU from /proc;
- exchanges: a bare keep-alive HTTP/1.1 client (the pipeline bench's load generator) against
  the stand-in (`bench/focus_stub.py`, no latency), a third each of the Focus POST with the
  note's JSON, the XML GET and the hook POST;
- produced: aiokafka's producer with the bus's settings (acks=all, linger 1 ms), a
  CloudEvents-sized record (the note's JSON, six headers) to the embedded broker;
- read: an aiokafka consumer in a new group reading those records back (auto commit): a
  backlog, so larger fetches than the pipeline's trickle, which makes it a lower bound;
- SQLite: WAL, synchronous=NORMAL, ten rows a transaction, inline on the loop, as the group
  batches write; reads by primary key;
- SMTP: the NFS-e e-mail as notaflow renders it (flattened once, before), to an aiosmtpd
  server (the stand-in's, which offers PIPELINING as production servers do) on aiosmtplib's
  connection, the transaction pipelined as the mailer sends it (`smtp_pipelining`: two round
  trips; aiosmtplib's own `sendmail`, four, where the server does not offer it).
CPU is this process's (or the server's) user + system time over the OPS, warm connections;
best and median of ROUNDS. `--rate R` paces every step as R notes a second would (a step that
comes twice a note at 2R a second, SQLite's rows ten a transaction all the same; the records
read then come from a producer process at that rate): each operation then finds its process
asleep, as at a moderate production rate, and pays the wake-up the saturated run spreads over
many. The report also gives one event-loop wake-up's CPU (an `asyncio.sleep(0.001)`).
The floor is the sum of count x median. What it leaves out is the part no design removes
either (parsing Focus's JSON, validating the note, rendering the e-mail, the event loop's
timers): it is a floor, not an estimate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.consumer import _cpu_seconds
from bench.pipeline import Http, note_body
from notaflow.consumers.mail_templates import NfseLinks, render_nfse_email
from notaflow.consumers.providers import smtp_pipelining
from notaflow.consumers.providers.mail_wire import flatten
from notaflow.launch.broker import free_port
from testkit.broker import start_broker
from testkit.processes import ROOT
from testkit.waiting import wait_for, wait_http

# (name, what it stands for) of each kind of I/O, measured alone.
STEPS: list[tuple[str, str]] = [
    ("http served", "bare ASGI app, uvicorn's defaults without the access log"),
    ("http exchange", "bare keep-alive client: Focus POST, XML GET, hook POST"),
    ("kafka produce", "aiokafka, acks=all, linger 1 ms"),
    ("kafka read", "aiokafka consumer group (as fast as they go: from a backlog)"),
    ("sqlite write", "a row, ten a transaction, WAL"),
    ("sqlite read", "a row by primary key"),
    ("smtp send", "pipelined on a kept aiosmtplib connection, as the mailer sends"),
]
# How many of each one note costs each notaflow process (the module's docstring says which).
PER_NOTE: dict[str, dict[str, int]] = {
    "ingress": {"http served": 2, "kafka produce": 2, "sqlite write": 1},
    "emission": {
        "http exchange": 2,
        "kafka produce": 2,
        "kafka read": 2,
        "sqlite write": 3,
        "sqlite read": 2,
    },
    "notification": {
        "http exchange": 1,
        "kafka read": 3,
        "sqlite write": 4,
        "sqlite read": 2,
        "smtp send": 1,
    },
    "cancellation": {"kafka read": 1},
}
PARTITIONS = 12
SMTP_CONNECTIONS = 4  # the mailer's NOTAFLOW_SMTP_CONNECTIONS default
_C = TypeVar("_C")


def per_note(step: str) -> int:
    """How many times one note does `step`, all processes together."""
    return sum(steps.get(step, 0) for steps in PER_NOTE.values())


def _cpu() -> float:
    return time.process_time()


@dataclass(frozen=True)
class Load:
    """How a step's operations come: `ops` of them, at most `concurrency` at once, as fast as
    they go (`rate` 0) or started `rate` a second, evenly (each then wakes its process, as at a
    moderate production rate, instead of finding it busy)."""

    ops: int
    concurrency: int
    rate: float = 0.0


async def drive(load: Load, pool: Sequence[_C], one: Callable[[int, _C], Awaitable[None]]) -> None:
    """`one(i, connection)` for i in range(load.ops), each on a connection of `pool` no other
    operation holds meanwhile."""
    free: asyncio.Queue[_C] = asyncio.Queue()
    for connection in pool:
        free.put_nowait(connection)

    async def run(i: int) -> None:
        connection = await free.get()
        try:
            await one(i, connection)
        finally:
            free.put_nowait(connection)

    if not load.rate:
        next_op = iter(range(load.ops))

        async def worker() -> None:
            for i in next_op:
                await run(i)

        await asyncio.gather(*(worker() for _ in range(len(pool))))
        return
    loop = asyncio.get_running_loop()
    started, tasks = loop.time(), []
    for i in range(load.ops):
        if (wait := started + i / load.rate - loop.time()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(run(i)))
    await asyncio.gather(*tasks)


async def http_served(base: str, pid: int, load: Load) -> float:
    body = note_body("REFPLACEHOLDER")
    clients = [Http(base, "") for _ in range(load.concurrency)]
    await asyncio.gather(*(c.request("POST", "/v2/nfse?ref=w", body) for c in clients))  # warm

    async def one(i: int, http: Http) -> None:
        status, _ = await http.request("POST", f"/v2/nfse?ref=F{i}", body)
        assert status == 202, status

    before = _cpu_seconds(pid)
    await drive(load, clients, one)
    spent = _cpu_seconds(pid) - before
    for c in clients:
        c.close()
    return spent / load.ops


async def http_exchange(world: str, load: Load) -> float:
    body = note_body("REFPLACEHOLDER")
    hook = json.dumps({"ref": "F", "status": "autorizado", "numero": "233"}).encode()
    clients = [Http(world, "Basic Zm9jdXM6") for _ in range(load.concurrency)]
    await asyncio.gather(*(c.request("GET", "/_count") for c in clients))

    async def one(i: int, http: Http) -> None:
        kind = i % 3
        if kind == 0:
            status, _ = await http.request("POST", f"/v2/nfse?ref=F{i}A1", body)
        elif kind == 1:
            status, _ = await http.request("GET", f"/notas_fiscais_servico/F{i}.xml")
        else:
            status, _ = await http.request("POST", "/_hook/floor", hook)
        assert status in (200, 202), status

    before = _cpu()
    await drive(load, clients, one)
    spent = _cpu() - before
    for c in clients:
        c.close()
    return spent / load.ops


def _record() -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_source", b"notaflow/consumers/emission"),
        ("ce_type", b"br.notaflow.nfse.status"),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("ce_status", b"autorizado"),
    ]
    return note_body("F1"), headers


async def kafka_produce(bootstrap: str, topic: str, load: Load) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=1, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        value, headers = _record()
        await producer.send_and_wait(topic, value, key=b"warm", headers=headers)

        async def one(i: int, _: None) -> None:
            await producer.send_and_wait(topic, value, key=b"doc-%d" % i, headers=headers)

        before = _cpu()
        await drive(load, [None] * load.concurrency, one)
        return (_cpu() - before) / load.ops
    finally:
        await producer.stop()


async def kafka_read(bootstrap: str, topic: str, load: Load) -> float:
    """Records read by a new group: from the backlog the produce step left (as fast as they
    go), or as another process produces them at `load.rate`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"floor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if not load.rate else "latest",
    )
    await consumer.start()
    producer: asyncio.subprocess.Process | None = None
    try:
        if load.rate:
            while not consumer.assignment():  # joined: what comes from now on is read
                await consumer.getmany(timeout_ms=100)
            await consumer.seek_to_end()
            producer = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "produce", bootstrap, topic, str(load.ops + 1),
                str(load.rate),
            )  # fmt: skip
        first = await consumer.getone()  # fetching under way
        assert first.value
        got, before = 1, _cpu()
        while got < load.ops + 1:
            batches = await consumer.getmany(timeout_ms=5000)
            if not batches:
                raise RuntimeError(f"only {got} of {load.ops + 1} records read")
            got += sum(len(records) for records in batches.values())
        return (_cpu() - before) / (got - 1)
    finally:
        await consumer.stop()
        if producer is not None:
            await asyncio.wait_for(producer.wait(), 30)


async def produce_paced(bootstrap: str, topic: str, ops: int, rate: float) -> None:
    """`bench/floor.py produce ...`: the paced records `kafka_read` reads, from a process of
    their own so that their CPU is not the reader's."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        value, headers = _record()

        async def one(i: int, _: None) -> None:
            await producer.send_and_wait(topic, value, key=b"doc-%d" % i, headers=headers)

        await drive(Load(ops, 64, rate), [None] * 64, one)
    finally:
        await producer.stop()


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS documents (id INTEGER PRIMARY KEY, tenant TEXT, ref TEXT, "
        "status TEXT, payload TEXT, updated_at TEXT, UNIQUE (tenant, ref))"
    )
    return conn


def _pace(load: Load, started: float, i: int) -> None:
    if load.rate and (wait := started + i / load.rate - time.monotonic()) > 0:
        time.sleep(wait)


def sqlite_write(path: Path, load: Load, start: int) -> float:
    conn = _sqlite(path)
    payload = note_body("F1").decode()
    ops, before, started = load.ops, _cpu(), time.monotonic()
    for first in range(start, start + ops, 10):
        _pace(load, started, first - start)  # paced: ten rows a transaction all the same
        conn.execute("BEGIN IMMEDIATE")
        for i in range(first, min(first + 10, start + ops)):
            conn.execute(
                "INSERT INTO documents (id, tenant, ref, status, payload, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = "
                "excluded.status, updated_at = excluded.updated_at",
                (i, "bench", f"F{i}", "autorizado", payload, datetime.now(UTC).isoformat()),
            )
        conn.execute("COMMIT")
    spent = _cpu() - before
    conn.close()
    return spent / ops


def sqlite_read(path: Path, load: Load, rows: int) -> float:
    conn = _sqlite(path)
    ops, before, started = load.ops, _cpu(), time.monotonic()
    for i in range(ops):
        _pace(load, started, i)
        row = conn.execute(
            "SELECT id, tenant, ref, status, payload, updated_at FROM documents WHERE id = ?",
            (i % rows,),
        ).fetchone()
        assert row is not None
    spent = _cpu() - before
    conn.close()
    return spent / ops


def _email() -> bytes:
    message = render_nfse_email(
        "autorizada",
        {"numero": "233", "codigo_verificacao": "DU1M-M2Y", "cnpj_prestador": "51916585000125"},
        json.loads(note_body("F1")),
        NfseLinks("https://prefeitura.example/nota?n=233", "https://api.example/x.xml"),
        issuer_name="ACME LTDA",
        sender="ACME LTDA <nfse@notaflow.bench>",
        recipients=["tomador@cliente.example"],
        message_id_domain="notaflow.bench",
    )
    return flatten(message, eight_bit=True)


async def smtp_send(port: int, load: Load) -> float:
    message = _email()
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(SMTP_CONNECTIONS)]
    for client in clients:
        await client.connect()
        await client.ehlo()

    async def one(i: int, client: aiosmtplib.SMTP) -> None:
        to = [f"F{i}@cliente.example"]
        if client.supports_extension("pipelining"):  # as the mailer sends (smtp_pipelining)
            await smtp_pipelining.send(client, message, "nfse@notaflow.bench", to, [])
        else:
            await client.sendmail("nfse@notaflow.bench", to, message)

    await asyncio.gather(*(one(i, client) for i, client in enumerate(clients)))  # warm
    before = _cpu()
    await drive(load, clients, one)
    spent = _cpu() - before
    for client in clients:
        await client.quit()
    return spent / load.ops


async def wake_up() -> float:
    """CPU of one wake-up of an event loop with nothing to do but sleep 1 ms: what every
    answer, fetch and timer that finds a process asleep costs it before any work."""
    n, before = 300, _cpu()
    for _ in range(n):
        await asyncio.sleep(0.001)
    return (_cpu() - before) / n


def _listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the bare app exited with {proc.returncode}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


class Peers:
    """What notaflow talks to, each its own process (not counted but for the bare app, whose
    CPU is the served requests'): the embedded broker, the stand-in (Focus, the hook receiver,
    aiosmtpd) and the bare Starlette app."""

    def __init__(self, work: Path) -> None:
        self.broker = start_broker(work / "broker.log")
        self.world_port, self.smtp_port, self.app_port = free_port(), free_port(), free_port()
        self._log = open(work / "peers.log", "wb")  # noqa: SIM115
        self.stand_in = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "focus_stub.py"), str(self.world_port), "0",
             "--smtp-port", str(self.smtp_port)],
            stdout=self._log, stderr=self._log,
        )  # fmt: skip
        self.app = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(self.app_port), "asgi"],
            stdout=self._log, stderr=self._log,
        )  # fmt: skip
        self.world = f"http://127.0.0.1:{self.world_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        wait_http(f"{self.world}/_count", proc=self.stand_in)
        wait_for(lambda: _listening(self.app_port, self.app), 30, 0.1)

    def stop(self) -> None:
        for peer in (self.stand_in, self.app):
            peer.terminate()
        for peer in (self.stand_in, self.app):
            try:
                peer.wait(10)
            except subprocess.TimeoutExpired:
                peer.kill()
        self._log.close()
        self.broker.stop()


async def measure(args: argparse.Namespace, peers: Peers, db: Path) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name, _ in STEPS}
    results["wake-up"] = []
    bootstrap, topic = peers.broker.bootstrap, "floor-records"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()

    def load(step: str) -> Load:
        # Paced, each step comes as often as `rate` notes a second make it come.
        return Load(args.ops, args.concurrency, args.rate * per_note(step))

    for round_ in range(args.rounds):
        results["wake-up"].append(await wake_up())
        results["http served"].append(
            await http_served(peers.app_url, peers.app.pid, load("http served"))
        )
        results["http exchange"].append(await http_exchange(peers.world, load("http exchange")))
        results["kafka produce"].append(
            await kafka_produce(bootstrap, topic, load("kafka produce"))
        )
        results["kafka read"].append(await kafka_read(bootstrap, topic, load("kafka read")))
        results["sqlite write"].append(sqlite_write(db, load("sqlite write"), round_ * args.ops))
        results["sqlite read"].append(sqlite_read(db, load("sqlite read"), args.ops))
        results["smtp send"].append(await smtp_send(peers.smtp_port, load("smtp send")))
        _say(f"round {round_ + 1} of {args.rounds}")
    return results


def per_process(results: dict[str, list[float]]) -> dict[str, float]:
    """The floor per note of each notaflow process and of all of them (ms), from the medians."""
    median = {name: statistics.median(values) for name, values in results.items()}
    floors = {
        process: sum(count * median[name] for name, count in steps.items()) * 1000
        for process, steps in PER_NOTE.items()
    }
    floors["all notaflow"] = sum(floors.values())
    return floors


def report(results: dict[str, list[float]], args: argparse.Namespace) -> float:
    """Print the steps and the floor per process; answer the floor of a note (ms)."""
    pace = f"paced as {args.rate:g} notes a second" if args.rate else "as fast as they go"
    print(
        f"floor benchmark ({args.ops} operations a step and round, {pace}, at most "
        f"{args.concurrency} in flight, {args.rounds} rounds; CPU of the side notaflow plays)"
    )
    median = {name: statistics.median(values) * 1e6 for name, values in results.items()}
    print(f"  {'step':<14} {'us each: best / median':>24} {'per note':>9}")
    for name, what in STEPS:
        count = per_note(name)
        print(f"  {name:<14} {min(results[name]) * 1e6:>13.1f} / {median[name]:<8.1f} "
              f"{count:>9}   {what}")  # fmt: skip
    wake = statistics.median(results["wake-up"]) * 1e6
    print(f"  (one event-loop wake-up, asyncio.sleep(0.001): {wake:.1f} us of CPU)")
    print("floor per note, by process (ms of CPU; the pipeline benchmark's figures are beside it "
          "in the README):")  # fmt: skip
    floors = per_process(results)
    for process in PER_NOTE:
        print(f"  {process:<14} {floors[process]:.3f}")
    floor = floors["all notaflow"]
    print(f"  {'all notaflow':<14} {floor:.3f}   -> {1000 / floor:,.0f} notes per CPU-second "
          f"at best (target >= 2,000; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")  # fmt: skip
    return floor


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    """Start the peers, measure every step (`args`: ops, rounds, concurrency, rate), stop them."""
    work = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    peers = Peers(work)
    try:
        measuring = measure(args, peers, work / "floor.db")
        try:
            import uvloop  # the consumers' loop

            return uvloop.run(measuring)
        except ImportError:
            return asyncio.run(measuring)
    finally:
        peers.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if sys.argv[1:2] == ["produce"]:  # kafka_read's paced producer
        bootstrap, topic, ops, rate = sys.argv[2:6]
        asyncio.run(produce_paced(bootstrap, topic, int(ops), float(rate)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=3000, help="operations per step and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--rate", type=float, default=0.0, help="notes a second to pace the steps as (0: no pace)"
    )
    args = p.parse_args()
    report(run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
