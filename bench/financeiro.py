"""HubSoft financeiro on a tenant with a million invoices (SQLite).

Loads N invoices (default 1,000,000: 50,000 customers with 20 invoices each) into a fresh
SQLite database migrated to head, with one bulk `executemany` in a single transaction, then
times `InvoiceStore.financeiro` (the route's query: one customer, pending, due-date order,
limit 20) against a primary-key lookup of one invoice on the same engine.

    .venv/bin/python bench/financeiro.py [--invoices N] [--queries Q] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from notaflow.store import create_engine, migrate
from notaflow.store.billing_tables import invoices
from notaflow.store.invoices import FinanceiroQuery, InvoiceStore

TENANT = "bench"
PER_CUSTOMER = 20
STATES = ("waiting", "paid", "paid", "late")


def rows(n: int) -> Iterator[tuple[Any, ...]]:
    start = date(2024, 1, 10)
    now = "2026-01-01 00:00:00.000000"
    for i in range(1, n + 1):
        customer = (i - 1) // PER_CUSTOMER + 1
        due = start + timedelta(days=30 * ((i - 1) % PER_CUSTOMER))
        state = STATES[i % len(STATES)]
        paid = (due - timedelta(days=1)).isoformat() if state == "paid" else None
        valor = f"{(i % 300) + 49.9:.2f}"
        cpf = f"{customer:011d}"
        data = {
            "uid": str(i), "id_fatura": i, "valor": valor, "data_vencimento": due.isoformat(),
            "data_pagamento": paid, "state": state, "tipo_cobranca": "boleto_bancario",
            "nosso_numero": str(i), "detalhamento": {"descricao": "Plano", "valor": valor},
            "customer": {"cpf_cnpj": cpf, "codigo_cliente": str(customer),
                         "id_cliente_servico": str(customer)},
        }  # fmt: skip
        yield (
            i, TENANT, str(i), i, None, state, None, now, 1, f"e{i}", cpf, str(customer),
            str(customer), None, valor, due.isoformat(), paid, json.dumps(data), now,
        )  # fmt: skip


def load(path: Path, n: int) -> float:
    began = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    # Secondary indexes are built once after the load (sorted), not maintained row by row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='invoices'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    with conn:
        conn.executemany(
            "INSERT INTO invoices (id, tenant_id, uid, id_fatura, number, state, seq,"
            " occurred_at, rank, last_event_id, cpf_cnpj, codigo_cliente, id_cliente_servico,"
            " customer_email, valor, data_vencimento, data_pagamento, data, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(n),
        )
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - began


async def timed(fn: Callable[[], Awaitable[object]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):.3f} ms  p99 {p99:.3f} ms"


async def main(n: int, queries: int, db: Path) -> None:
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    print(f"loading {n:,} invoices into {db} ...")
    seconds = load(db, n)
    print(f"loaded in {seconds:.1f} s ({n / seconds:,.0f} rows/s)")
    engine = create_engine(url)
    store = InvoiceStore(engine)
    customers = max(1, n // PER_CUSTOMER)
    rnd = random.Random(1)

    async def financeiro() -> object:
        termo = f"{rnd.randint(1, customers):011d}"
        found = await store.financeiro(TENANT, FinanceiroQuery("cpf_cnpj", termo))
        assert found or n < PER_CUSTOMER
        return found

    async def financeiro_all_by_value() -> object:
        termo = str(rnd.randint(1, customers))
        q = FinanceiroQuery("codigo_cliente", termo, 50, False, "valor", descending=True)
        return await store.financeiro(TENANT, q)

    async def pk() -> object:
        async with engine.connect() as conn:
            stmt = sa.select(invoices).where(invoices.c.id == rnd.randint(1, n))
            return (await conn.execute(stmt)).first()

    for fn in (financeiro, pk):  # warm up the pool and the page cache
        await timed(fn, 50)
    base = await timed(pk, queries)
    fin = await timed(financeiro, queries)
    fin2 = await timed(financeiro_all_by_value, queries)
    async with engine.connect() as conn:
        plan = (
            await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT * FROM invoices WHERE tenant_id='bench' AND"
                " cpf_cnpj='00000000001' AND state IN ('waiting','late') ORDER BY"
                " data_vencimento LIMIT 20"
            )
        ).all()
    await engine.dispose()
    print(f"plan: {' | '.join(str(r[-1]) for r in plan)}")
    print(f"primary-key lookup (baseline):            {summary(base)}")
    print(f"financeiro cpf_cnpj, pending, due asc:     {summary(fin)}")
    print(f"financeiro codigo_cliente, all, valor desc: {summary(fin2)}")
    ratio = statistics.median(fin) / statistics.median(base)
    print(f"financeiro / baseline (p50): {ratio:.2f}x over {n:,} invoices, {queries} queries each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.invoices, args.queries, args.db or Path(tmp) / "financeiro.db"))
