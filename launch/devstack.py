"""`notaflow dev`: the whole system on one machine, each part in its own process as in
production — embedded broker, Focus sandbox, ingress, consumers — sharing a SQLite file.

The supervisor owns every child:
- they die with it whatever ends it (`notaflow.launch.lifeline`: the parent-death signal and a
  watchdog on a pipe), so a closed terminal, a SIGKILL or a crash leaves nothing behind;
- Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) stop them in the order of their
  dependencies — ingress first, so nothing new is accepted; consumers; sandboxes; the broker
  last, so consumers can commit — each tier in parallel, the whole within `stop_timeout`,
  after which what is left is killed and named;
- a child that dies on its own brings the whole stack down with an error;
- it refuses to start over the leftovers of another run, naming them (`D/dev.json` lists the
  PIDs of the run that owns the data directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from notaflow.launch import envfile
from notaflow.launch.broker import EmbeddedBroker, free_port, port_open
from notaflow.launch.lifeline import Lifeline, spawn_owned
from notaflow.launch.ports import Holder, command_line, port_holders
from notaflow.launch.registry import CONSUMERS
from notaflow.settings import Settings

DEMO_TENANT = "demo"
# The valid CNPJs of seed 001's examples (the others fail their check digit).
DEMO_CNPJS = ["51916585000125", "07504505000132"]


@dataclass(frozen=True)
class DevOptions:
    port: int = 8000
    kafka_port: int = 9092
    data_dir: str = ".notaflow"
    sandbox_delay: float = 0.5
    host: str = "127.0.0.1"
    stop_timeout: float = 10.0


def say(text: str, err: bool = False) -> None:
    """Print, surviving a terminal that is gone (SIGHUP): the stop must go on regardless."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


class Child:
    """One process of the stack, started by `spawn` (which ties its life to ours)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        env: dict[str, str] | None = None,
        log: Path | None = None,
        python: bool = True,
    ) -> None:
        self.name = name
        self._log: IO[bytes] | None = open(log, "ab") if log else None  # noqa: SIM115
        argv = [sys.executable, "-m", "notaflow.launch.cli", *args] if python else list(args)
        self.process = spawn(
            argv,
            env={**os.environ, **(env or {})},
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._close_log()  # the child has its own copy

    @classmethod
    def of(cls, name: str, process: subprocess.Popen[bytes]) -> Child:
        """A process started elsewhere (the broker) under the same stop rules."""
        child = cls.__new__(cls)
        child.name, child._log, child.process = name, None, process
        return child

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()


# Each tier has until its cumulative share of the stop timeout; what is still running then is
# killed, so the next tier (what it depends on) stops without a client still hanging on it
# (uvicorn and aiosmtpd wait for their open connections). The last tenth is kept for the
# kills, reaping and our own exit, so the whole stop fits in the timeout as seen from outside.
# Measured on the loaded 2-core machine: the consumers stop within 2.5 s unless one has a
# backlog of its own (the notification consumer's e-mails), which no share would cover; a
# sandbox alone takes 1.5-2 s to stop (mostly the interpreter's teardown), hence its 3 s.
STOP_SHARES = (0.25, 0.5, 0.8, 0.9)


def stop_in_order(
    tiers: Sequence[Sequence[Child]],
    total: float,
    shares: Sequence[float] = STOP_SHARES,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Stops `tiers` in order, each in parallel, within `total` seconds; returns the names of
    the children that had to be killed."""
    start = clock()
    killed: list[str] = []
    for tier, share in zip(tiers, shares, strict=True):
        for child in tier:
            child.terminate()
        slot_end = start + total * share
        while any(c.alive() for c in tier) and clock() < slot_end:
            sleep(0.05)
        for child in tier:
            if child.alive():
                killed.append(child.name)
                child.kill()
        for child in tier:
            child.process.wait()
    return killed


# -- leftovers of an earlier run ------------------------------------------------------------

STATE_FILE = "dev.json"


def ours(command: str) -> bool:
    return "notaflow" in command or "tansu" in command


