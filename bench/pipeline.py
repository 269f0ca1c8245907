"""Pipeline benchmark: N NFS-e notes through every production process, from the client's POST
to the tomador's e-mail and the client's hook, with the CPU each notaflow process spends per
note.

    bin/bench pipeline [--notes 5000] [--database sqlite|postgres] [--rate 0]
                       [--connections 32] [--latency 0.1] [--callback-delay 0.2]
                       [--profile DIR] [--floor-ops 2000] [--floor-rounds 1]

What runs, each its own process on loopback, configured only by NOTAFLOW_* variables:
`notaflow ingress`, `notaflow consume emission`, `notaflow consume notification` and
`notaflow consume cancellation` (it reads every command too, as in production), the embedded
broker, the database after `notaflow migrate` and `notaflow tenant create`, and the rest of the
world in one stand-in process (`bench/focus_stub.py`, not counted): Focus (202 after LATENCY,
then CALLBACK-DELAY later the `autorizado` callback to the ingress's `/webhooks/focus/nfse`
with the registered secret, and the XML the emission consumer downloads), an SMTP server
(aiosmtpd) for the tomador's e-mail, and the client's hook receiver (created with
`POST /v2/hooks`, like a client would).

One note's path: POST /v2/nfse (claimed, published) -> emission consumer -> Focus POST ->
lifecycle `processando_autorizacao` -> Focus's callback -> ingress -> provider-events ->
emission consumer downloads the XML, stores it, moves the note to `autorizado` -> lifecycle ->
notification consumer: e-mail to the tomador over SMTP and the hook POST, each a delivery row.

The load generator is a bare keep-alive HTTP/1.1 client (CONNECTIONS at once; `--rate` paces
the POSTs, 0 sends as fast as the ingress answers). It is not a notaflow process, nor is the
stand-in: their CPU is not counted. CPU is read from /proc per process from the first measured
POST to the last note done; warm-up notes (start-up, group joins) are not counted.

Reported: notes fully done per second (hook delivered, e-mail accepted by SMTP, both lifecycle
events published) from the first POST to the last note done; CPU seconds per note of every
notaflow process and their sum (the target is <= 0.5 ms: >= 2,000 notes per CPU-second), each
with its idle part: what the process spends with no note at all over the same time (fetch
loops, heartbeats, timers), measured for `--idle` seconds after the warm-up, while the
consumers' fetches still use the short wait they use under load, and its context switches
per note (wake-ups: a thread slept and was woken; preemptions: runnable, the core taken by
another process);
p50/p99 from the POST to `autorizado` visible in `GET /v2/nfse/REF` (a sample of notes, each
polled every 20 ms, at most 8 at once: up to 400 GETs a second whatever the rate, which the
ingress serves within its figure; the report gives how many a note) and to the hook delivered
(every note). Checks: every note autorizado, one e-mail and one hook each,
no note twice, its lifecycle events in order.

Then, its processes stopped, the same I/O with nothing of notaflow around it (`bench/floor.py`,
at the same pace, FLOOR-OPS operations a step): each process's CPU per note as a multiple of
its floor, the baseline measured in the same run (`--floor-ops 0` skips it).

NOTAFLOW_SMTP_PAUSE is 0 here: the default (1 s between sends to one server, as HubSoft does
not to be taken for spam) caps e-mail at one per second by design, which is not what is
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.consumer import _cpu_seconds, _switches, percentile
from notaflow import topics as t
from notaflow.envelope import decode
from notaflow.launch.broker import free_port
from notaflow.settings import Settings
from testkit.broker import start_broker
from testkit.postgres import ThrowawayPostgres
from testkit.processes import NOTAFLOW, ROOT
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.waiting import wait_for, wait_http

TENANT, CNPJ = "bench", "51916585000125"
PROCESSES = ("ingress", "emission", "notification", "cancellation")
MAIL_DOMAIN = "cliente.example"
POLLERS, POLL_EVERY = 8, 0.02  # sampled notes polled at once, and how often each


class Http:
    """A bare keep-alive HTTP/1.1 connection: what a load generator needs and no more, so it
    does not take the cores the measured processes share with it."""

    def __init__(self, base: str, authorization: str) -> None:
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.authorization = authorization
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None or self.reader is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"{method} {target} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"authorization: {self.authorization}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def note_body(ref: str) -> bytes:
    document = with_valid_cnpjs(JSON_EXAMPLE)
    document["tomador"]["email"] = f"{ref}@{MAIL_DOMAIN}"
    return json.dumps(document).encode()


async def load(
    base: str,
    authorization: str,
    refs: list[str],
    connections: int,
    rate: float,
    sample_every: int,
) -> tuple[dict[str, float], dict[str, float], list[str], int]:
    """POST every ref; poll a sample's GET until `autorizado`. Returns (POST sent at,
    autorizado seen in GET at, refused POSTs, GETs sent)."""
    template = note_body("REFPLACEHOLDER")
    posted: dict[str, float] = {}
    visible: dict[str, float] = {}
    refused: list[str] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for ref in refs:
        queue.put_nowait(ref)
    started = time.monotonic()
    sent = gets = 0
    polls: list[asyncio.Task[None]] = []

    pollers = asyncio.Semaphore(POLLERS)

    async def poll(ref: str) -> None:
        nonlocal gets
        http = Http(base, authorization)
        try:
            while True:
                await asyncio.sleep(POLL_EVERY)
                gets += 1
                status, body = await http.request("GET", f"/v2/nfse/{ref}")
                if status == 200 and json.loads(body).get("status") == "autorizado":
                    visible[ref] = time.time()
                    return
        finally:
            http.close()
            pollers.release()

    async def worker() -> None:
        nonlocal sent
        http = Http(base, authorization)
        try:
            while not queue.empty():
                ref = queue.get_nowait()
                if rate > 0:
                    due = started + sent / rate
                    sent += 1
                    if (wait := due - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                posted[ref] = time.time()
                status, body = await http.request(
                    "POST", f"/v2/nfse?ref={ref}", template.replace(b"REFPLACEHOLDER", ref.encode())
                )
                if status != 202:
                    refused.append(f"{ref}: {status} {body[:200]!r}")
                elif sample_every and int(ref[1:]) % sample_every == 0 and not pollers.locked():
                    # At most POLLERS notes polled at once, whatever the latency: the polls
                    # must not become the ingress's load.
                    await pollers.acquire()
                    polls.append(asyncio.create_task(poll(ref)))
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    await asyncio.gather(*polls)
    return posted, visible, refused, gets


def stand_in(url: str, what: str) -> list[Any]:
    return list(httpx.get(f"{url}/_{what}", timeout=60).json())


async def lifecycle(bootstrap: str, topic: str, refs: set[str]) -> tuple[int, int]:
    """(notes whose lifecycle read processando -> autorizado, events with a repeated id)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: dict[str, list[str]] = defaultdict(list)
    ids: Counter[str] = Counter()
    try:
        await consumer.topics()  # the metadata, for the topic's partitions
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for record in records:
                    event = decode(record.headers, record.value)
                    ids[event.id] += 1
                    seen[str(event.data.get("ref"))].append(str(event.data.get("status")))
    finally:
        await consumer.stop()
    ordered = sum(1 for ref in refs if seen.get(ref) == ["processando_autorizacao", "autorizado"])
    return ordered, sum(n - 1 for n in ids.values() if n > 1)


