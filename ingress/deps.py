"""What the ingress's handlers need, built by the composition root and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from notaflow.bus import Bus
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.intake import Intake
from notaflow.replies import ReplyListener, ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import DocumentStore, HookStore, TenantStore
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


def deps(request: Request) -> IngressDeps:
    value: IngressDeps = request.app.state.deps
    return value
