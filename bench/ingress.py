"""Ingress benchmark: accepted `POST /v2/nfse` per second, p50 and p99, through the real ingress
(auth, JSON Schema + fiscal validation, ref claim in the database, acks=all publish to the
embedded broker) against a bare Starlette endpoint that only parses the body — both measured
in this run, on loopback, with wrk. Prints the ratio; absolute numbers drift on shared machines,
so it also prints each server's CPU time per request (from /proc), which drifts much less.

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
from collections.abc import Callable
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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`run()`'s figures plus the server's CPU microseconds per request during it."""
    before = cpu_seconds(pid)
    result = run()
    after = cpu_seconds(pid)
    if before is not None and after is not None and result["total"]:
        result["cpu_us"] = (after - before) / result["total"] * 1e6
    return result


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
        ingress = subprocess.Popen(
            [*NOTAFLOW, "ingress"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        procs.append(ingress)
        bare = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(bare_port)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        procs.append(bare)
        wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(1)
        results: dict[str, list[dict[str, float]]] = {"bare": [], "ingress": []}
        for round_ in range(args.rounds):
            for name, pid, url in (
                ("bare", bare.pid, f"http://127.0.0.1:{bare_port}"),
                ("ingress", ingress.pid, f"http://127.0.0.1:{port}"),
            ):
                prefix = f"{name[0]}{round_}x"
                results[name].append(
                    measured(
                        pid,
                        lambda url=url, prefix=prefix: run_wrk(  # type: ignore[misc]
                            url, args.seconds, args.connections, token, prefix
                        ),
                    )
                )
        best = {k: max(v, key=lambda x: x["rps"]) for k, v in results.items()}
        print(
            f"\ningress benchmark ({args.database}, {args.connections} connections, "
            f"{args.seconds}s x {args.rounds} rounds, best round)"
        )
        print(
            f"{'':10} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
            f" {'CPU us/request':>15}"
        )
        for name, r in best.items():
            cpu = f"{r['cpu_us']:15.0f}" if "cpu_us" in r else f"{'-':>15}"
            print(
                f"{name:10} {r['rps']:11.0f} {r['p50']:8.2f} {r['p99']:8.2f} {int(r['non2xx']):8d}"
                f" {cpu}"
            )
        ratio = best["ingress"]["rps"] / best["bare"]["rps"]
        print(f"ratio ingress/bare: {ratio:.2f} (target >= 0.5)")
        if "cpu_us" in best["ingress"] and "cpu_us" in best["bare"]:
            cpu_ratio = best["bare"]["cpu_us"] / best["ingress"]["cpu_us"]
            print(f"CPU per request, bare/ingress: {cpu_ratio:.2f} (drifts less than req/s)")
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
