"""notaflow's CLI as a child process: the command, the checkout it runs in, and `Proc` (its
output in a log file, stopped by SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTAFLOW = [sys.executable, "-m", "notaflow.launch.cli"]


class Proc:
    """A notaflow CLI process with its output in a log file, stopped by SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._out = open(self.log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*NOTAFLOW, *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")
