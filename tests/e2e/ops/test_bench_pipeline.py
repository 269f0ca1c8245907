"""`bin/bench pipeline` run tiny, so it cannot rot: 20 notes through the production processes
(ingress, emission, notification, cancellation) against the stand-in world, every check of the
benchmark holding (each note autorizado, e-mailed and hooked once, its lifecycle in order), and
each process's figure set against its floor measured after it."""

from __future__ import annotations

import re
import subprocess
import sys

from testkit.processes import ROOT


def test_pipeline_bench_runs_tiny_and_its_checks_hold() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--notes", "20", "--warmup", "2",
         "--samples", "5", "--connections", "4", "--timeout", "60", "--idle", "0.5",
         "--floor-ops", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "checks: hooks 20/20, e-mails 20/20, delivered twice 0" in out.stdout, out.stdout
    assert "lifecycle processando->autorizado 20/20" in out.stdout, out.stdout
    per_process = {
        name: (float(total), float(idle))  # idle: /proc's 10 ms ticks over 0.5 s, coarse
        for name, total, idle in re.findall(
            r"^  (\w[\w ]*?)\s+(\d+\.\d+)  \(idle (\d+\.\d+)[;)]", out.stdout, re.MULTILINE
        )
    }
    assert set(per_process) >= {"ingress", "emission", "notification", "cancellation"}, out.stdout
    # Each process's context switches per note, from /proc: every process sleeps and is woken
    # at least once for 20 notes' records, so none can read 0.0 on both.
    switches = {
        name: (float(woken), float(preempted))
        for name, woken, preempted in re.findall(
            r"^  (\w+)\s+\d+\.\d+  \(idle \d+\.\d+; (\d+\.\d) wake-ups, (\d+\.\d) preemptions\)",
            out.stdout,
            re.MULTILINE,
        )
    }
    assert list(switches) == ["ingress", "emission", "notification", "cancellation"], out.stdout
    assert all(woken > 0 for woken, _ in switches.values()), out.stdout
    assert re.search(r"POST -> hook delivered \(20\): p50 \d+ ms, p99 \d+ ms", out.stdout)
    polled = re.search(
        r"sampled\): p50 \d+ ms, p99 \d+ ms; (\d+) GETs polled, ([\d.]+) a note", out.stdout
    )
    assert polled and int(polled[1]) >= 1 and float(polled[2]) > 0, out.stdout
    # The same run's baseline: each process's CPU per note against its floor.
    multiples = re.findall(
        r"^  (\w[\w ]*?)\s+\d+\.\d{3}   pipeline \d+\.\d{3} = ", out.stdout, re.M
    )
    assert multiples == ["ingress", "emission", "notification", "cancellation", "all notaflow"]
