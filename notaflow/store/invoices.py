"""Billing state: the invoice read model (applied event by event, idempotent and ordered by the
rules of `notaflow.billing`), the HubSoft financeiro search, Wuro app credentials, templates,
tenant policies and dunning claims."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.billing import (
    DEFAULT_DUNNING_STEPS,
    DEFAULT_TEMPLATES,
    OPEN_STATES,
    InvoiceEvent,
    Links,
    Position,
    RenderedMail,
    Template,
    merge,
    parse_steps,
    render_mail,
    should_apply,
    template_variables,
)
from notaflow.store.billing_tables import (
    billing_credentials,
    billing_policies,
    billing_templates,
    dunning_claims,
    invoices,
)
from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now
from notaflow.store.deliveries import PENDING, Delivery, DeliveryStore
from notaflow.store.tables import deliveries, tenant_companies, tenants

SEARCH_COLUMNS = {
    "cpf_cnpj": invoices.c.cpf_cnpj,
    "codigo_cliente": invoices.c.codigo_cliente,
    "id_cliente_servico": invoices.c.id_cliente_servico,
}


class _Conflict(Exception):
    pass


@dataclass(frozen=True)
class Invoice:
    id: int
    tenant_id: str
    uid: str
    state: str
    valor: Decimal
    data_vencimento: date
    data_pagamento: date | None
    data: dict[str, Any]
    position: Position

    @property
    def id_fatura(self) -> int:
        value = self.data.get("id_fatura")
        return int(value) if value is not None else self.id


def _invoice(row: sa.Row[Any]) -> Invoice:
    m = row._mapping
    return Invoice(
        id=m["id"],
        tenant_id=m["tenant_id"],
        uid=m["uid"],
        state=m["state"],
        valor=Decimal(m["valor"]),
        data_vencimento=m["data_vencimento"],
        data_pagamento=m["data_pagamento"],
        data=m["data"],
        position=Position(m["state"], m["seq"], _utc(m["occurred_at"])),
    )


@dataclass(frozen=True)
class FinanceiroQuery:
    busca: str
    termo: str
    limit: int = 20
    apenas_pendente: bool = True
    order_by: str = "data_vencimento"
    descending: bool = False
    data_inicio: date | None = None
    data_fim: date | None = None


def row_values(tenant: str, state: str, data: dict[str, Any]) -> dict[str, Any]:
    """The indexed columns of an invoice, taken from its normalized fields."""
    customer = data.get("customer") or {}
    pagamento = data.get("data_pagamento")
    return {
        "tenant_id": tenant,
        "uid": data["uid"],
        "id_fatura": data.get("id_fatura"),
        "number": data.get("number"),
        "state": state,
        "cpf_cnpj": customer.get("cpf_cnpj"),
        "codigo_cliente": customer.get("codigo_cliente"),
        "id_cliente_servico": customer.get("id_cliente_servico"),
        "customer_email": customer.get("email"),
        "valor": Decimal(data["valor"]),
        "data_vencimento": date.fromisoformat(data["data_vencimento"]),
        "data_pagamento": date.fromisoformat(pagamento) if pagamento else None,
    }


class InvoiceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def apply(self, tenant: str, event: InvoiceEvent) -> bool:
        """Apply one event; True when it changed the invoice's state (False: a duplicate or an
        event overtaken by a newer one, whose missing fields were still filled in)."""
        for _ in range(20):
            try:
                return await self._apply(tenant, event)
            except (IntegrityError, _Conflict):
                continue  # a concurrent event changed the row first: compare against it anew
        raise RuntimeError(f"could not apply invoice event {event.event_id}")

    async def _apply(self, tenant: str, event: InvoiceEvent) -> bool:
        now = _now()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(invoices)
                    .where(invoices.c.tenant_id == tenant, invoices.c.uid == event.uid)
                    .with_for_update()
                )
            ).first()
            if row is None:
                pos = event.position(None)
                data = {**event.invoice, "state": pos.state}
                await conn.execute(
                    invoices.insert().values(
                        **row_values(tenant, pos.state, data),
                        seq=pos.seq,
                        occurred_at=pos.occurred_at,
                        rank=pos.rank,
                        last_event_id=event.event_id,
                        data=data,
                        updated_at=now,
                    )
                )
                return True
            current = _invoice(row)
            incoming = event.position(current.state)
            wins = should_apply(current.position, incoming)
            data = merge(current.data, event.invoice, wins)
            state = incoming.state if wins else current.state
            data["state"] = state
            if not wins and data == current.data:
                return False
            values = row_values(tenant, state, data)
            if wins:
                values.update(
                    seq=incoming.seq if incoming.seq is not None else current.position.seq,
                    occurred_at=incoming.occurred_at,
                    rank=incoming.rank,
                    last_event_id=event.event_id,
                )
            # Compare-and-set: SQLite takes no row lock on the SELECT above.
            done = await conn.execute(
                invoices.update()
                .where(
                    invoices.c.id == current.id,
                    invoices.c.last_event_id == row.last_event_id,
                    invoices.c.updated_at == row.updated_at,
                )
                .values(**values, data=data, updated_at=now)
            )
            if done.rowcount != 1:
                raise _Conflict
            return wins

    async def get(self, tenant: str, uid: str) -> Invoice | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(invoices).where(invoices.c.tenant_id == tenant, invoices.c.uid == uid)
                )
            ).first()
        return _invoice(row) if row is not None else None

    async def by_id(self, invoice_id: int) -> Invoice | None:
        async with self._engine.connect() as conn:
            stmt = sa.select(invoices).where(invoices.c.id == invoice_id)
            row = (await conn.execute(stmt)).first()
        return _invoice(row) if row is not None else None

    async def financeiro(self, tenant: str, q: FinanceiroQuery) -> list[Invoice]:
        """HubSoft's search: one customer's invoices (never drafts or cancelled ones), open only
        or open and paid, within due dates, ordered, limited. Runs on the (tenant, key, due)
        indexes: a customer's few invoices, whatever the tenant's total."""
        column = SEARCH_COLUMNS[q.busca]
        states = OPEN_STATES if q.apenas_pendente else (*OPEN_STATES, "paid")
        stmt = sa.select(invoices).where(
            invoices.c.tenant_id == tenant, column == q.termo, invoices.c.state.in_(states)
        )
        if q.data_inicio is not None:
            stmt = stmt.where(invoices.c.data_vencimento >= q.data_inicio)
        if q.data_fim is not None:
            stmt = stmt.where(invoices.c.data_vencimento <= q.data_fim)
        key = invoices.c.valor if q.order_by == "valor" else invoices.c.data_vencimento
        order = [key.desc(), invoices.c.id.desc()] if q.descending else [key.asc(), invoices.c.id]
        stmt = stmt.order_by(*order).limit(q.limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_invoice(r) for r in rows]

    async def overdue(self, before: date, batch: int = 500) -> AsyncIterator[Invoice]:
        """Open invoices due before `before`, in id order, read in batches."""
        last = 0
        while True:
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(invoices)
                        .where(
                            invoices.c.state.in_(OPEN_STATES),
                            invoices.c.data_vencimento < before,
                            invoices.c.id > last,
                        )
                        .order_by(invoices.c.id)
                        .limit(batch)
                    )
                ).all()
            if not rows:
                return
            for row in rows:
                yield _invoice(row)
            last = rows[-1].id


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class BillingConfigStore:
    """Per-tenant billing configuration: Wuro app credentials, templates, dunning policy."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create_app(self, tenant: str) -> tuple[str, str]:
        """A new (X-APP-ID, X-APP-SECRET) for `tenant`; the secret is shown only now."""
        app_id = "app_" + secrets.token_hex(12)
        secret = secrets.token_urlsafe(32)
        async with self._engine.begin() as conn:
            await conn.execute(
                billing_credentials.insert().values(
                    app_id=app_id, tenant_id=tenant, secret_hash=hash_secret(secret),
                    created_at=_now(),
                )
            )  # fmt: skip
        return app_id, secret

    async def tenant_for_app(self, app_id: str, secret: str) -> str | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        billing_credentials.c.tenant_id, billing_credentials.c.secret_hash
                    ).where(
                        billing_credentials.c.app_id == app_id,
                        billing_credentials.c.revoked_at.is_(None),
                    )
                )
            ).first()
        # Hash anyway when the app is unknown, so timing does not tell which ids exist.
        expected = row.secret_hash if row is not None else "0" * 64
        if not hmac.compare_digest(hash_secret(secret), expected) or row is None:
            return None
        return str(row.tenant_id)

    async def set_template(self, tenant: str, action: str, subject: str, content: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                billing_templates.delete().where(
                    billing_templates.c.tenant_id == tenant, billing_templates.c.action == action
                )
            )
            await conn.execute(
                billing_templates.insert().values(
                    tenant_id=tenant, action=action, subject=subject, content=content,
                    updated_at=_now(),
                )
            )  # fmt: skip

    async def template(self, tenant: str, action: str) -> Template:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(billing_templates).where(
                        billing_templates.c.tenant_id == tenant,
                        billing_templates.c.action == action,
                    )
                )
            ).first()
        if row is None:
            return DEFAULT_TEMPLATES[action]
        return Template(subject=row.subject, content=row.content)

    async def set_policy(
        self, tenant: str, steps: list[int] | None = None, issuer: dict[str, Any] | None = None
    ) -> None:
        current_steps, current_issuer = await self.policy(tenant)
        values = {
            "dunning_steps": list(parse_steps(steps) if steps is not None else current_steps),
            "issuer": issuer if issuer is not None else current_issuer,
            "updated_at": _now(),
        }
        async with self._engine.begin() as conn:
            done = await conn.execute(
                billing_policies.update()
                .where(billing_policies.c.tenant_id == tenant)
                .values(**values)
            )
            if done.rowcount == 0:
                await conn.execute(billing_policies.insert().values(tenant_id=tenant, **values))

    async def policy(self, tenant: str) -> tuple[tuple[int, ...], dict[str, Any] | None]:
        """(dunning steps, issuer) of a tenant: days after due (default 3 and 10) and the
        company shown on its invoices when the events carry none."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(billing_policies).where(billing_policies.c.tenant_id == tenant)
                )
            ).first()
        if row is None:
            return DEFAULT_DUNNING_STEPS, None
        return parse_steps(row.dunning_steps), row.issuer


async def issuer_for(
    engine: AsyncEngine, tenant: str, data: dict[str, Any], policy_issuer: dict[str, Any] | None
) -> dict[str, Any]:
    """Who bills: the invoice's own issuer, else the tenant's policy, else the tenant's name and
    first registered CNPJ."""
    if data.get("issuer"):
        return dict(data["issuer"])
    if policy_issuer:
        return dict(policy_issuer)
    async with engine.connect() as conn:
        name = await conn.scalar(sa.select(tenants.c.name).where(tenants.c.id == tenant))
        cnpj = await conn.scalar(
            sa.select(tenant_companies.c.cnpj)
            .where(tenant_companies.c.tenant_id == tenant)
            .order_by(tenant_companies.c.cnpj)
            .limit(1)
        )
    return {"nome": name or tenant, **({"cnpj": cnpj} if cnpj else {})}


async def compose_mail(
    engine: AsyncEngine,
    config: BillingConfigStore,
    links: Links,
    invoice: Invoice,
    action: str,
    subject: str | None = None,
    content: str | None = None,
) -> RenderedMail:
    """The e-mail of `action` for `invoice`: the tenant's template (or the default), links signed
    for this invoice. Shared by the Wuro route and the dunning job."""
    template = await config.template(invoice.tenant_id, action)
    _steps, policy_issuer = await config.policy(invoice.tenant_id)
    issuer = await issuer_for(engine, invoice.tenant_id, invoice.data, policy_issuer)
    html_url, pdf_url = links.for_invoice(invoice.tenant_id, invoice.uid)
    variables = template_variables(invoice.data, str(issuer.get("nome") or ""), html_url, pdf_url)
    return render_mail(template, variables, subject, content)


class DunningStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, tenant: str, invoice_id: int, step: int, stale_after: float = 600.0
    ) -> bool:
        """Take (invoice, step) for this run; False when another run (or an earlier one) has.

        A claim never marked published and older than `stale_after` seconds belongs to a run
        that died between claiming and publishing: it is taken over, so that reminder is not
        lost. Only one taker wins (the update re-checks the age), and the reminder's event id
        is deterministic, so even a slow original run publishing late sends one e-mail."""
        now = _now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    dunning_claims.insert().values(
                        invoice_id=invoice_id, step=step, tenant_id=tenant, claimed_at=now
                    )
                )
        except IntegrityError:
            async with self._engine.begin() as conn:
                taken = await conn.execute(
                    dunning_claims.update()
                    .where(
                        dunning_claims.c.invoice_id == invoice_id,
                        dunning_claims.c.step == step,
                        dunning_claims.c.published_at.is_(None),
                        dunning_claims.c.claimed_at < now - timedelta(seconds=stale_after),
                    )
                    .values(claimed_at=now)
                )
            return bool(taken.rowcount)
        return True

    async def published(self, invoice_id: int, step: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                dunning_claims.update()
                .where(dunning_claims.c.invoice_id == invoice_id, dunning_claims.c.step == step)
                .values(published_at=_now())
            )

    async def release(self, invoice_id: int, step: int) -> None:
        """Give a claim back when its reminder could not be published (Kafka down)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                dunning_claims.delete().where(
                    dunning_claims.c.invoice_id == invoice_id,
                    dunning_claims.c.step == step,
                    dunning_claims.c.published_at.is_(None),
                )
            )