def previous_run(data: Path) -> dict[str, int]:
    """The processes of the run recorded in D/dev.json that still exist as what they were
    (PIDs get reused: a PID whose command line changed is not a leftover)."""
    try:
        state = json.loads((data / STATE_FILE).read_text())
        processes = state["processes"]
        recorded = {str(n): (int(p["pid"]), str(p["command"])) for n, p in processes.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {
        name: pid
        for name, (pid, command) in recorded.items()
        if pid != os.getpid() and command_line(pid) == command
    }


def dev_supervisor(holder: Holder) -> int | None:
    """The PID of the running `notaflow dev` this holder is a child of, if it is one."""
    return holder.parent if "notaflow.launch.cli dev" in holder.parent_command else None


def leftover_message(
    data: Path,
    previous: dict[str, int],
    busy: dict[int, tuple[str, list[Holder]]],
) -> str | None:
    """What keeps the stack from starting and the way out, or None (pure)."""
    if not previous and not busy:
        return None
    lines: list[str] = []
    names = {pid: name for name, pid in previous.items()}
    supervisors = {previous["supervisor"]} if "supervisor" in previous else set()
    if supervisors:
        lines.append(f"notaflow dev is already running from {data} (pid {previous['supervisor']}).")
    elif previous:
        lines.append(f"an earlier notaflow dev from {data} left processes running:")
        lines += [f"  {name}: pid {pid}" for name, pid in previous.items()]
    to_kill = set(previous.values())
    for port, (_option, holders) in sorted(busy.items()):
        if not holders:
            lines.append(f"port {port} is in use (by a process we may not inspect)")
        for holder in holders:
            supervisor = dev_supervisor(holder)
            if holder.pid in names:
                whose = f"notaflow dev's {names[holder.pid]}"
            elif supervisor is not None:
                whose = f"a process of the notaflow dev running as pid {supervisor}"
                supervisors.add(supervisor)
            elif ours(holder.command):
                whose = "a notaflow process (a leftover: its notaflow dev is gone)"
                to_kill.add(holder.pid)
            else:
                whose = "not a notaflow process"
            lines.append(f"port {port} is held by {holder.describe()}: {whose}")
    if supervisors:
        pids = " ".join(map(str, sorted(supervisors)))
        lines.append(f"Stop it with Ctrl-C in its terminal, or: kill {pids}")
    elif to_kill:
        lines.append(f"Stop them with: kill {' '.join(map(str, sorted(to_kill)))}")
    options = sorted({option for option, _ in busy.values()})
    if options:
        lines.append(f"Or choose other ports with {' / '.join(options)}.")
    return "\n".join(lines)


def find_leftovers(opts: DevOptions, data: Path) -> str | None:
    previous = previous_run(data)
    busy = {
        port: (option, port_holders(port))
        for port, option in ((opts.port, "--port"), (opts.kafka_port, "--kafka-port"))
        if port_open("127.0.0.1", port)
    }
    return leftover_message(data, previous, busy)


def write_state(data: Path, opts: DevOptions, children: Sequence[Child]) -> None:
    pids = {"supervisor": os.getpid(), **{c.name: c.process.pid for c in children}}
    state = {
        "processes": {
            name: {"pid": pid, "command": command_line(pid)} for name, pid in pids.items()
        },
        "ports": {"ingress": opts.port, "kafka": opts.kafka_port},
    }
    tmp = data / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, data / STATE_FILE)


def dev_settings(
    opts: DevOptions, data: Path, sandbox_port: int, secret: str, smtp_port: int, emites_port: int
) -> Settings:
    return Settings(
        kafka_bootstrap=f"127.0.0.1:{opts.kafka_port}",
        kafka_partitions=6,
        kafka_idempotence=False,  # Tansu refuses InitProducerId
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=500,
        database_url=f"sqlite+aiosqlite:///{(data / 'notaflow.db').resolve()}",
        host=opts.host,
        port=opts.port,
        public_url=f"http://{opts.host}:{opts.port}",
        focus_base_url=f"http://127.0.0.1:{sandbox_port}",
        focus_token="sandbox-token",
        focus_webhook_secret=secret,
        consumer_retry_base=0.5,
        consumer_retry_max=10.0,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        smtp_sender="nfse@notaflow.localhost",
        smtp_sender_name="notaflow dev",
        smtp_pause=0.2,
        # The dev hooks usually point at the developer's own machine.
        hooks_allow_private=True,
        health_port=0,  # several consumers on one machine
        billing_link_secret=secret,
        emites_host="127.0.0.1",
        emites_port=emites_port,
        emites_cnpj=DEMO_CNPJS[0],
    )


