"""`bin/bench hooks` run tiny, so it cannot rot: three senders against its TLS receiver, and
the figure that moved holding: after the first burst, the production transport opens no
connection again, where a transport held to 8 per receiver opens one for most hooks."""

from __future__ import annotations

import re
import subprocess
import sys

from testkit.processes import ROOT


def test_hooks_bench_runs_tiny_and_keeps_the_bursts_connections() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hooks.py"), "--bursts", "3", "--size", "32",
         "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = {
        name: float(opened)
        for name, opened in re.findall(
            r"^(notaflow, 8 kept|notaflow|baseline)\s+\d+\s+\d+\s+(\d+\.\d+)$",
            out.stdout,
            re.MULTILINE,
        )
    }
    assert set(rows) == {"notaflow", "notaflow, 8 kept", "baseline"}, out.stdout
    assert rows["notaflow"] == 0.0, out.stdout
    assert rows["notaflow, 8 kept"] > 0.5, out.stdout  # 24 of every 32 opened again
    assert "CPU per hook notaflow / baseline: best" in out.stdout, out.stdout
