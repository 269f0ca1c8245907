"""notaflow in production form: each process separately started, configured by NOTAFLOW_*."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from notaflow.launch.broker import free_port
from testkit.processes import NOTAFLOW, ROOT, Proc
from testkit.waiting import wait_for, wait_http

DEMO_CNPJS = ["51916585000125", "07504505000132"]


class Stack:
    """notaflow in production form: `notaflow sandbox focus`, `notaflow migrate`,
    `notaflow tenant create`, `notaflow focus-hook`, `notaflow consume emission` and
    `notaflow ingress`, each a separate process configured only by NOTAFLOW_* variables."""

    def __init__(
        self,
        settings: Any,
        log_dir: Path,
        sandbox_delay: float = 0.2,
        consumers: tuple[str, ...] = ("emission",),
    ) -> None:
        self.consumers = consumers
        self.log_dir = log_dir
        self.sandbox_port = free_port()
        self.port = free_port()
        self.settings = settings.replace(
            health_port=0,
            port=self.port,
            public_url=f"http://127.0.0.1:{self.port}",
            focus_base_url=f"http://127.0.0.1:{self.sandbox_port}",
            focus_token="sandbox-token",
            focus_webhook_secret="s3cret-" + os.urandom(6).hex(),
        )
        self.env = self.settings.env()
        self.sandbox_delay = sandbox_delay
        self.procs: list[Proc] = []
        self.token = ""

    @property
    def base(self) -> str:
        return self.settings.public_url

    @property
    def sandbox(self) -> str:
        return self.settings.focus_base_url

    def focus_stats(self) -> dict[str, Any]:
        """The Focus sandbox's counters (`/_sandbox/stats`): POSTs, GETs, downloads and
        credits per token, callbacks sent."""
        stats: dict[str, Any] = httpx.get(f"{self.sandbox}/_sandbox/stats", timeout=30).json()
        return stats

    def run(self, *args: str) -> str:
        out = subprocess.run(
            [*NOTAFLOW, *args],
            env={**os.environ, **self.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"notaflow {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return out.stdout.strip()

    def start(self) -> Stack:
        sandbox = self.spawn(
            [
                "sandbox",
                "focus",
                "--port",
                str(self.sandbox_port),
                "--token",
                "sandbox-token",
                "--delay",
                str(self.sandbox_delay),
            ],
            "sandbox",
        )
        self.run("migrate")
        self.token = self.run(
            "tenant", "create", "acme", "--name", "ACME", *[f"--cnpj={c}" for c in DEMO_CNPJS]
        ).splitlines()[-1]
        wait_http(f"{self.sandbox}/_sandbox/stats", proc=sandbox.process)
        self.run("focus-hook", f"{self.base}/webhooks/focus/nfse")
        for name in self.consumers:
            self.spawn(["consume", name], f"consumer-{name}")
        ingress = self.spawn(["ingress"], "ingress")
        wait_http(f"{self.base}/readyz", proc=ingress.process)
        return self

    def spawn(self, args: list[str], name: str) -> Proc:
        proc = Proc(args, self.env, self.log_dir, name)
        self.procs.append(proc)
        return proc

    def members(self, consumer: str) -> list[Proc]:
        """The processes of one consumer group (`consume <consumer>`), as spawned and named
        (`consumer-<consumer>`, `consumer-<consumer>-2`, ...), running or ended."""
        return [p for p in self.procs if p.name.startswith(f"consumer-{consumer}")]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.procs)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, auth=(self.token, ""), timeout=10)

    def wait_status(self, ref: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        with self.client() as c:

            def done() -> dict[str, Any] | None:
                body: dict[str, Any] = c.get(f"/v2/nfse/{ref}").json()
                return body if body.get("status") in statuses else None

            try:
                result: dict[str, Any] = wait_for(done, timeout, 0.1)
            except TimeoutError as exc:
                raise AssertionError(f"{ref} never reached {statuses}\n{self.logs()}") from exc
            return result
