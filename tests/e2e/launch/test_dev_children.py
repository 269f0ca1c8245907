"""Each of the two mechanisms that tie a child to its parent (`notaflow.launch.lifeline`), alone,
with real processes: the parent is SIGKILLed (no handler, no `finally`) and its child must go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testkit.processes import ROOT
from testkit.waiting import wait_for

# A parent that starts one child as `notaflow dev` does, prints the child's PID and waits.
PARENT = textwrap.dedent(
    """
    import sys, time
    from notaflow.launch.lifeline import Lifeline, spawn_owned
    mode, child = sys.argv[1], sys.argv[2:]
    lifeline = Lifeline(grace=1.0) if mode in ("lifeline", "both") else None
    proc = spawn_owned(child, lifeline=lifeline, die_with_parent=mode in ("pdeathsig", "both"))
    print(proc.pid, lifeline.watchdog.pid if lifeline else 0, flush=True)
    time.sleep(600)
    """
)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Ignores SIGTERM: only the watchdog's SIGKILL after its grace ends it.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _kill_parent_and_time_child(mode: str, child: list[str], timeout: float) -> float:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode, *child],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    child_pid, watchdog_pid = map(int, parent.stdout.readline().split())
    try:
        time.sleep(0.3)
        assert not _gone(child_pid)
        parent.kill()
        parent.wait()
        began = time.monotonic()
        wait_for(lambda: _gone(child_pid), timeout, 0.02)
        took = time.monotonic() - began
        if watchdog_pid:
            wait_for(lambda: _gone(watchdog_pid), 5, 0.02)
        return took
    finally:
        for pid in (child_pid, watchdog_pid):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_parent_death_signal_alone_ends_the_child() -> None:
    assert _kill_parent_and_time_child("pdeathsig", SLEEPER, 5) < 1.0


def test_the_lifeline_alone_ends_the_child() -> None:
    assert _kill_parent_and_time_child("lifeline", SLEEPER, 5) < 1.0


def test_the_lifeline_kills_a_child_that_ignores_sigterm_after_its_grace() -> None:
    took = _kill_parent_and_time_child("lifeline", STUBBORN, 5)
    assert 0.9 < took < 3.0


def test_a_child_released_before_the_parent_dies_is_left_alone() -> None:
    code = textwrap.dedent(
        """
        import subprocess, sys
        from notaflow.launch.lifeline import Lifeline, spawn_owned
        lifeline = Lifeline(grace=1.0)
        proc = spawn_owned(sys.argv[1:], lifeline=lifeline, die_with_parent=False)
        lifeline.release(proc.pid)
        print(proc.pid, lifeline.watchdog.pid, flush=True)
        import time; time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *SLEEPER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    child_pid, watchdog_pid = map(int, parent.stdout.readline().split())
    try:
        parent.kill()
        parent.wait()
        wait_for(lambda: _gone(watchdog_pid), 5, 0.02)
        assert not _gone(child_pid)  # released: the watchdog did not touch it
    finally:
        os.kill(child_pid, signal.SIGKILL)
