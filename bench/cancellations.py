"""Many concurrent synchronous cancellations: what waiting costs the ingress.

Each DELETE /v2/nfse/REF waits (bounded) for the cancellation consumer's answer on the replies
topic; the wait is a future and a timer, not a task or connection of its own. This measures N
cancellations in flight at once through the real processes (ingress, emission and cancellation
consumers, Focus sandbox, embedded broker): wall time, p50/p99, and the ingress's resident
memory with every request waiting, against the same ingress idle (the baseline).

    bin/bench cancellations [--notes 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notaflow.settings import Settings
from testkit.broker import start_broker
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack

JUST = {"justificativa": "Cancelamento de teste de carga do notaflow"}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(notes: int, hold: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-cancel-"))
    broker = start_broker(tmp / "broker.log")
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,
        kafka_partitions=6,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=500,
        database_url=f"sqlite:///{tmp / 'nf.db'}",
        cancel_wait=60,
        log_level="WARNING",
        consumer_retry_base=0.2,
        consumer_retry_max=0.5,
        consumer_max_attempts=400,
    )
    stack = Stack(settings, tmp, consumers=("emission", "cancellation")).start()
    ingress = next(p for p in stack.procs if p.name == "ingress").process.pid
    try:
        doc = with_valid_cnpjs(JSON_EXAMPLE)
        # The notes stay in processing for `hold` seconds, so every cancel has to wait.
        doc["servico"]["discriminacao"] = f"Carga [sandbox:delay={hold}]"
        limits = httpx.Limits(max_connections=notes + 10, max_keepalive_connections=notes + 10)
        async with httpx.AsyncClient(
            base_url=stack.base, auth=(stack.token, ""), timeout=120, limits=limits
        ) as c:
            refs = [f"b{uuid.uuid4().hex[:10]}" for _ in range(notes)]
            for ref in refs:
                assert (await c.post("/v2/nfse", params={"ref": ref}, json=doc)).status_code == 202
            idle = rss_kb(ingress)
            latencies: list[float] = []
            peak = 0

            async def cancel(ref: str) -> int:
                started = time.perf_counter()
                r = await c.request("DELETE", f"/v2/nfse/{ref}", json=JUST)
                latencies.append(time.perf_counter() - started)
                return r.status_code

            started = time.perf_counter()
            tasks = [asyncio.create_task(cancel(ref)) for ref in refs]
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_kb(ingress))
                await asyncio.sleep(0.1)
            codes = [t.result() for t in tasks]
            elapsed = time.perf_counter() - started
        latencies.sort()
        ok = codes.count(200)
        print(f"\n{notes} concurrent cancellations of notes still processing for {hold}s")
        print(f"answered 200 cancelado: {ok}/{notes}; wall {elapsed:.1f}s")
        print(
            f"latency p50 {latencies[len(latencies) // 2]:.2f}s  "
            f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f}s"
        )
        print(
            f"ingress RSS idle {idle / 1024:.1f} MiB, peak while all wait "
            f"{peak / 1024:.1f} MiB: {(peak - idle) / notes:.1f} KiB per waiting request"
        )
    finally:
        stack.stop()
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--notes", type=int, default=400)
    p.add_argument("--hold", type=float, default=3.0)
    args = p.parse_args()
    asyncio.run(main(args.notes, args.hold))