async def bootstrap(settings: Settings, data: Path) -> str:
    """Schema, topics, demo tenant. Reuses the token in D/demo-token across restarts."""
    from notaflow.launch.processes import prepare
    from notaflow.store import TenantStore, create_engine

    await prepare(settings)
    token_file = data / "demo-token"
    token = token_file.read_text().strip() if token_file.exists() else None
    engine = create_engine(settings.database_url)
    try:
        token = await TenantStore(engine).create(DEMO_TENANT, "Demo", DEMO_CNPJS, token)
    finally:
        await engine.dispose()
    token_file.write_text(token + "\n")
    return token


async def register_hook(settings: Settings) -> None:
    from notaflow.consumers.providers.focus import FocusClient

    client = FocusClient(settings.focus_base_url, settings.focus_token, 10)
    try:
        for event in ("nfse", "nfsen"):  # one callback route for both kinds
            await client.register_hook(
                f"{settings.public_url}/webhooks/focus/nfse",
                settings.focus_webhook_secret,
                settings.focus_webhook_header,
                event=event,
            )
    finally:
        await client.aclose()


def consumer_commands() -> list[tuple[str, list[str]]]:
    """(child name, `notaflow` arguments) of each consumer the stack runs: every registered one."""
    return [(f"consumer-{name}", ["consume", name]) for name in CONSUMERS]


def wait_ready(url: str, children: list[Child], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited during start-up (see its log)")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f}s")


# A note that the sandbox authorizes, as a one-line JSON for the banner's curl.
DEMO_NOTE = json.dumps(
    {
        "data_emissao": "2017-09-21T22:15:00",
        "prestador": {
            "cnpj": "51916585000125",
            "inscricao_municipal": "12345",
            "codigo_municipio": "3516200",
        },
        "tomador": {
            "cnpj": "07504505000132",
            "razao_social": "Acras Tecnologia da Informação LTDA",
            "email": "contato@focusnfe.com.br",
        },
        "servico": {
            "aliquota": 3,
            "discriminacao": "Nota fiscal referente a serviços prestados",
            "iss_retido": "false",
            "item_lista_servico": "0107",
            "valor_servicos": 1.0,
        },
    },
    ensure_ascii=False,
    separators=(",", ":"),
)


def banner(opts: DevOptions, settings: Settings, token: str, data: Path) -> str:
    base = settings.public_url
    default = data.resolve() == Path(envfile.DEFAULT_DATA_DIR).resolve()
    data_dir = "" if default else f" --data-dir {data}"
    verbs = (
        "notaflow tenant, dlq, reconcile, history ... from this directory"
        if default
        else f"notaflow tenant, dlq, reconcile, history ... given --data-dir {data}"
    )
    return f"""
notaflow dev is up.
  ingress      {base}   (GET {base}/readyz)
  kafka        {settings.kafka_bootstrap}   (embedded Tansu, memory storage: lost on exit)
  focus sandbox {settings.focus_base_url}
  emites       127.0.0.1:{settings.emites_port}   (NFC-e TCP sandbox for {settings.emites_cnpj})
  smtp sink    127.0.0.1:{settings.smtp_port}   (every e-mail lands in {data}/outbox/*.eml)
  database     {settings.database_url}
  logs         {data}/*.log
  demo token   {token}   (also in {data}/demo-token)
  settings     {data / envfile.FILE_NAME}   (read by the operator verbs: {verbs})

Try it:
  curl -u "{token}:" -X POST "{base}/v2/nfse?ref=demo$(date +%s)" -d '{DEMO_NOTE}'
  curl -u "{token}:" {base}/v2/nfse/REF
  notaflow tenant create acme --cnpj 07504505000132{data_dir}

Ctrl-C stops everything (so does closing this terminal), within {opts.stop_timeout:g}s.
"""


