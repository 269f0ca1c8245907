"""`bin/bench floor` run tiny, so it cannot rot: every step measured against the real peers
(the embedded broker, aiosmtpd, a bare Starlette app, the stand-in), each process's floor and
their sum printed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from testkit.processes import ROOT


@pytest.mark.parametrize("rate", ["0", "50"])
def test_floor_bench_runs_tiny_and_prints_every_step(rate: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floor.py"), "--ops", "60", "--rounds", "1",
         "--concurrency", "4", "--rate", rate],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    steps = re.findall(r"^  ([a-z]+ [a-z]+)\s+(\d+\.\d) / (\d+\.\d)\s+(\d+)", out.stdout, re.M)
    assert [name for name, *_ in steps] == [
        "http served", "http exchange", "kafka produce", "kafka read", "sqlite write",
        "sqlite read", "smtp send",
    ], out.stdout  # fmt: skip
    floors = dict(re.findall(r"^  (\w[\w ]*?)\s+(\d+\.\d{3})", out.stdout, re.M))
    assert set(floors) == {"ingress", "emission", "notification", "cancellation", "all notaflow"}
    parts = sum(float(v) for k, v in floors.items() if k != "all notaflow")
    assert abs(parts - float(floors["all notaflow"])) < 0.005, out.stdout
    assert float(floors["all notaflow"]) > 0, out.stdout
    assert re.search(r"one event-loop wake-up, asyncio.sleep\(0.001\): \d+\.\d us", out.stdout)
