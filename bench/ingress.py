"""Ingress benchmark: accepted `POST /v2/nfse` per second, p50 and p99, through the real ingress
(auth, JSON Schema + fiscal validation, ref claim in the database, acks=all publish to the
embedded broker) against a bare Starlette endpoint that only parses the body — both measured
in this run, on loopback, with wrk. Prints the ratio; absolute numbers drift on shared machines,
so it also prints each server's CPU time per request (from /proc), which drifts much less.

    bin/bench ingress [--seconds 10] [--connections 64] [--rounds 3]
                      [--baselines default,quiet,asyncio] [--database sqlite|postgres]

The ingress as production runs it (uvloop where installed) against a bare Starlette app under
uvicorn's defaults, which is what a user would run instead, and against the same without the
access log; and the ingress held to asyncio's loop against a bare app held to it with the same
server settings, which isolates the work done per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notaflow.launch.broker import free_port, port_open
from notaflow.settings import Settings
from testkit.broker import start_broker
from testkit.postgres import ThrowawayPostgres
from testkit.processes import NOTAFLOW, ROOT
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.waiting import wait_for, wait_http

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


def profile(pid: int, url: str, seconds: int, connections: int, token: str, top: int = 10) -> str:
    """py-spy samples of the process while wrk loads it: the `top` frames by own time and by
    total time (a frame counted once per sample however deep it recurses), in % of samples."""
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        return "  py-spy not found: pip install py-spy"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = Path(tempfile.mkdtemp(prefix="notaflow-spy-")) / "stacks.txt"
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    run_wrk(url, seconds, connections, token, "prof")
    recorder.wait(30)
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    shutil.rmtree(raw.parent, ignore_errors=True)
    if not samples:
        return "  no samples (py-spy needs ptrace: run as root or with CAP_SYS_PTRACE)"
    lines = [f"  {samples} samples; own time:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / samples:5.1f} %  {frame}")
    lines.append("  total time (frame anywhere on the stack), below the event loop:")
    # The frames every sample has (the interpreter, the CLI, the loop) say nothing.
    ranked = [kv for kv in sorted(total.items(), key=lambda kv: -kv[1]) if kv[1] < samples * 0.5]
    ranked = [kv for kv in ranked if not kv[0].endswith(("(<frozen runpy>)", "(notaflow/cli.py)"))]
    for frame, n in ranked[:top]:
        lines.append(f"    {100 * n / samples:5.1f} %  {frame}")
    return "\n".join(lines)


def _frame(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines differ per sample."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


def _ms(value: str) -> float:
    number = float(re.match(r"[\d.]+", value).group(0))  # type: ignore[union-attr]
    unit = value[len(re.match(r"[\d.]+", value).group(0)) :]  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--baselines",
        type=lambda v: v.split(","),
        default=["default", "quiet", "asyncio"],
        help="bare apps to compare with: default (uvicorn's defaults), quiet (the same, no "
        "access log), asyncio (held to asyncio's loop; compared with the ingress on it)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="after the rounds, sample the ingress with py-spy under the same load",
    )
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="notaflow-bench-"))
    logs = Path(tempfile.gettempdir())  # kept after the run, to explain any non-2xx
    broker = start_broker(tmp / "broker.log")
    pg = ThrowawayPostgres() if args.database == "postgres" else None
    db_url = pg.start() if pg else f"sqlite:///{tmp / 'bench.db'}"
    port = free_port()
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
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        for loop in sorted({"asyncio" if b == "asyncio" else "auto" for b in args.baselines}):
            iport = port if loop == "auto" else free_port()
            ingress = subprocess.Popen(
                [*NOTAFLOW, "ingress", "--loop", loop],
                env={**env, "NOTAFLOW_PORT": str(iport)},
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
            procs.append(ingress)
            wait_http(f"http://127.0.0.1:{iport}/readyz")
            servers[f"ingress/{loop}"] = (ingress, f"http://127.0.0.1:{iport}")
        for mode in args.baselines:
            bport = free_port()
            bare = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "bare_app.py"), str(bport), mode],
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
            procs.append(bare)
            wait_for(lambda bport=bport: port_open("127.0.0.1", bport), 30)  # type: ignore[misc]
            servers[f"bare/{mode}"] = (bare, f"http://127.0.0.1:{bport}")
        time.sleep(1)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for i, (name, (proc, url)) in enumerate(servers.items()):
                prefix = f"r{round_}s{i}x"
                results[name].append(
                    measured(
                        proc.pid,
                        lambda url=url, prefix=prefix: run_wrk(  # type: ignore[misc]
                            url, args.seconds, args.connections, token, prefix
                        ),
                    )
                )
        print(
            f"\ningress benchmark ({args.database}, {args.connections} connections, "
            f"{args.seconds}s x {args.rounds} alternating rounds)"
        )
        print(
            f"{'':17} {'best/s':>8} {'median/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8}"
            f" {'CPU us/req best':>16} {'median':>7}"
        )
        for name, rounds in results.items():
            best = max(rounds, key=lambda x: x["rps"])
            cpu = [r["cpu_us"] for r in rounds if "cpu_us" in r]
            cpu_text = (
                f"{min(cpu):16.0f} {statistics.median(cpu):7.0f}" if cpu else f"{'-':>16} {'-':>7}"
            )
            print(
                f"{name:17} {best['rps']:8.0f} {statistics.median(r['rps'] for r in rounds):9.0f}"
                f" {best['p50']:7.2f} {best['p99']:7.2f}"
                f" {sum(int(r['non2xx']) for r in rounds):8d} {cpu_text}"
            )
        what = {
            "default": "bare Starlette under uvicorn's defaults (uvloop, httptools, access log)",
            "quiet": "the same without the access log (the strictest baseline)",
            "asyncio": "both held to asyncio's loop, same server settings",
        }
        for mode in args.baselines:
            ing = results["ingress/asyncio" if mode == "asyncio" else "ingress/auto"]
            bare_ = results[f"bare/{mode}"]
            best_ratio = max(r["rps"] for r in ing) / max(r["rps"] for r in bare_)
            med_ratio = statistics.median(r["rps"] for r in ing) / statistics.median(
                r["rps"] for r in bare_
            )
            print(
                f"ratio ingress/bare, {what[mode]}: best {best_ratio:.2f}, median {med_ratio:.2f}"
            )
            icpu = [r["cpu_us"] for r in ing if "cpu_us" in r]
            bcpu = [r["cpu_us"] for r in bare_ if "cpu_us" in r]
            if icpu and bcpu:
                print(
                    f"  CPU per request bare/ingress: best {min(bcpu) / min(icpu):.2f},"
                    f" median {statistics.median(bcpu) / statistics.median(icpu):.2f}"
                )
        if args.profile:
            proc, url = servers["ingress/auto" if "ingress/auto" in servers else "ingress/asyncio"]
            print(f"\nwhere the ingress's CPU goes (py-spy, {args.profile}s under the same load):")
            print(profile(proc.pid, url, args.profile, args.connections, token))
        print("target: >= 0.6 of bare Starlette under uvicorn's defaults")
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