_T0 = time.monotonic()


def _say(what: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {what}", file=sys.stderr, flush=True)


def _p50_p99(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms"
    )


def main() -> int:
    args = _parser().parse_args()
    code, per_note = pipeline(args)
    if args.floor_ops and per_note:
        compare_with_floor(per_note, args)
    return code


def compare_with_floor(per_note: dict[str, float], args: argparse.Namespace) -> None:
    """The floor (`bench/floor.py`) measured right after the pipeline, at its pace, and the
    pipeline's CPU per note as a multiple of it: the same-run baseline for this benchmark."""
    from bench import floor

    _say("measuring the floor")
    floor_args = argparse.Namespace(
        ops=args.floor_ops, rounds=args.floor_rounds, concurrency=32, rate=args.rate
    )
    floors = floor.per_process(floor.run(floor_args))
    pace = f"paced as {args.rate:g} notes a second" if args.rate else "as fast as they go"
    print(
        f"the same I/O with nothing of notaflow around it (bin/bench floor, {pace}, "
        f"{args.floor_ops} operations a step, {args.floor_rounds} round(s)), ms per note:"
    )
    for name in (*PROCESSES, "all notaflow"):
        if name in floors and name in per_note:
            print(
                f"  {name:<14} {floors[name]:6.3f}   pipeline {per_note[name]:.3f} = "
                f"{per_note[name] / floors[name]:.1f}x its floor"
            )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--notes", type=int, default=5000)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--rate", type=float, default=0.0, help="POSTs per second (0: as fast as taken)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--latency", type=float, default=0.1, help="Focus's answer to the POST (s)")
    p.add_argument("--callback-delay", type=float, default=0.2, help="answer to callback (s)")
    p.add_argument("--samples", type=int, default=200, help="notes whose GET is polled")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=0.0, help="give up after (s; 0: by N)")
    p.add_argument("--profile", default="", help="py-spy each process (raw stacks) into DIR")
    p.add_argument(
        "--idle", type=float, default=3.0,
        help="idle CPU measured for (s; under 10, while the consumers keep the short fetch wait)",
    )  # fmt: skip
    p.add_argument(
        "--floor-ops", type=int, default=2000,
        help="operations a step of the floor measured after the pipeline (0: none)",
    )  # fmt: skip
    p.add_argument("--floor-rounds", type=int, default=1)
    return p


