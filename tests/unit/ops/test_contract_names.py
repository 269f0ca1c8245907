"""The Kafka contract's names (topics, CloudEvents types and sources) are spelled in one module,
notaflow/topics.py: a product module that writes one itself has forked the contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notaflow import topics as t

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("notaflow", "launch", "ingress", "consumers", "sandbox")
CONTRACT = ROOT / "notaflow" / "topics.py"


def contract_literals() -> set[str]:
    """Every name the contract module defines: types, sources and topic suffixes (but the
    one-word suffixes, `lifecycle` and `replies`, which are ordinary words elsewhere)."""
    names = {v for k, v in vars(t).items() if k.isupper() and isinstance(v, str)}
    return {n for n in names | set(t.Topics(prefix="").all()) if not n.isalpha()}


def spelled_elsewhere() -> list[str]:
    names = contract_literals()
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == CONTRACT:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for literal in re.findall(r'"([^"\\]+)"', line):
                    if literal in names:
                        found.append(f"{path.relative_to(ROOT)}:{n}: {literal!r}")
    return found


def test_the_contract_knows_its_names() -> None:
    names = contract_literals()
    assert {"billing.events", "billing.commands", t.INVOICE_MAIL, t.SOURCE_EMISSION} <= names


@pytest.mark.parametrize("folder", PRODUCT)
def test_the_product_folders_exist(folder: str) -> None:
    assert (ROOT / folder / "__init__.py").is_file()  # or the scan below would see nothing


def test_no_product_module_spells_a_topic_type_or_source_itself() -> None:
    assert spelled_elsewhere() == []
