"""Children that cannot outlive the process that started them, however it ends.

Two mechanisms, because either alone has a hole:

- the parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`, set in the child between fork and
  exec, so it also covers a binary such as the Tansu broker): the kernel sends SIGTERM to the
  child the moment its parent dies, SIGKILL of the parent included. It does not exist on macOS
  or the BSDs, and it is lost if the child changes its own credentials.
- a lifeline: a watchdog process (`python -m notaflow.launch.lifeline`) reads the PIDs of the
  children from a pipe whose only writer is the parent. When the parent dies the kernel closes
  its end, the watchdog reads end-of-file, sends SIGTERM to every child still registered and
  SIGKILL to those still there after a grace period. It works wherever pipes do, and bounds the
  time a child that ignores SIGTERM can linger.

A child the parent stops and reaps itself is released first, so the watchdog never signals a
PID the system may have handed to another process since.

Usage::

    with Lifeline(grace=10) as lifeline:
        proc = spawn_owned([...], lifeline=lifeline, stdout=..., ...)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1


def parent_death_hook(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that asks the kernel for `signum` when the parent dies, or None where
    the call does not exist. libc is loaded here, in the parent: between fork and exec only
    async-signal-safe work is allowed, so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent:
            os._exit(1)

    return hook


class Lifeline:
    """The parent's end of the pipe to a watchdog process; see the module docstring."""

    def __init__(self, grace: float = 10.0, python: str = sys.executable) -> None:
        read_end, write_end = os.pipe()
        try:
            self.watchdog = subprocess.Popen(
                [python, "-m", "notaflow.launch.lifeline", str(grace)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                # Its own session: a terminal's SIGHUP or a Ctrl-C of the parent's group must
                # not reach it, it is there for when the parent is gone.
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        self._pipe: IO[str] | None = os.fdopen(write_end, "w", buffering=1)

    def _send(self, line: str) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.write(line + "\n")
        except OSError:  # the watchdog died: the parent-death signal still holds on Linux
            self._pipe = None

    def adopt(self, pid: int) -> None:
        self._send(str(pid))

    def release(self, pid: int) -> None:
        self._send(f"-{pid}")

    def close(self, timeout: float = 5.0) -> None:
        """Every child was stopped and reaped: the watchdog finds nothing to do and exits."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None
        try:
            self.watchdog.wait(timeout)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            self.watchdog.wait()

    def __enter__(self) -> Lifeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_owned(
    args: Sequence[str], *, lifeline: Lifeline | None, die_with_parent: bool = True, **popen: Any
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` for a child that dies with us: the parent-death signal where the
    system has it, and registered with the lifeline's watchdog. Each child gets a session of
    its own so a Ctrl-C in the terminal reaches only the parent, which stops them in order."""
    hook = parent_death_hook() if die_with_parent else None
    proc = subprocess.Popen(list(args), preexec_fn=hook, start_new_session=True, **popen)
    if lifeline is not None:
        lifeline.adopt(proc.pid)
    return proc


# -- the watchdog -------------------------------------------------------------------------


def registered_pids(lines: Iterable[str]) -> set[int]:
    """Replays the parent's messages: `PID` adopts a child, `-PID` releases it."""
    pids: set[int] = set()
    for line in lines:
        text = line.strip()
        if not text:
            continue
        pid = int(text)
        if pid < 0:
            pids.discard(-pid)
        else:
            pids.add(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_orphans(pids: set[int], grace: float) -> None:
    """SIGTERM, then SIGKILL for what is still there after `grace` seconds. The orphans are
    the init process's children now, which reaps them, so `kill(pid, 0)` sees them go."""
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all(left, signal.SIGKILL)


def main(argv: Sequence[str]) -> int:
    grace = float(argv[0]) if argv else 10.0
    # The terminal may close under us (SIGHUP) and the parent's group may get a Ctrl-C: the
    # watchdog only ever ends on end-of-file.
    for name in ("SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    pids = registered_pids(sys.stdin)
    if pids:
        end_orphans(pids, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
