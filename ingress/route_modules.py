"""The ingress's public route modules, listed once: `ingress.app` serves their `routes`,
`ingress.openapi` describes them with their `OPENAPI`, in this order (the order /docs shows).
Each module declares both side by side (tests/unit/ingress/test_openapi_routes.py holds them
to it); a new dialect is added here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.routing import BaseRoute

from notaflow.ingress import (
    admin,
    focus_hooks,
    focus_nfce,
    focus_nfse,
    focus_nfsen,
    hubsoft,
    hubsoft_financeiro,
    provider_webhooks,
    wuro,
)
from notaflow.ingress.openapi_parts import Description


class RouteModule(Protocol):
    @property
    def routes(self) -> Sequence[BaseRoute]: ...

    @property
    def OPENAPI(self) -> Description: ...


PUBLIC: tuple[RouteModule, ...] = (
    focus_nfse,
    focus_nfsen,
    focus_nfce,
    focus_hooks,
    provider_webhooks,
    hubsoft,
    hubsoft_financeiro,
    wuro,
    admin,
)
