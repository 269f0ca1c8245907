"""Integration: the invoice read model, financeiro search, credentials and dunning claims on
SQLite and PostgreSQL (`database_url` runs each test on both)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow import billing as b
from notaflow.store import create_engine, migrate
from notaflow.store.invoices import (
    BillingConfigStore,
    DunningStore,
    FinanceiroQuery,
    InvoiceStore,
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database_url)
    await migrate(e)
    yield e
    await e.dispose()


def ev(eid: str, kind: str, at: str, seq: int | None = None, **inv: Any) -> b.InvoiceEvent:
    raw: dict[str, Any] = {
        "event_id": eid,
        "type": kind,
        "occurred_at": at,
        "invoice": {"uid": "F1", "valor": 100, "data_vencimento": "2026-03-10", **inv},
    }
    if seq is not None:
        raw["sequence"] = seq
    return b.normalize_event(raw)


async def test_events_out_of_order_and_duplicated_converge(engine: AsyncEngine) -> None:
    issued = ev("e1", "issued", "2026-03-01T10:00:00Z", linha_digitavel="123")
    updated = ev("e2", "updated", "2026-03-02T10:00:00Z", valor=120)
    paid = ev("e3", "paid", "2026-03-05T10:00:00Z", valor=120)
    final: list[tuple[str, Any, Any, Any]] = []
    orders = [[issued, updated, paid], [paid, issued, updated], [updated, paid, issued, paid]]
    orders += [random.Random(i).sample([issued, updated, paid] * 2, 6) for i in range(4)]
    for n, order in enumerate(orders):
        store = InvoiceStore(engine)
        tenant = f"t{n}"
        for e in order:
            await store.apply(tenant, e)
        inv = await store.get(tenant, "F1")
        assert inv is not None
        final.append((inv.state, inv.valor, inv.data_pagamento, inv.data.get("linha_digitavel")))
    assert set(final) == {("paid", 120, date(2026, 3, 5), "123")}


async def test_duplicate_is_harmless_and_late_issued_never_reopens(engine: AsyncEngine) -> None:
    store = InvoiceStore(engine)
    assert await store.apply("t", ev("e1", "issued", "2026-03-01T10:00:00Z"))
    assert not await store.apply("t", ev("e1", "issued", "2026-03-01T10:00:00Z"))
    assert await store.apply("t", ev("e3", "paid", "2026-03-05T10:00:00Z"))
    assert not await store.apply("t", ev("e9", "issued", "2026-03-09T10:00:00Z"))
    assert not await store.apply("t", ev("e8", "updated", "2026-03-09T10:00:00Z", state="late"))
    inv = await store.get("t", "F1")
    assert inv is not None and inv.state == "paid"
    assert await store.apply("t", ev("e4", "cancelled", "2026-03-06T10:00:00Z"))
    inv = await store.get("t", "F1")
    assert inv is not None and inv.state == "inactive"


async def test_sequence_orders_and_may_reopen(engine: AsyncEngine) -> None:
    store = InvoiceStore(engine)
    await store.apply("t", ev("e2", "paid", "2026-03-05T10:00:00Z", seq=2))
    assert not await store.apply("t", ev("e1", "issued", "2026-03-01T10:00:00Z", seq=1))
    assert await store.apply("t", ev("e3", "updated", "2026-03-04T10:00:00Z", seq=3, state="late"))
    inv = await store.get("t", "F1")
    assert inv is not None and inv.state == "late" and inv.position.seq == 3


async def test_concurrent_first_events(engine: AsyncEngine) -> None:
    store = InvoiceStore(engine)
    events = [ev(f"e{i}", "updated", f"2026-03-0{i}T10:00:00Z", valor=i) for i in range(1, 8)]
    await asyncio.gather(*(store.apply("t", e) for e in events))
    inv = await store.get("t", "F1")
    assert inv is not None and inv.valor == 7


def fin(**kw: Any) -> FinanceiroQuery:
    return FinanceiroQuery(**{"busca": "codigo_cliente", "termo": "1099", **kw})


async def test_financeiro_filters_order_limit(engine: AsyncEngine) -> None:
    store = InvoiceStore(engine)
    cust = {"codigo_cliente": 1099, "cpf_cnpj": "51916585000125", "id_cliente_servico": 7}
    specs = [("A", 30, "2026-01-10"), ("B", 10, "2026-02-10"), ("C", 20, "2026-03-10"),
             ("D", 40, "2026-04-10")]  # fmt: skip
    for uid, valor, due in specs:
        await store.apply(
            "t", ev(f"i{uid}", "issued", "2026-01-01T00:00:00Z", uid=uid, valor=valor,
                    data_vencimento=due, customer=cust)
        )  # fmt: skip
    await store.apply("t", ev("pA", "paid", "2026-01-09T00:00:00Z", uid="A", valor=30,
                              data_vencimento="2026-01-10", customer=cust))  # fmt: skip
    await store.apply("other", ev("x", "issued", "2026-01-01T00:00:00Z", uid="Z", customer=cust))
    await store.apply("t", ev("dr", "issued", "2026-01-01T00:00:00Z", uid="DR", state="draft",
                              customer=cust))  # fmt: skip

    async def uids(**kw: Any) -> list[str]:
        return [i.uid for i in await store.financeiro("t", fin(**kw))]

    assert await uids() == ["B", "C", "D"]
    assert await uids(apenas_pendente=False) == ["A", "B", "C", "D"]
    assert await uids(order_by="valor") == ["B", "C", "D"]
    assert await uids(order_by="valor", descending=True) == ["D", "C", "B"]
    assert await uids(descending=True, limit=2) == ["D", "C"]
    assert await uids(data_inicio=date(2026, 2, 11), data_fim=date(2026, 3, 10)) == ["C"]
    assert await uids(busca="cpf_cnpj", termo="51916585000125") == ["B", "C", "D"]
    assert await uids(busca="id_cliente_servico", termo="7") == ["B", "C", "D"]
    assert await uids(termo="1") == []


async def test_app_credentials_templates_policy(engine: AsyncEngine) -> None:
    cfg = BillingConfigStore(engine)
    app_id, secret = await cfg.create_app("acme")
    assert await cfg.tenant_for_app(app_id, secret) == "acme"
    assert await cfg.tenant_for_app(app_id, secret + "x") is None
    assert await cfg.tenant_for_app("nope", secret) is None
    assert (await cfg.template("acme", "send_invoice")) == b.DEFAULT_TEMPLATES["send_invoice"]
    await cfg.set_template("acme", "send_invoice", "S [facture-numero]", "<p>C</p>")
    await cfg.set_template("acme", "send_invoice", "S2 [facture-numero]", "<p>C2</p>")
    assert (await cfg.template("acme", "send_invoice")).subject == "S2 [facture-numero]"
    assert await cfg.policy("acme") == ((3, 10), None)
    await cfg.set_policy("acme", [5, 1])
    await cfg.set_policy("acme", issuer={"nome": "ACME"})
    assert await cfg.policy("acme") == ((1, 5), {"nome": "ACME"})


async def test_dunning_claims_are_exclusive(engine: AsyncEngine) -> None:
    d = DunningStore(engine)
    results = await asyncio.gather(*(d.claim("t", 1, 3) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    await d.release(1, 3)
    assert await d.claim("t", 1, 3)
    await d.published(1, 3)
    await d.release(1, 3)  # a published claim stays
    assert not await d.claim("t", 1, 3)


async def test_a_dunning_claim_left_unpublished_by_a_dead_run_is_taken_over(
    engine: AsyncEngine,
) -> None:
    d = DunningStore(engine)
    assert await d.claim("t", 2, 3)  # ... and the run dies before publishing
    assert not await d.claim("t", 2, 3), "fresh: its run may still be publishing"
    await asyncio.sleep(0.5)
    takers = await asyncio.gather(*(d.claim("t", 2, 3, stale_after=0.4) for _ in range(4)))
    assert sorted(takers) == [False, False, False, True], "one replica takes it over"
    await d.published(2, 3)
    await asyncio.sleep(0.5)
    assert not await d.claim("t", 2, 3, stale_after=0.4), "published claims are final"
