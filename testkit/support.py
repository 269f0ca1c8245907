"""Test infrastructure: real servers (Tansu broker, throwaway PostgreSQL, notaflow processes)
started on free loopback ports and always stopped."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow.launch.broker import free_port, port_open

ROOT = Path(__file__).resolve().parent.parent
NOTAFLOW = [sys.executable, "-m", "notaflow.launch.cli"]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    def ok() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ok, timeout, 0.1)


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


def pg_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class ThrowawayPostgres:
    """A private PostgreSQL cluster in a temporary directory, on a free port, trust auth on
    loopback. As root (CI), the server runs as the `postgres` system user, since PostgreSQL
    refuses to run as root."""

    def __init__(self) -> None:
        bindir = pg_binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="notaflow-pg-"))
        self.process: subprocess.Popen[bytes] | None = None

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def start(self) -> str:
        data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            self._as_owner(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._launch()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _launch(self) -> None:
        data = self.dir / "data"
        self.process = subprocess.Popen(
            self._as_owner(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.dir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=open(self.dir / "postgres.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), 30)
        time.sleep(0.3)

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are cut, as in a restart or a failover),
        keeping its data for `resume`."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(20)

    def resume(self) -> None:
        """Start the halted server again, same data, same port."""
        self._launch()

    def create_database(self, name: str) -> str:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # To the whole session: as root the server runs under runuser, which does not
            # pass SIGINT (PostgreSQL's fast shutdown) on.
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


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


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """A webhook endpoint on a real socket: records every request, answers from a script."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[Seen] = []
        self.script: deque[Reply] = deque()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def fail(self, times: int, status: int = 500) -> None:
        self.script.extend(Reply(status) for _ in range(times))

    def reset(self) -> None:
        self.seen.clear()
        self.script.clear()

    async def endpoint(self, request: Request) -> Response:
        self.seen.append(Seen(request.url.path, dict(request.headers), await request.body()))
        reply = self.script.popleft() if self.script else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return Response(status_code=reply.status, headers=reply.headers)


class ReceiverServer:
    """`Receiver` served by uvicorn in a thread (IPPROTO_TCP socket: TCP_NODELAY on)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.receiver = Receiver(self.sock.getsockname()[1])
        app = Starlette(
            routes=[Route("/{path:path}", self.receiver.endpoint, methods=["GET", "POST", "PUT"])]
        )
        config = uvicorn.Config(
            app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        return self.receiver

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


class ThreadedSmtpSink:
    """The project's SMTP sink (aiosmtpd) on its own event loop in a thread, so synchronous
    tests can count and script what a real SMTP server receives."""

    def __init__(self, outbox: Path | None = None) -> None:
        from notaflow.sandbox.smtp_sink import SmtpSink

        self.loop = asyncio.new_event_loop()
        self.sink = SmtpSink(outbox)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedSmtpSink:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sink.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return int(self.sink.port)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def received(self) -> list[Any]:
        return list(self.call(lambda: list(self.sink.received)))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
