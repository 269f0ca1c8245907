"""Whole-stack benchmark: `notaflow dev` as a user runs it (default sandbox delay 0.5 s), under a
sustained load from wrk, then drained and stopped. Prints notes accepted per second (ingress),
notes authorized per second (the stack's own database), how far behind the Focus sandbox and
the stack fall (notes received but not yet authorized, at the end of the load and at worst),
the time to drain the backlog, CPU per note of each process, and how long the stop took.

    bin/bench dev_stack [--seconds 20] [--connections 16] [--sandbox-delay 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.ingress import cpu_seconds, run_wrk
from notaflow.launch.broker import free_port
from testkit.processes import ROOT
from testkit.waiting import wait_for, wait_http


def authorized(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM documents WHERE status = 'autorizado'").fetchone()
    return int(row[0])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--sandbox-delay", default="0.5")
    p.add_argument(
        "--drain", type=float, default=180, help="seconds to wait for the backlog (0: stop at once)"
    )
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dev-"))
    data, out = tmp / "data", tmp / "dev.out"
    port, kafka_port = free_port(), free_port()
    # argv of the stack, as a user starts it
    log = open(out, "wb")  # noqa: SIM115 - lives as long as the stack
    dev = subprocess.Popen(
        [
            sys.executable, "-m", "notaflow.launch.cli", "dev", "--port", str(port), "--kafka-port",
            str(kafka_port), "--data-dir", str(data), "--sandbox-delay", args.sandbox_delay,
        ],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", timeout=120, proc=dev)
    wait_for(lambda: (data / "env").exists(), 10)
    token = (data / "demo-token").read_text().strip()
    state = json.loads((data / "dev.json").read_text())
    pids = {name: p["pid"] for name, p in state["processes"].items() if name != "supervisor"}
    env = dict(
        line.split("=", 1) for line in (data / "env").read_text().splitlines() if "=" in line
    )
    sandbox = env["NOTAFLOW_FOCUS_BASE_URL"].strip("'")
    db = data / "notaflow.db"

    samples: list[tuple[float, int, int, int]] = []  # t, sandbox posts, sandbox authorized, ours
    stop_sampling = threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop_sampling.is_set():
                try:
                    totals = c.get(f"{sandbox}/_sandbox/stats", params={"totals": 1}).json()
                    ours = authorized(db)
                except (httpx.HTTPError, sqlite3.Error) as exc:  # an overloaded sandbox: say so
                    print(f"sample failed: {exc!r}", file=sys.stderr)
                    continue
                samples.append((time.monotonic(), totals["posts"], totals["authorizations"], ours))
                stop_sampling.wait(1.0)

    cpu_before = {n: cpu_seconds(pid) or 0.0 for n, pid in pids.items()}
    sampler = threading.Thread(target=sample, daemon=True)
    began = time.monotonic()
    sampler.start()
    load = run_wrk(base, args.seconds, args.connections, token, f"b{int(time.time())}x")
    load_end = time.monotonic()
    accepted = int(load["total"] - load["non2xx"])
    at_load_end = samples[-1]
    drained_at = None
    deadline = load_end + args.drain
    while time.monotonic() < deadline:
        if samples[-1][3] >= accepted:
            drained_at = samples[-1][0]
            break
        time.sleep(0.5)
    stop_sampling.set()
    sampler.join()
    cpu = {n: (cpu_seconds(pid) or 0.0) - cpu_before[n] for n, pid in pids.items()}
    done = samples[-1][3]

    # Stop under whatever is left, as Ctrl-C does.
    stop_began = time.monotonic()
    os.killpg(dev.pid, signal.SIGINT)
    dev.wait(60)
    stop_took = time.monotonic() - stop_began
    text = out.read_text()
    killed = re.search(r"killed \(.*\): (.*)", text)
    stopped = re.search(r"stopped in ([\d.]+)s", text)

    load_secs = load_end - began
    in_load = [s for s in samples if s[0] <= load_end]
    worst = max((s[1] - s[2] for s in in_load), default=0)
    _, sent, sandbox_done, ours = at_load_end
    lines = [
        f"load: {args.seconds}s, {args.connections} connections, "
        f"sandbox delay {args.sandbox_delay}s",
        f"accepted: {accepted} notes, {accepted / load_secs:,.0f}/s "
        f"(p50 {load['p50']:.1f} ms, p99 {load['p99']:.1f} ms, non-2xx {load['non2xx']})",
        f"authorized (notaflow) during the load: {ours} ({ours / load_secs:,.0f}/s)",
        f"sandbox during the load: received {sent} ({sent / load_secs:,.0f}/s), "
        f"authorized {sandbox_done}",
        f"behind at the end of the load: {accepted - ours} accepted and not yet authorized; "
        f"{accepted - sent} not yet sent to the sandbox, {sent - sandbox_done} at the sandbox "
        f"(worst {worst} during the load)",
    ]
    if drained_at is not None:
        lines.append(
            f"drained: all {accepted} authorized {drained_at - load_end:.1f}s after the load, "
            f"{accepted / (drained_at - began):,.0f}/s over the whole run"
        )
    else:
        lines.append(f"not drained within {args.drain:.0f}s: {done} of {accepted} authorized")
    per_note = (f"{n} {cpu[n] * 1000 / max(accepted, 1):.2f}" for n in sorted(cpu))
    lines.append("CPU ms per accepted note: " + ", ".join(per_note))
    lines.append(
        f"stop: {stopped.group(1) if stopped else '?'}s by the supervisor, "
        f"{stop_took:.1f}s from SIGINT to its exit; "
        + (f"killed: {killed.group(1)}" if killed else "nothing killed")
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
