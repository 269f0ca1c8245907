"""The ops port split: with `NOTAFLOW_OPS_PORT` set, the ingress listens on two ports and
/metrics, /healthz, /readyz (and /docs, /openapi.json unless `NOTAFLOW_PUBLIC_DOCS`) answer only
on the ops port, which the Kubernetes Ingress does not route; the API answers only on the public
port. One uvicorn server holds both sockets; a route looks at the port the request came in on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send


def local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


class OnPort(BaseRoute):
    """`route`, matched only for requests whose local port passes `accept`. A request on the
    other port finds no route and gets the app's 404, in its route's dialect."""

    def __init__(self, route: BaseRoute, accept: Callable[[int | None], bool]) -> None:
        self.route = route
        self._accept = accept

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not self._accept(local_port(scope)):
            return Match.NONE, {}
        return self.route.matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        return self.route.url_path_for(name, **path_params)


def split(
    public: Sequence[BaseRoute],
    ops: Sequence[BaseRoute],
    docs: Sequence[BaseRoute],
    ops_port: int,
    public_docs: bool,
) -> list[BaseRoute]:
    """The app's routes; `ops_port` 0 keeps everything on every port (development)."""
    if not ops_port:
        return [*ops, *public, *docs]

    def on_ops(port: int | None) -> bool:
        return port == ops_port

    def off_ops(port: int | None) -> bool:
        return port != ops_port

    def anywhere(port: int | None) -> bool:
        return True

    return [
        *(OnPort(r, on_ops) for r in ops),
        *(OnPort(r, off_ops) for r in public),
        *(OnPort(r, anywhere if public_docs else on_ops) for r in docs),
    ]
