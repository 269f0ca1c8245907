"""Consumer benchmark: NFS-e notes per second through ONE `notaflow consume emission` process
against a Focus stand-in whose answer takes LATENCY seconds, compared with the bound the
concurrency limit sets (calls in flight / latency: 200 / 0.1 s = 2,000 notes/s).

    bin/bench consumer [--notes 20000] [--concurrency 200] [--latency 0.1]
                       [--database sqlite|postgres] [--paced-seconds 5] [--paced-rate R]
                       [--py-spy FILE]

The concurrency is NOTAFLOW_CONSUMER_CONCURRENCY, the calls the consumer keeps in flight at
Focus; the stub reports the most it ever saw at once, which must not exceed it. The runner
holds four times as many records (NOTAFLOW_CONSUMER_WINDOW), so their bookkeeping overlaps
the calls. The default is NOTAFLOW_CONSUMER_CONCURRENCY's own (200); the consumer's one core
caps what a higher one can give (see the CPU per note it prints).

What runs (all on loopback, each its own process): the embedded broker, the database after
`notaflow migrate` and `notaflow tenant create`, `bench/focus_stub.py` (202 after exactly
LATENCY seconds; see there why not the sandbox), and the consumer in production form
(NOTAFLOW_* variables only).

1. Backlog: N emit commands are claimed and published the way the ingress does it (its Intake:
   `claim_many` group commit + `publish_many`), before the consumer starts. A subset
   (`--ordered`) carries a marker the stub refuses on the first attempt, and each of those is
   followed on its key by a re-emission (a new command, as another system would publish it)
   and a redelivery of that re-emission (the same command id again). Notes/s is POSTs at the
   stub from the first to the last.
2. Paced: commands go through the same Intake at half the backlog's rate (or `--paced-rate`: on
   a machine others load, a rate the consumer's share of the cores surely keeps up with) while
   the consumer runs; command-to-POST latency (accepted by Kafka -> POST at the stub) p50/p99.

3. Callbacks (`--callbacks N`): Focus's `autorizado` callback for N submitted notes, published
   to the provider-events topic as the ingress's webhook route does, each naming the note's XML
   (which the consumer downloads from the stub and stores). Callbacks/s is from the first
   publish to the last note `autorizado` in the database; it has no provider-latency bound (the
   XML comes at once), so it is printed with its CPU per callback, the path's own cost.

Checks: every note POSTed exactly once per attempt (a redelivered command never emits twice),
the re-emission's POST only after the refused first attempt was answered (order per
document), and every note `submitted` in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.envelope import Event
from notaflow.ingress.intake import Intake
from notaflow.launch.broker import free_port
from notaflow.nfse import normalize_nfse
from notaflow.settings import Settings
from notaflow.store import ClaimRequest, DocumentStore, create_engine
from notaflow.store.tables import documents
from testkit.broker import start_broker
from testkit.postgres import ThrowawayPostgres
from testkit.processes import NOTAFLOW, ROOT
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.waiting import wait_for

TENANT, CNPJ, KIND = "bench", "51916585000125", "nfse"
SOURCE = "notaflow/bench/consumer"
REJECT_MARKER = "[bench:rejeitar]"


class Loader:
    """Claims and publishes emit commands through the ingress's own Intake."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = t.Topics(settings.kafka_topic_prefix)
        self.engine = create_engine(settings.database_url)
        self.docs = DocumentStore(self.engine)
        self.bus = Bus(settings)
        self.intake = Intake(self.docs, self.bus, self.topics.nfse_commands, self.topics.lifecycle)
        self.document = normalize_nfse(with_valid_cnpjs(JSON_EXAMPLE))
        self.rejected = copy.deepcopy(self.document)
        self.rejected["servico"]["discriminacao"] += " " + REJECT_MARKER

    async def start(self) -> None:
        await self.bus.start()
        await self.bus.wait_connected(30)

    async def stop(self) -> None:
        await self.bus.stop()
        self.docs.close()
        await self.engine.dispose()

    def _event(self, ref: str, document: dict[str, Any], command_id: str) -> Event:
        return Event(
            type=t.NFSE_EMIT,
            source=SOURCE,
            data={"tenant": TENANT, "ref": ref, "nfse": document},
            subject=ref,
            id=command_id,
            tenant=TENANT,
        )

    async def emit(self, ref: str, reject: bool = False) -> int:
        """Claim + publish one command, as `POST /v2/nfse` does; returns the document id."""
        document = self.rejected if reject else self.document
        command_id = str(uuid.uuid4())
        claim = ClaimRequest(TENANT, KIND, ref, CNPJ, document, command_id, SOURCE)
        key = t.document_key(TENANT, KIND, ref)
        result = await self.intake.submit(claim, self._event(ref, document, command_id), key)
        return result.document_id

    async def reemit_twice(self, ref: str) -> None:
        """A re-emission published straight to Kafka (claimed by the consumer once the first
        attempt is refused), then the same command again, as a redelivery would bring it."""
        event = self._event(ref, self.document, str(uuid.uuid4()))
        key = t.document_key(TENANT, KIND, ref)
        for _ in range(2):
            await self.bus.publish(self.topics.nfse_commands, event, key)

    async def callbacks(self, limit: int) -> list[int]:
        """Publish the `autorizado` callback of up to `limit` submitted notes; their ids."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(documents.c.id, documents.c.ref, documents.c.attempt)
                    .where(
                        documents.c.status == "processando_autorizacao",
                        documents.c.submitted_at.is_not(None),
                    )
                    .order_by(documents.c.id)
                    .limit(limit)
                )
            ).all()
        records = []
        for doc_id, ref, attempt in rows:
            pref = f"N{doc_id}A{attempt}"
            body = {
                "ref": pref,
                "status": "autorizado",
                "cnpj_prestador": CNPJ,
                "numero": str(doc_id),
                "codigo_verificacao": f"V{doc_id}",
                "data_emissao": "2026-11-22T10:00:00-03:00",
                "caminho_xml_nota_fiscal": f"/notas_fiscais_servico/{pref}-nfse.xml",
            }
            event = Event(
                type=t.FOCUS_NFSE_CALLBACK, source=SOURCE, data=body, subject=pref, tenant=TENANT
            )
            records.append((t.document_key(TENANT, KIND, ref), event))
        for start in range(0, len(records), 1000):
            await self.bus.publish_many(self.topics.provider_events, records[start : start + 1000])
        return [int(r[0]) for r in rows]

    async def backlog(self, notes: int, every: int, prefix: str) -> dict[str, int]:
        ordered = {f"{prefix}{i}" for i in range(0, notes, every)} if every else set()
        ids: dict[str, int] = {}
        chunk = 1000
        for start in range(0, notes, chunk):
            refs = [f"{prefix}{i}" for i in range(start, min(notes, start + chunk))]
            got = await asyncio.gather(*(self.emit(r, r in ordered) for r in refs))
            ids.update(zip(refs, got, strict=True))
        # After every first command is acknowledged: the key's later records follow it.
        await asyncio.gather(*(self.reemit_twice(r) for r in ordered))
        return {r: ids[r] for r in ordered} | {"__all__": len(ids)}

    async def paced(self, rate: float, seconds: float, prefix: str) -> dict[int, float]:
        """Commands at `rate` per second; returns document id -> accepted time."""
        accepted: dict[int, float] = {}
        tick = 0.02
        per_tick = max(1, round(rate * tick))
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        n = 0

        async def one(ref: str) -> None:
            doc_id = await self.emit(ref)
            accepted[doc_id] = time.time()

        while time.monotonic() - started < seconds:
            for _ in range(per_tick):
                tasks.append(asyncio.create_task(one(f"{prefix}{n}")))
                n += 1
            n_due = (time.monotonic() - started + tick) * rate
            await asyncio.sleep(max(0.0, (n - n_due) / rate))
        await asyncio.gather(*tasks)
        return accepted


def stub_arrivals(url: str) -> list[tuple[str, float, int]]:
    return [(a[0], a[1], a[2]) for a in httpx.get(f"{url}/_stats", timeout=30).json()]


def stub_count(url: str) -> int:
    return int(httpx.get(f"{url}/_count", timeout=30).text)


def stub_peak(url: str) -> int:
    return int(httpx.get(f"{url}/_peak", timeout=30).text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def authorized_count(engine: Any, ids: list[int]) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                sa.select(sa.func.count())
                .select_from(documents)
                .where(documents.c.status == "autorizado", documents.c.id.in_(ids))
            )
            or 0
        )


async def submitted_count(engine: Any, ids: list[int]) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                sa.select(sa.func.count())
                .select_from(documents)
                .where(documents.c.submitted_at.is_not(None), documents.c.id.in_(ids))
            )
            or 0
        )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--notes", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--ordered", type=int, default=50, help="every Nth note checks order (0: off)")
    p.add_argument("--paced-seconds", type=float, default=5.0)
    p.add_argument(
        "--paced-rate",
        type=float,
        default=0.0,
        help="commands/s of the paced phase (0: half the backlog's rate)",
    )
    p.add_argument("--callbacks", type=int, default=10_000, help="callbacks phase size (0: off)")
    p.add_argument("--py-spy", default="", help="record the consumer with py-spy (raw) here")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-consumer-"))
    broker = start_broker(tmp / "broker.log")
    pg = ThrowawayPostgres() if args.database == "postgres" else None
    db_url = pg.start() if pg else f"sqlite:///{tmp / 'bench.db'}"
    stub_port = free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,
        database_url=db_url,
        focus_base_url=stub_url,
        focus_token="bench-token",
        consumer_concurrency=args.concurrency,
        health_port=0,
        health_host="127.0.0.1",
        log_level="WARNING",
    )
    env = {**os.environ, **settings.env()}
    log_path = Path(tempfile.gettempdir()) / "bench-consumer.log"  # kept, to explain failures
    log = open(log_path, "wb")  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    spy: subprocess.Popen[bytes] | None = None
    bound = args.concurrency / args.latency
    try:
        subprocess.run([*NOTAFLOW, "migrate"], env=env, cwd=ROOT, check=True, stdout=log)
        subprocess.run(
            [*NOTAFLOW, "tenant", "create", TENANT, "--cnpj", CNPJ],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=log,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "focus_stub.py"), str(stub_port),
                 str(args.latency)],
                stdout=log,
                stderr=log,
            )
        )  # fmt: skip
        wait_for(lambda: _answers(f"{stub_url}/_stats"), 15)

        loader = Loader(settings)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(loader.start())
        started = time.monotonic()
        ordered = loop.run_until_complete(loader.backlog(args.notes, args.ordered, "b"))
        total_notes = ordered.pop("__all__")
        print(
            f"loaded {total_notes} emit commands (+{2 * len(ordered)} for order checks) in "
            f"{time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        expected = total_notes + len(ordered)  # the refused first attempts are re-POSTed

        consumer = subprocess.Popen(
            [*NOTAFLOW, "consume", "emission"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        procs.append(consumer)
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(consumer.pid), "--format", "raw", "--rate", "500", "--nonblocking", "--gil",
                 "-o", args.py_spy],
                stdout=log,
                stderr=log,
            )  # fmt: skip

        def posted(count: int) -> bool:
            if consumer.poll() is not None:
                raise RuntimeError(f"consumer exited with {consumer.returncode}; see {log_path}")
            return stub_count(stub_url) >= count

        # CPU from the first POST on: the start-up (imports, group join) is not per note.
        wait_for(lambda: posted(1), timeout=120, interval=0.05)
        cpu_start, cpu_posted = _cpu_seconds(consumer.pid), stub_count(stub_url)

        wait_for(lambda: posted(expected), timeout=120 + 3 * expected / bound, interval=0.5)
        cpu_used = _cpu_seconds(consumer.pid) - cpu_start
        time.sleep(2 * args.latency + 0.5)  # let the last bookkeeping land, and any duplicate
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        arrivals = stub_arrivals(stub_url)
        times = sorted(a[1] for a in arrivals)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        violations, duplicates = _order_check(arrivals, ordered, args.latency)

        paced: dict[int, float] = {}
        latencies: list[float] = []
        paced_rate = 0.0
        if args.paced_seconds > 0:
            # Half of what the backlog showed the consumer can do, so the latency is the
            # path's own, not a queue's.
            paced_rate = args.paced_rate or min(bound, rate) / 2
            paced = loop.run_until_complete(loader.paced(paced_rate, args.paced_seconds, "p"))
            wait_for(
                lambda: stub_count(stub_url) >= len(arrivals) + len(paced),
                timeout=60,
                interval=0.5,
            )
            post_times = {ref: at for ref, at, _ in stub_arrivals(stub_url)}
            latencies = [
                post_times[f"N{doc_id}A1"] - at
                for doc_id, at in paced.items()
                if f"N{doc_id}A1" in post_times
            ]
        all_ids = _doc_ids(arrivals)
        submitted = loop.run_until_complete(submitted_count(loader.engine, all_ids))
        called: list[int] = []
        callback_rate = callback_cpu = 0.0
        if args.callbacks > 0:
            cpu_before = _cpu_seconds(consumer.pid)
            started = time.monotonic()
            called = loop.run_until_complete(loader.callbacks(args.callbacks))

            def applied() -> bool:
                if consumer.poll() is not None:
                    raise RuntimeError(f"consumer exited; see {log_path}")
                done = loop.run_until_complete(authorized_count(loader.engine, called))
                return done >= len(called)

            wait_for(applied, timeout=120 + len(called) / 50, interval=0.2)
            callback_rate = len(called) / (time.monotonic() - started)
            callback_cpu = (_cpu_seconds(consumer.pid) - cpu_before) / max(1, len(called))
        loop.run_until_complete(loader.stop())
        loop.close()

        print(
            f"\nconsumer benchmark ({args.database}, concurrency {args.concurrency}, "
            f"provider latency {args.latency * 1000:.0f} ms, {total_notes} notes, one process)"
        )
        print(f"notes/s (POSTs, first to last): {rate:8.0f}")
        peak = stub_peak(stub_url)
        print(f"bound (concurrency / latency):  {bound:8.0f}")
        print(f"calls in flight at the provider, most at once: {peak} (limit {args.concurrency})")
        print(f"ratio:                          {rate / bound:8.2f}  (target >= 0.8, >= 1,000/s)")
        measured = len(times) - cpu_posted
        print(
            f"consumer CPU per note: {cpu_used / measured * 1000:.2f} ms "
            f"(one core's worth: {measured / cpu_used:.0f} notes/s; load average now "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        if latencies:
            print(
                f"command-to-POST at {paced_rate:.0f}/s paced ({len(latencies)} notes): "
                f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms"
            )
        if called:
            print(
                f"callbacks applied (autorizado, XML downloaded and stored): {len(called)} at "
                f"{callback_rate:.0f}/s, consumer CPU per callback {callback_cpu * 1000:.2f} ms"
            )
        print(
            f"order violations: {violations} (of {len(ordered)} re-emitted documents); "
            f"duplicate POSTs: {duplicates}; submitted in the database: "
            f"{submitted}/{len(all_ids)}"
        )
        ok = (
            violations == 0
            and duplicates == 0
            and submitted == len(all_ids)
            and peak <= args.concurrency
        )
        return 0 if ok else 1
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
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


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all of a process's threads so far (Linux
    /proc): a voluntary one is a thread that slept and was woken, the wake-up whose CPU
    `bin/bench floor` prints; a thread that exited takes its count with it."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread exited meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _doc_ids(arrivals: list[tuple[str, float, int]]) -> list[int]:
    """Document ids from the provider refs the consumer used (`N{id}A{attempt}`)."""
    return sorted({int(ref[1:].split("A")[0]) for ref, _, status in arrivals if status == 202})


def _order_check(
    arrivals: list[tuple[str, float, int]], ordered: dict[str, int], latency: float
) -> tuple[int, int]:
    """(order violations, duplicate POSTs). For each order-checked document: its first
    attempt POSTed and refused, then its re-emission POSTed no earlier than the refusal's
    answer (the key's records ran one after the other), each exactly once."""
    first: dict[str, float] = {}
    duplicates = 0
    for ref, at, _ in arrivals:
        if ref in first:
            duplicates += 1
        first.setdefault(ref, at)
    violations = 0
    for doc_id in ordered.values():
        a1, a2 = first.get(f"N{doc_id}A1"), first.get(f"N{doc_id}A2")
        # 1 ms of slack: the two timestamps come from the same clock but are taken at
        # different points of the stub's loop.
        if a1 is None or a2 is None or a2 < a1 + latency - 0.001:
            violations += 1
    return violations, duplicates


if __name__ == "__main__":
    sys.exit(main())
