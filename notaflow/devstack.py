"""`notaflow dev`: the whole system on one machine, each part in its own process as in
production — embedded broker, Focus sandbox, ingress, consumers — sharing a SQLite file.

The supervisor owns every child: Ctrl-C (SIGINT) or SIGTERM stops them in reverse order
(ingress first, so nothing new is accepted; the broker last, so consumers can commit), and a
child that dies on its own brings the whole stack down with an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from notaflow.broker import EmbeddedBroker, free_port, port_open
from notaflow.consumer_names import CONSUMERS
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


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notaflow.cli", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
    from notaflow.processes import prepare
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
    from consumers.providers.focus import FocusClient

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

Try it:
  curl -u "{token}:" -X POST "{base}/v2/nfse?ref=demo$(date +%s)" -d '{DEMO_NOTE}'
  curl -u "{token}:" {base}/v2/nfse/REF

Ctrl-C stops everything.
"""


def run_dev(opts: DevOptions) -> int:
    data = Path(opts.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    for port, what in ((opts.port, "--port"), (opts.kafka_port, "--kafka-port")):
        if port_open("127.0.0.1", port):
            print(f"port {port} is in use: choose another with {what}", file=sys.stderr)
            return 2
    sandbox_port, smtp_port, emites_port = free_port(), free_port(), free_port()
    secret = secrets.token_urlsafe(24)
    settings = dev_settings(opts, data, sandbox_port, secret, smtp_port, emites_port)
    env = settings.env()

    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    broker = EmbeddedBroker(opts.kafka_port, log_file=data / "broker.log")
    children: list[Child] = []
    code = 0
    try:
        print(f"starting the embedded broker on 127.0.0.1:{opts.kafka_port} ...", flush=True)
        broker.start()
        token = asyncio.run(bootstrap(settings, data))
        children.append(
            Child(
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
                env,
                data / "sandbox-focus.log",
            )
        )
        children.append(
            Child(
                "smtp-sink",
                ["sandbox", "smtp", "--port", str(smtp_port), "--outbox", str(data / "outbox")],
                env,
                data / "smtp-sink.log",
            )
        )
        children.append(
            Child(
                "sandbox-emites",
                ["sandbox", "emites", "--port", str(emites_port), "--cnpj", DEMO_CNPJS[0]],
                env,
                data / "sandbox-emites.log",
            )
        )
        wait_ready(f"{settings.focus_base_url}/_sandbox/stats", children)
        asyncio.run(register_hook(settings))
        for name in CONSUMERS:
            children.append(
                Child(f"consumer-{name}", ["consume", name], env, data / f"consumer-{name}.log")
            )
        children.append(Child("ingress", ["ingress"], env, data / "ingress.log"))
        wait_ready(f"{settings.public_url}/readyz", children)
        print(banner(opts, settings, token, data), flush=True)
        while not stop_requested:
            dead = [c for c in children if not c.alive()]
            if dead or (broker.process is not None and broker.process.poll() is not None):
                names = ", ".join(c.name for c in dead) or "broker"
                print(f"{names} stopped unexpectedly; see {data}/*.log", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    except Exception as exc:  # start-up failures: say what and where, then clean up
        print(f"notaflow dev failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        print("stopping ...", flush=True)
        for child in reversed(children):
            child.stop()
        broker.stop()
        print("stopped.", flush=True)
    return code