def pipeline(args: argparse.Namespace) -> tuple[int, dict[str, float]]:
    """Run the benchmark; answer its exit code and the CPU per note (ms) by process and of all
    of them (empty when it did not finish)."""

    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-pipeline-"))
    broker = start_broker(tmp / "broker.log")
    pg = ThrowawayPostgres() if args.database == "postgres" else None
    db_url = pg.start() if pg else f"sqlite:///{tmp / 'bench.db'}"
    world_port, smtp_port, port = free_port(), free_port(), free_port()
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
        focus_token="bench-token",
        focus_webhook_secret=secret,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        smtp_sender="nfse@notaflow.bench",
        smtp_pause=0.0,
        hooks_allow_private=True,
        health_port=0,
        health_host="127.0.0.1",
        log_level="WARNING",
    )
    env = {**os.environ, **settings.env()}
    log_path = Path(tempfile.gettempdir()) / "bench-pipeline.log"  # kept, to explain failures
    log = open(log_path, "wb")  # noqa: SIM115
    procs: dict[str, subprocess.Popen[bytes]] = {}
    spies: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*NOTAFLOW, "migrate"], env=env, cwd=ROOT, check=True, stdout=log)
        created = subprocess.run(
            [*NOTAFLOW, "tenant", "create", TENANT, "--cnpj", CNPJ],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        token = created.stdout.strip().splitlines()[-1]
        import base64

        authorization = "Basic " + base64.b64encode(f"{token}:".encode()).decode()
        procs["stand-in"] = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "focus_stub.py"), str(world_port),
             str(args.latency), "--callback", f"{base}/webhooks/focus/nfse", "--secret", secret,
             "--callback-delay", str(args.callback_delay), "--smtp-port", str(smtp_port)],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_http(f"{world}/_count", proc=procs["stand-in"])
        for name in PROCESSES[1:]:
            procs[name] = subprocess.Popen(
                [*NOTAFLOW, "consume", name], env=env, cwd=ROOT, stdout=log, stderr=log
            )
        procs["ingress"] = subprocess.Popen(
            [*NOTAFLOW, "ingress"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        wait_http(f"{base}/readyz", 60, proc=procs["ingress"])
        _say("processes started")
        hook = httpx.post(
            f"{base}/v2/hooks",
            headers={"authorization": authorization},
            json={"cnpj": CNPJ, "event": "nfse", "url": f"{world}/_hook"},
            timeout=10,
        )
        if hook.status_code != 200:
            raise RuntimeError(f"hook not created: {hook.status_code} {hook.text}")

        def done(prefix: str, count: int) -> set[str]:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
            hooks = {r for r, _, s in stand_in(world, "hooks") if s == "autorizado"}
            mails = {a.split("@")[0] for a, _ in stand_in(world, "mails")}
            finished = {r for r in hooks & mails if r.startswith(prefix)}
            return finished if len(finished) >= count else set()

        # Warm-up: start-up, group joins and first connections are not per note.
        loop = asyncio.new_event_loop()
        warm = [f"w{i}" for i in range(args.warmup)]
        loop.run_until_complete(load(base, authorization, warm, 4, 0, 0))
        wait_for(lambda: done("w", len(warm)), 120, 0.2)
        _say("warmed up")
        credits_before = httpx.get(f"{world}/_credits", timeout=60).json()
        # What each process spends with nothing to do, as it is during the load: the consumers'
        # fetches keep their short wait for 10 s after the last record (fetch_wait).
        idle_from = {name: _cpu_seconds(procs[name].pid) for name in PROCESSES}
        idle_started = time.monotonic()
        time.sleep(args.idle)
        idle_rate = {
            name: (_cpu_seconds(procs[name].pid) - idle_from[name])
            / max(time.monotonic() - idle_started, 1e-9)
            for name in PROCESSES
        }

        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            for name in PROCESSES:
                spies.append(
                    subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                         str(procs[name].pid), "--format", "raw", "--rate", "200",
                         "--nonblocking", "--gil", "-o", str(Path(args.profile) / f"{name}.txt")],
                        stdout=log, stderr=log,
                    )
                )  # fmt: skip
        refs = [f"b{i}" for i in range(args.notes)]
        sample_every = max(1, args.notes // args.samples) if args.samples else 0
        cpu_before = {name: _cpu_seconds(procs[name].pid) for name in PROCESSES}
        switches_before = {name: _switches(procs[name].pid) for name in PROCESSES}
        cpu_from = time.monotonic()
        broker_before = _cpu_seconds(broker.process.pid) if broker.process else 0.0
        stand_in_before = _cpu_seconds(procs["stand-in"].pid)
        started = time.time()
        posted, visible, refused, gets = loop.run_until_complete(
            load(base, authorization, refs, args.connections, args.rate, sample_every)
        )
        accepted_in = time.time() - started
        _say(f"{len(posted)} notes POSTed")
        timeout = args.timeout or 120 + args.notes / 10
        try:
            wait_for(lambda: done("b", len(refs) - len(refused)), timeout, 0.25)
        except TimeoutError:
            hooked = {r for r, _, s in stand_in(world, "hooks") if s == "autorizado"}
            mailed = {a.split("@")[0] for a, _ in stand_in(world, "mails")}
            raise SystemExit(
                f"not done within {timeout:.0f}s: {len(posted)} POSTed, "
                f"{len(stand_in(world, 'stats'))} sent to Focus, "
                f"{len(stand_in(world, 'callbacks'))} called back, {len(hooked)} hooks, "
                f"{len(mailed)} e-mails, of {len(refs)}; see {log_path}"
            ) from None
        _say("all done")
        hooks = stand_in(world, "hooks")
        mails = stand_in(world, "mails")
        credits_after = httpx.get(f"{world}/_credits", timeout=60).json()
        hook_at = {r: at for r, at, s in hooks if s == "autorizado" and r.startswith("b")}
        mail_at = {a.split("@")[0]: at for a, at in mails if a.split("@")[0].startswith("b")}
        finished = max(max(hook_at.values()), max(mail_at.values()))
        cpu = {name: _cpu_seconds(procs[name].pid) - cpu_before[name] for name in PROCESSES}
        switches = {
            name: [
                a - b
                for a, b in zip(_switches(procs[name].pid), switches_before[name], strict=True)
            ]
            for name in PROCESSES
        }
        cpu_seconds = time.monotonic() - cpu_from
        idle = {name: idle_rate[name] * cpu_seconds for name in PROCESSES}
        broker_cpu = (_cpu_seconds(broker.process.pid) if broker.process else 0.0) - broker_before
        stand_in_cpu = _cpu_seconds(procs["stand-in"].pid) - stand_in_before
        window = finished - started
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        time.sleep(0.5)  # any duplicate delivery still on its way
        hooks = stand_in(world, "hooks")
        mails = stand_in(world, "mails")
        credits_after = httpx.get(f"{world}/_credits", timeout=60).json()
        ordered, repeated = loop.run_until_complete(
            lifecycle(broker.bootstrap, t.Topics(settings.kafka_topic_prefix).lifecycle, set(refs))
        )
        loop.close()
        _say("lifecycle read")

        n = len(refs) - len(refused)
        first = min(posted.values())
        rate = n / (finished - first)
        total = sum(cpu.values())
        to_hook = [hook_at[r] - posted[r] for r in hook_at]
        to_get = [visible[r] - posted[r] for r in visible]
        hook_counts = Counter(r for r, _, s in hooks if s == "autorizado" and r.startswith("b"))
        mail_counts = Counter(a.split("@")[0] for a, _ in mails if a.startswith("b"))
        twice = sum(1 for c in (*hook_counts.values(), *mail_counts.values()) if c > 1)

        print(
            f"\npipeline benchmark ({args.database}, {n} notes, POSTs "
            f"{'as fast as taken' if not args.rate else f'at {args.rate:.0f}/s'} over "
            f"{args.connections} connections, Focus answers in {args.latency * 1000:.0f} ms and "
            f"calls back {args.callback_delay * 1000:.0f} ms later)"
        )
        print(f"POSTs accepted:       {n / accepted_in:8.0f}/s ({len(refused)} refused)")
        print(f"notes fully done:     {rate:8.0f}/s (first POST to last e-mail/hook)")
        print(
            f"CPU per note, by process (ms; idle: what it spends with no load over the same "
            f"{cpu_seconds:.1f} s, from {args.idle:g} s measured after the warm-up):"
        )
        for name in PROCESSES:
            print(
                f"  {name:<14} {cpu[name] / n * 1000:6.3f}  (idle {idle[name] / n * 1000:.3f}; "
                f"{switches[name][0] / n:.1f} wake-ups, {switches[name][1] / n:.1f} preemptions)"
            )
        idle_total = sum(idle.values())
        print(
            f"  {'all notaflow':<14} {total / n * 1000:6.3f}  (idle {idle_total / n * 1000:.3f})"
            f"   -> {n / total:.0f} notes per CPU-second (target >= 2,000)"
        )
        print(
            f"  (not counted: broker {broker_cpu / n * 1000:.3f} ms, stand-in "
            f"{stand_in_cpu / n * 1000:.3f} ms; load average now {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores)"
        )
        busy = (total + broker_cpu + stand_in_cpu) / window
        print(f"  (every process together kept {busy:.2f} of the {os.cpu_count()} cores busy)")
        print(
            f"POST -> autorizado in GET ({len(to_get)} sampled): {_p50_p99(to_get)}; "
            f"{gets} GETs polled, {gets / n:.2f} a note, served by the ingress in its figure"
        )
        print(f"POST -> hook delivered ({len(to_hook)}): {_p50_p99(to_hook)}")
        spent = sum(credits_after["credits"].values()) - sum(credits_before["credits"].values())
        got, had = credits_after["downloads"], credits_before["downloads"]
        anonymous, with_token = got[0] - had[0], got[1] - had[1]
        print(
            f"Focus credits per note: {spent / n:.2f} ({spent} requests of a token; XML downloads "
            f"{anonymous} without credentials, {with_token} with the token)"
        )
        print(
            f"checks: hooks {len(hook_counts)}/{n}, e-mails {len(mail_counts)}/{n}, delivered "
            f"twice {twice}, lifecycle processando->autorizado {ordered}/{n}, repeated event "
            f"ids {repeated}"
        )
        for line in refused[:5]:
            print(f"  refused: {line}")
        ok = (
            not refused
            and len(hook_counts) == n
            and len(mail_counts) == n
            and twice == 0
            and ordered == n
        )
        per_note = {name: cpu[name] / n * 1000 for name in PROCESSES}
        per_note["all notaflow"] = total / n * 1000
        return (0 if ok else 1), per_note
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        for proc in procs.values():  # all at once: each takes its shutdown grace
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if pg:
            pg.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