class InvoiceDeliveryStore(DeliveryStore):
    """Invoice e-mails as rows of the notification `deliveries` table (dedupe key, attempts),
    but never scheduled (`next_attempt_at` NULL): the notification consumer's retry loop
    attempts every due row as an NFS-e message, so these are retried by redelivery of their
    Kafka command instead."""

    CHANNEL = "invoice-email"

    async def hold(
        self, tenant_id: str, invoice_id: int, dedupe_key: str, target: str,
        payload: dict[str, Any],
    ) -> Delivery:  # fmt: skip
        now = _now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    deliveries.insert().values(
                        tenant_id=tenant_id, document_id=invoice_id, channel=self.CHANNEL,
                        dedupe_key=dedupe_key, target=target, payload=payload, status=PENDING,
                        attempts=0, next_attempt_at=None, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
        except IntegrityError:
            pass  # a redelivered command
        found = await self.by_key(dedupe_key)
        assert found is not None
        return found

    async def reopen(self, delivery_id: int) -> None:
        """Pending again after a transient failure, still outside the retry schedule."""
        async with self._engine.begin() as conn:
            await conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(status=PENDING, next_attempt_at=None, locked_until=None)
            )

    async def for_invoice(self, invoice_id: int) -> list[Delivery]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(deliveries.c.dedupe_key)
                    .where(
                        deliveries.c.document_id == invoice_id,
                        deliveries.c.channel == self.CHANNEL,
                    )
                    .order_by(deliveries.c.id)
                )
            ).all()
        found = [await self.by_key(r.dedupe_key) for r in rows]
        return [d for d in found if d is not None]
