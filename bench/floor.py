"""Floor benchmark: what one note's I/O costs with nothing of notaflow around it, on this
machine, so the pipeline benchmark's CPU per note can be read against the least this design
could spend.

    bin/bench floor [--ops 3000] [--rounds 3] [--concurrency 32]

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
- SMTP: aiosmtplib's `sendmail` of the NFS-e e-mail as notaflow renders it (flattened once,
  before), to an aiosmtpd server (the stand-in's).
CPU is this process's (or the server's) user + system time over the OPS, warm connections;
best and median of ROUNDS. The floor is the sum of count x median. What it leaves out is the
part no design removes either (parsing Focus's JSON, validating the note, rendering the
e-mail, the event loop's timers): it is a floor, not an estimate.
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.consumer import _cpu_seconds
from bench.pipeline import Http, note_body
from notaflow.consumers.mail_templates import NfseLinks, render_nfse_email
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
    ("kafka read", "aiokafka consumer group, from a backlog"),
    ("sqlite write", "a row, ten a transaction, WAL"),
    ("sqlite read", "a row by primary key"),
    ("smtp send", "aiosmtplib sendmail on a kept connection"),
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


def _cpu() -> float:
    return time.process_time()


async def _spread(ops: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """`one(i)` for i in range(ops), `concurrency` at once."""
    next_op = iter(range(ops))

    async def worker() -> None:
        for i in next_op:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def http_served(base: str, pid: int, ops: int, concurrency: int) -> float:
    body = note_body("REFPLACEHOLDER")
    clients = [Http(base, "") for _ in range(concurrency)]
    await asyncio.gather(*(c.request("POST", "/v2/nfse?ref=w", body) for c in clients))  # warm

    async def one(i: int) -> None:
        status, _ = await clients[i % concurrency].request("POST", f"/v2/nfse?ref=F{i}", body)
        assert status == 202, status

    # Each client is held by one worker at a time: worker k takes ops k, k+C, k+2C, ...
    before = _cpu_seconds(pid)
    await asyncio.gather(*(_serial(range(k, ops, concurrency), one) for k in range(concurrency)))
    spent = _cpu_seconds(pid) - before
    for c in clients:
        c.close()
    return spent / ops


async def _serial(indexes: range, one: Callable[[int], Awaitable[None]]) -> None:
    for i in indexes:
        await one(i)


async def http_exchange(world: str, ops: int, concurrency: int) -> float:
    body = note_body("REFPLACEHOLDER")
    hook = json.dumps({"ref": "F", "status": "autorizado", "numero": "233"}).encode()
    clients = [Http(world, "Basic Zm9jdXM6") for _ in range(concurrency)]
    await asyncio.gather(*(c.request("GET", "/_count") for c in clients))

    async def one(i: int) -> None:
        http = clients[i % concurrency]
        kind = i % 3
        if kind == 0:
            status, _ = await http.request("POST", f"/v2/nfse?ref=F{i}A1", body)
        elif kind == 1:
            status, _ = await http.request("GET", f"/notas_fiscais_servico/F{i}.xml")
        else:
            status, _ = await http.request("POST", "/_hook/floor", hook)
        assert status in (200, 202), status

    before = _cpu()
    await asyncio.gather(*(_serial(range(k, ops, concurrency), one) for k in range(concurrency)))
    spent = _cpu() - before
    for c in clients:
        c.close()
    return spent / ops


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


async def kafka_produce(bootstrap: str, topic: str, ops: int, concurrency: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=1, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        value, headers = _record()
        await producer.send_and_wait(topic, value, key=b"warm", headers=headers)

        async def one(i: int) -> None:
            await producer.send_and_wait(topic, value, key=b"doc-%d" % i, headers=headers)

        before = _cpu()
        await _spread(ops, concurrency, one)
        return (_cpu() - before) / ops
    finally:
        await producer.stop()


async def kafka_read(bootstrap: str, topic: str, ops: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"floor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        first = await consumer.getone()  # the group joined, fetching under way
        assert first.value
        got, before = 1, _cpu()
        while got < ops + 1:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                raise RuntimeError(f"only {got} of {ops + 1} records read back")
            got += sum(len(records) for records in batches.values())
        return (_cpu() - before) / (got - 1)
    finally:
        await consumer.stop()


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS documents (id INTEGER PRIMARY KEY, tenant TEXT, ref TEXT, "
        "status TEXT, payload TEXT, updated_at TEXT, UNIQUE (tenant, ref))"
    )
    return conn


def sqlite_write(path: Path, ops: int, start: int) -> float:
    conn = _sqlite(path)
    payload = note_body("F1").decode()
    before = _cpu()
    for first in range(start, start + ops, 10):
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


def sqlite_read(path: Path, ops: int, rows: int) -> float:
    conn = _sqlite(path)
    before = _cpu()
    for i in range(ops):
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


async def smtp_send(port: int, ops: int) -> float:
    message = _email()
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(SMTP_CONNECTIONS)]
    for client in clients:
        await client.connect()
        await client.ehlo()

    async def one(i: int) -> None:
        client = clients[i % SMTP_CONNECTIONS]
        await client.sendmail("nfse@notaflow.bench", [f"F{i}@cliente.example"], message)

    await asyncio.gather(*(one(i) for i in range(SMTP_CONNECTIONS)))  # warm
    before = _cpu()
    await asyncio.gather(
        *(_serial(range(k, ops, SMTP_CONNECTIONS), one) for k in range(SMTP_CONNECTIONS))
    )
    spent = _cpu() - before
    for client in clients:
        await client.quit()
    return spent / ops


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
    bootstrap, topic = peers.broker.bootstrap, "floor-records"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    ops, c = args.ops, args.concurrency
    for round_ in range(args.rounds):
        results["http served"].append(await http_served(peers.app_url, peers.app.pid, ops, c))
        results["http exchange"].append(await http_exchange(peers.world, ops, c))
        results["kafka produce"].append(await kafka_produce(bootstrap, topic, ops, c))
        results["kafka read"].append(await kafka_read(bootstrap, topic, ops))
        results["sqlite write"].append(sqlite_write(db, ops, round_ * ops))
        results["sqlite read"].append(sqlite_read(db, ops, ops))
        results["smtp send"].append(await smtp_send(peers.smtp_port, ops))
        _say(f"round {round_ + 1} of {args.rounds}")
    return results


def report(results: dict[str, list[float]], args: argparse.Namespace) -> float:
    print(
        f"floor benchmark ({args.ops} operations a round, {args.concurrency} in flight, "
        f"{args.rounds} rounds; CPU of the side notaflow plays)"
    )
    median = {name: statistics.median(values) * 1e6 for name, values in results.items()}
    print(f"  {'step':<14} {'us each: best / median':>24} {'per note':>9}")
    for name, what in STEPS:
        count = sum(steps.get(name, 0) for steps in PER_NOTE.values())
        print(f"  {name:<14} {min(results[name]) * 1e6:>13.1f} / {median[name]:<8.1f} "
              f"{count:>9}   {what}")  # fmt: skip
    print("floor per note, by process (ms of CPU; the pipeline benchmark's figures are beside it "
          "in the README):")  # fmt: skip
    floor = 0.0
    for process, steps in PER_NOTE.items():
        spent = sum(count * median[name] for name, count in steps.items())
        floor += spent
        print(f"  {process:<14} {spent / 1000:.3f}")
    print(f"  {'all notaflow':<14} {floor / 1000:.3f}   -> {1e6 / floor:,.0f} notes per CPU-second "
          f"at best (target >= 2,000; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")  # fmt: skip
    return floor


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=3000, help="operations per step and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    peers = Peers(work)
    try:
        run = measure(args, peers, work / "floor.db")
        try:
            import uvloop  # the consumers' loop

            results = uvloop.run(run)
        except ImportError:
            results = asyncio.run(run)
        report(results, args)
    finally:
        peers.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