ENV_HEADER = """Settings of the running notaflow dev (written at its start; secrets: keep private).
Every operator verb reads this file when run with --data-dir {data}{default}.
NOTAFLOW_* variables of the verb's own environment win over it."""


def run_dev(opts: DevOptions) -> int:
    data = Path(opts.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    refusal = find_leftovers(opts, data)
    if refusal is not None:
        say(refusal, err=True)
        return 2
    sandbox_port, smtp_port, emites_port = free_port(), free_port(), free_port()
    secret = secrets.token_urlsafe(24)
    settings = dev_settings(opts, data, sandbox_port, secret, smtp_port, emites_port)
    env = settings.env()

    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # SIGHUP: the terminal was closed. Stop like Ctrl-C rather than die and orphan the stack.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), request_stop)

    lifeline = Lifeline(grace=opts.stop_timeout)

    def spawn(argv: Sequence[str], **popen: object) -> subprocess.Popen[bytes]:
        return spawn_owned(argv, lifeline=lifeline, **popen)  # type: ignore[arg-type]

    broker = EmbeddedBroker(opts.kafka_port, log_file=data / "broker.log", spawn=spawn)
    broker_child: list[Child] = []
    consumers: list[Child] = []
    sandboxes: list[Child] = []
    front: list[Child] = []
    code = 0
    try:
        say(f"starting the embedded broker on 127.0.0.1:{opts.kafka_port} ...")
        try:
            broker.start()
        finally:
            if broker.process is not None:
                broker_child.append(Child.of("broker", broker.process))
        token = asyncio.run(bootstrap(settings, data))

        def child(name: str, args: list[str]) -> Child:
            return Child(name, args, spawn, env, data / f"{name}.log")

        sandboxes.append(
            child(
                "sandbox-focus",
                [
                    "sandbox",
                    "focus",
                    "--port",
                    str(sandbox_port),
                    "--token",
                    settings.focus_token,
                    "--delay",
                    str(opts.sandbox_delay),
                ],
            )
        )
        sandboxes.append(
            child(
                "smtp-sink",
                ["sandbox", "smtp", "--port", str(smtp_port), "--outbox", str(data / "outbox")],
            )
        )
        sandboxes.append(
            child(
                "sandbox-emites",
                ["sandbox", "emites", "--port", str(emites_port), "--cnpj", DEMO_CNPJS[0]],
            )
        )
        wait_ready(f"{settings.focus_base_url}/_sandbox/stats", sandboxes)
        asyncio.run(register_hook(settings))
        for name, args in consumer_commands():
            consumers.append(child(name, args))
        front.append(child("ingress", ["ingress"]))
        everyone = [*broker_child, *sandboxes, *consumers, *front]
        write_state(data, opts, everyone)
        wait_ready(f"{settings.public_url}/readyz", everyone)
        envfile.write(
            data / envfile.FILE_NAME,
            env,
            ENV_HEADER.format(
                data=data,
                default=" (or without it, from the directory holding .notaflow/)"
                if data.resolve() == Path(envfile.DEFAULT_DATA_DIR).resolve()
                else "",
            ),
        )
        say(banner(opts, settings, token, data))
        while not stop_requested:
            dead = [c for c in everyone if not c.alive()]
            if dead:
                names = ", ".join(c.name for c in dead)
                say(f"{names} stopped unexpectedly; see {data}/*.log", err=True)
                code = 1
                break
            time.sleep(0.2)
    except Exception as exc:  # start-up failures: say what and where, then clean up
        say(f"notaflow dev failed: {exc}", err=True)
        code = 1
    finally:
        say(f"stopping (at most {opts.stop_timeout:g}s) ...")
        began = time.monotonic()
        killed = stop_in_order([front, consumers, sandboxes, broker_child], opts.stop_timeout)
        for child_ in (*front, *consumers, *sandboxes, *broker_child):
            lifeline.release(child_.process.pid)
        lifeline.close()
        took = time.monotonic() - began
        if killed:
            say(
                "killed (did not stop on SIGTERM within its share of "
                f"{opts.stop_timeout:g}s): " + ", ".join(killed),
                err=True,
            )
        with contextlib.suppress(OSError):
            (data / STATE_FILE).unlink()
        say(f"stopped in {took:.1f}s.")
    return code
