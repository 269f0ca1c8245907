"""`notaflow account ...` and `notaflow operator ...`: provider accounts per company and the
operator tokens of the admin API (issue 15), as operator verbs (they have --data-dir).

Secrets are never command-line arguments (shells keep history, `ps` shows arguments): they are
read from a file or from standard input (`--secret-file -`), and never printed. `list` shows
the accounts without their secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from notaflow.settings import Settings

COMMANDS = ("account", "operator")
T = TypeVar("T")

# The config options of every provider (notaflow.accounts.FIELDS), one flag each.
_CONFIG_FLAGS = ("environment", "host", "port", "pool", "timeout", "security", "username",
                 "sender", "sender_name")  # fmt: skip


def add_parsers(sub: Any, verb: argparse.ArgumentParser) -> None:
    account = sub.add_parser("account", help="provider accounts per company (Focus, Emites, SMTP)")
    asub = account.add_subparsers(dest="account_command", required=True)

    def key(p: argparse.ArgumentParser) -> None:
        p.add_argument("tenant")
        p.add_argument("cnpj", help="the company's CNPJ, or '*': every company of the tenant")
        p.add_argument("provider", choices=["focus", "emites", "smtp"])

    def config(p: argparse.ArgumentParser) -> None:
        for name in _CONFIG_FLAGS:
            p.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", metavar=name.upper())
        p.add_argument(
            "--secret-file",
            help="read the secret (focus: token, smtp: password) from this file; '-': stdin",
        )

    create = asub.add_parser("create", parents=[verb], help="create a company's account")
    key(create)
    config(create)
    rotate = asub.add_parser(
        "rotate", parents=[verb], help="replace an account's secret (and the config given)"
    )
    key(rotate)
    config(rotate)
    for name, text in (("disable", "refuse the company's new commands"), ("enable", "undo")):
        key(asub.add_parser(name, parents=[verb], help=text))
    listing = asub.add_parser("list", parents=[verb], help="the accounts, without secrets")
    listing.add_argument("--tenant")
    asub.add_parser(
        "reencrypt",
        parents=[verb],
        help="seal every secret with the newest NOTAFLOW_ACCOUNT_KEYS key (after a rotation)",
    )
    asub.add_parser("new-key", help="print a new key for NOTAFLOW_ACCOUNT_KEYS")

    operator = sub.add_parser("operator", help="operator tokens of the admin API")
    osub = operator.add_subparsers(dest="operator_command", required=True)
    create_op = osub.add_parser("create", parents=[verb], help="print a new operator token")
    create_op.add_argument("--label", default="operator")
    revoke = osub.add_parser("revoke", parents=[verb], help="revoke an operator token")
    revoke.add_argument("--token-file", required=True, help="file holding the token; '-': stdin")


def _read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return text.strip() or None


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, f"cfg_{name}")
        for name in _CONFIG_FLAGS
        if getattr(args, f"cfg_{name}") is not None
    }


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run an `account` or `operator` verb; refusals are one line on stderr and exit 1."""
    if args.command == "account" and args.account_command == "new-key":
        from notaflow.account_keys import new_key

        print(new_key())
        return 0
    from notaflow.account_keys import SecretUnreadable
    from notaflow.accounts import InvalidAccount
    from notaflow.store.accounts import AccountExists

    try:
        result = asyncio.run(_run(settings, args))
    except (InvalidAccount, AccountExists, SecretUnreadable) as exc:
        print(f"notaflow: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0


async def _with_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from notaflow.store import create_engine
    from notaflow.store.schema_check import require_current_schema

    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        await require_current_schema(engine)
        return await work(engine)
    finally:
        await engine.dispose()


async def _run(settings: Settings, args: argparse.Namespace) -> str | None:
    from notaflow.account_keys import SecretBox
    from notaflow.accounts import Provider
    from notaflow.store.accounts import AccountStore
    from notaflow.store.operators import OperatorStore

    keys = settings.account_keys
    box = SecretBox.from_setting(keys) if keys.strip() else None
    if args.command == "operator":
        if args.operator_command == "create":
            return await _with_engine(settings, lambda e: OperatorStore(e).create(args.label))
        token = _read_secret(args.token_file) or ""
        done = await _with_engine(settings, lambda e: OperatorStore(e).revoke(token))
        return "revoked" if done else "no such token (or already revoked)"

    async def work(engine: Any) -> str | None:
        store = AccountStore(engine, box)
        command = args.account_command
        if command == "list":
            return "\n".join(json.dumps(a.public()) for a in await store.list(args.tenant))
        if command == "reencrypt":
            resealed, current = await store.reencrypt()
            return f"{resealed} secret(s) re-encrypted with the newest key, {current} already were"
        provider = Provider(args.provider)
        if command == "create":
            account = await store.create(
                args.tenant, args.cnpj, provider, _config(args), _read_secret(args.secret_file)
            )
            return json.dumps(account.public())
        if command == "rotate":
            existing = await store.get(args.tenant, args.cnpj, provider)
            if existing is None:
                raise SystemExit(f"no {provider} account for {args.tenant} {args.cnpj}")
            config = {**existing.config, **_config(args)}
            secret = _read_secret(args.secret_file)
            await store.rotate(args.tenant, args.cnpj, provider, secret, config)
            return "rotated"
        change = store.disable if command == "disable" else store.enable
        if not await change(args.tenant, args.cnpj, provider):
            raise SystemExit(f"no {provider} account for {args.tenant} {args.cnpj}")
        return f"{command}d"

    return await _with_engine(settings, work)
