"""Operators set a tenant's invoice e-mail templates and dunning policy from the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from notaflow.store import create_engine
from notaflow.store.invoices import BillingConfigStore
from testkit.processes import NOTAFLOW, ROOT


def notaflow(db: str, *args: str) -> str:
    env = {**os.environ, "NOTAFLOW_DATABASE_URL": db}
    out = subprocess.run(
        [*NOTAFLOW, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_template_and_policy_verbs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    notaflow(db, "migrate", "--schema-only")
    notaflow(db, "tenant", "create", "acme", "--cnpj", "51916585000125")
    content = "<p>Olá [contact-nom], a fatura vence em [facture-date].</p>"
    subject = "Lembrete: fatura [facture-numero]"
    notaflow(db, "billing-template", "acme", "dunning_invoice", "--subject", subject,
             "--content", content)  # fmt: skip
    notaflow(db, "billing-policy", "acme", "--steps", "5,15", "--issuer", '{"nome": "ACME"}')
    engine = create_engine(db)
    try:
        config = BillingConfigStore(engine)
        template = await config.template("acme", "dunning_invoice")
        steps, issuer = await config.policy("acme")
    finally:
        await engine.dispose()
    assert template.subject == "Lembrete: fatura [facture-numero]"
    assert "[contact-nom]" in template.content
    assert tuple(steps) == (5, 15) and issuer == {"nome": "ACME"}
