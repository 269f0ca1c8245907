"""What the ingress's handlers need, built by the composition root and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from notaflow.accounts import AccountResolver
from notaflow.bus import Bus
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.intake import Intake
from notaflow.replies import ReplyListener, ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import DocumentStore, HookStore, TenantStore
from notaflow.store.accounts import AccountStore, secret_box
from notaflow.store.operators import OperatorStore
from notaflow.topics import Topics


@dataclass
class IngressDeps:
    settings: Settings
    engine: AsyncEngine
    bus: Bus
    documents: DocumentStore
    intake: Intake
    nfce_intake: Intake
    tenants: TenantStore
    tenant_cache: TenantCache
    topics: Topics
    hooks: HookStore
    waiters: ReplyWaiters
    replies: ReplyListener | None = None
    # Provider accounts (issue 15): built from `engine` and `settings` unless given.
    account_store: AccountStore = field(default=None)  # type: ignore[assignment]
    accounts: AccountResolver = field(default=None)  # type: ignore[assignment]
    operators: OperatorStore = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.account_store is None:
            self.account_store = AccountStore(self.engine, secret_box(self.settings))
        if self.accounts is None:
            # The door check asks only whether an account is disabled: secrets stay sealed.
            self.accounts = AccountResolver(
                self.account_store.sealed(), self.settings, self.settings.account_cache_ttl
            )
        if self.operators is None:
            self.operators = OperatorStore(self.engine)


def deps(request: Request) -> IngressDeps:
    value: IngressDeps = request.app.state.deps
    return value
