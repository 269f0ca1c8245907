"""`notaflow account ...` and `notaflow operator ...` as an operator runs them (separate
processes on a real database): create, list without secrets, refusals, disable, rotate, a key
rotation followed by `reencrypt`, and operator tokens. No secret is ever printed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from notaflow.account_keys import SecretBox
from notaflow.accounts import Provider
from notaflow.store import create_engine
from notaflow.store.accounts import AccountStore
from notaflow.store.operators import OperatorStore
from testkit.processes import NOTAFLOW, ROOT

A, B = "51916585000125", "11222333000181"
TOKEN, TOKEN2 = "token-focus-cli-segredo-1", "token-focus-cli-segredo-2"
printed: list[str] = []


def notaflow(
    db: str, *args: str, keys: str = "", stdin: str = "", code: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOTAFLOW_DATABASE_URL": db, "NOTAFLOW_ACCOUNT_KEYS": keys}
    out = subprocess.run(
        [*NOTAFLOW, *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == code, out.stdout + out.stderr
    printed.extend((out.stdout, out.stderr))
    return out


@pytest.mark.slow
async def test_account_and_operator_verbs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    k1 = notaflow(db, "account", "new-key").stdout.strip()
    k2 = notaflow(db, "account", "new-key").stdout.strip()
    assert k1 != k2 and len(k1) == 44
    notaflow(db, "migrate", "--schema-only")
    notaflow(db, "tenant", "create", "acme", "--cnpj", A, "--cnpj", B)

    created = notaflow(db, "account", "create", "acme", A, "focus", "--environment", "producao",
                       "--secret-file", "-", keys=k1, stdin=TOKEN + "\n")  # fmt: skip
    assert json.loads(created.stdout)["has_secret"] is True
    notaflow(db, "account", "create", "acme", B, "emites", "--host", "127.0.0.1",
             "--port", "9101", keys=k1)  # fmt: skip
    lines = notaflow(db, "account", "list", "--tenant", "acme").stdout.splitlines()
    listed = [json.loads(line) for line in lines]
    assert [(a["cnpj"], a["provider"], a["has_secret"]) for a in listed] == [
        (B, "emites", False),
        (A, "focus", True),
    ]
    assert listed[0]["config"] == {"host": "127.0.0.1", "port": 9101}

    duplicate = notaflow(db, "account", "create", "acme", A, "focus", "--environment",
                         "producao", "--secret-file", "-", keys=k1, stdin="x", code=1)  # fmt: skip
    assert "already has a focus account" in duplicate.stderr
    bad = notaflow(db, "account", "create", "acme", B, "focus", "--environment", "prod",
                   "--secret-file", "-", keys=k1, stdin="x", code=1)  # fmt: skip
    assert "environment must be" in bad.stderr
    no_key = notaflow(db, "account", "create", "acme", B, "focus", "--environment", "producao",
                      "--secret-file", "-", stdin="x", code=2)  # fmt: skip
    assert "NOTAFLOW_ACCOUNT_KEYS" in no_key.stderr
    wrong_key = notaflow(db, "account", "list", keys="not-a-key", code=2)
    assert "not-a-key" not in wrong_key.stderr and "no Fernet key" in wrong_key.stderr

    assert notaflow(db, "account", "disable", "acme", A, "focus").stdout.strip() == "disabled"
    listed = [json.loads(x) for x in notaflow(db, "account", "list").stdout.splitlines()]
    assert [a["disabled"] for a in listed] == [False, True]
    notaflow(db, "account", "disable", "acme", A, "smtp", code=1)

    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN2 + "\n")
    notaflow(db, "account", "rotate", "acme", A, "focus", "--secret-file", str(secret_file),
             keys=k1)  # fmt: skip
    # Key rotation: k2 in front, k1 still there; reencrypt; then k1 can go.
    out = notaflow(db, "account", "reencrypt", keys=f"{k2},{k1}").stdout
    assert "1 secret(s) re-encrypted" in out
    engine = create_engine(db)
    try:
        account = await AccountStore(engine, SecretBox([k2])).get("acme", A, Provider.FOCUS)
        assert account is not None and account.secret == TOKEN2 and account.disabled
        operator = notaflow(db, "operator", "create", "--label", "ops").stdout.strip()
        assert await OperatorStore(engine).label_of(operator) == "ops"
        notaflow(db, "operator", "revoke", "--token-file", "-", stdin=operator)
        assert await OperatorStore(engine).label_of(operator) is None
    finally:
        await engine.dispose()
    everything = "".join(printed)
    assert TOKEN not in everything and TOKEN2 not in everything
