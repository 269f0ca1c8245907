"""Ingress benchmark: accepted `POST /v2/nfse` per second, p50 and p99, through the real ingress
(auth, JSON Schema + fiscal validation, ref claim in the database, acks=all publish to the
embedded broker) against a bare Starlette endpoint that only parses the body — both measured
in this run, on loopback, with wrk. Prints the ratio; absolute numbers drift on shared machines.

    bin/bench ingress [--seconds 10] [--connections 64] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notaflow.broker import EmbeddedBroker, free_port
from notaflow.settings import Settings
from tests.e2e.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from tests.support import NOTAFLOW, ROOT, ThrowawayPostgres, wait_http

LUA = """
local counter = 0
local prefix = "%(prefix)s"
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Authorization"] = "%(auth)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v2/nfse?ref=" .. prefix .. counter)
end
"""


def run_wrk(url: str, seconds: int, connections: int, token: str, prefix: str) -> dict[str, float]:
    auth = "Basic " + base64.b64encode(f"{token}:".encode()).decode()
    body = json.dumps(with_valid_cnpjs(JSON_EXAMPLE), ensure_ascii=False)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"prefix": prefix, "body": body, "auth": auth})
        script = f.name
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = int(errors.group(1)) if errors else 0
    return {
        "rps": rps * (total - bad) / total if total else 0.0,
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non2xx": bad,
        "total": total,
    }


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    unit = value[len(re.match(r"[\d.]+", value).group(0)) :]  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-"))
    logs = Path(tempfile.gettempdir())  # kept after the run, to explain any non-2xx
    broker = EmbeddedBroker(free_port(), log_file=tmp / "broker.log")
    broker.start()
    pg = ThrowawayPostgres() if args.database == "postgres" else None
    db_url = pg.start() if pg else f"sqlite:///{tmp / 'bench.db'}"
    port, bare_port = free_port(), free_port()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,
        database_url=db_url,
        port=port,
        log_level="WARNING",
    )
    env = {**os.environ, **settings.env()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*NOTAFLOW, "migrate"], env=env, cwd=ROOT, check=True)
        token = (
            subprocess.run(
                [*NOTAFLOW, "tenant", "create", "bench", "--cnpj", "51916585000125"],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        log = open(logs / "bench-processes.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen([*NOTAFLOW, "ingress"], env=env, cwd=ROOT, stdout=log, stderr=log)
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(bare_port)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        )
        wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(1)
        results: dict[str, list[dict[str, float]]] = {"bare": [], "ingress": []}
        for r in range(args.rounds):
            results["bare"].append(
                run_wrk(
                    f"http://127.0.0.1:{bare_port}", args.seconds, args.connections, token, f"b{r}x"
                )
            )
            results["ingress"].append(
                run_wrk(f"http://127.0.0.1:{port}", args.seconds, args.connections, token, f"i{r}x")
            )
        best = {k: max(v, key=lambda x: x["rps"]) for k, v in results.items()}
        print(
            f"\ningress benchmark ({args.database}, {args.connections} connections, "
            f"{args.seconds}s x {args.rounds} rounds, best round)"
        )
        print(f"{'':10} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for name, r in best.items():
            print(
                f"{name:10} {r['rps']:11.0f} {r['p50']:8.2f} {r['p99']:8.2f} {int(r['non2xx']):8d}"
            )
        ratio = best["ingress"]["rps"] / best["bare"]["rps"]
        print(f"ratio ingress/bare: {ratio:.2f} (target >= 0.5)")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        if pg:
            pg.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
