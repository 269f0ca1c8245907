"""The Focus sandbox's app: one `FocusSandbox` per server — auth, rate limit and outages in
front of every authenticated route, the test controls, and the wiring of the note kinds
(`notes`, `kinds`), the hooks (`hooks`) and their deliveries (`callbacks`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.callbacks import Callbacks
from notaflow.sandbox.focus.config import FocusSandboxConfig
from notaflow.sandbox.focus.dialect import FocusError, invalid, json_object
from notaflow.sandbox.focus.hooks import Hooks
from notaflow.sandbox.focus.kinds import MUNICIPAL, NACIONAL
from notaflow.sandbox.focus.notes import Handler, Notes
from notaflow.sandbox.focus.state import RateLimiter, RateVerdict, Shared, Stats


class FocusSandbox:
    """State and handlers of one sandbox; `create_focus_sandbox` wires it into Starlette."""

    def __init__(self, config: FocusSandboxConfig) -> None:
        self.config = config
        self.shared = Shared(config)
        self._limiter = RateLimiter(config.rate_limit_per_minute)
        self.hooks = Hooks(config)
        self.callbacks = Callbacks(self.shared)
        self.nfse = Notes(MUNICIPAL, self.shared, self.hooks, self.callbacks)
        self.nfsen = Notes(NACIONAL, self.shared, self.hooks, self.callbacks)
        self._outage: tuple[str, float] | None = None  # mode, until (monotonic)
        self._outage_hang = 30.0
        # Every POST /v2/nfse with its monotonic time and answer, for retry-policy checks.
        self.requests: list[dict[str, Any]] = []

    @property
    def stats(self) -> Stats:
        return self.shared.stats

    # -- lifecycle -------------------------------------------------------------------------

    def begin_stop(self) -> None:
        """Stop background work now (processing, pending callbacks), before the server waits
        for its connections: under a backlog that work would otherwise run through the stop."""
        self.shared.background.begin_stop()

    async def aclose(self) -> None:
        await self.shared.background.stop()
        await self.callbacks.aclose()

    # -- auth, rate limit and outages ------------------------------------------------------

    def _token(self, request: Request) -> str:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise FocusError(401, "permissao_negada", "Token de acesso não informado")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise FocusError(401, "permissao_negada", "Autenticação HTTP Basic inválida") from exc
        token = decoded.partition(":")[0]
        if not token:
            raise FocusError(401, "permissao_negada", "Token de acesso não informado")
        if self.config.tokens and token not in self.config.tokens:
            raise FocusError(403, "permissao_negada", "Token de acesso inválido")
        return token

    def authenticated(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            arrived = time.monotonic()
            response = await answer(request)
            if request.method == "POST" and request.url.path == "/v2/nfse":
                self.requests.append(
                    {
                        "ref": request.query_params.get("ref", ""),
                        "at": arrived,
                        "took": time.monotonic() - arrived,
                        "status": response.status_code,
                        # Which token the note came with (provider accounts, issue 15).
                        "token": getattr(request.state, "token", ""),
                    }
                )
            return response

        async def answer(request: Request) -> Response:
            try:
                token = self._token(request)
            except FocusError as exc:
                return exc.response()
            request.state.token = token
            outage = self._outage_now()
            if outage == "http500":
                return FocusError(500, "erro_interno", "Serviço indisponível (sandbox)").response()
            if outage == "timeout":
                # A gateway that never answers in time: the client gives up first; the request
                # is not processed.
                await asyncio.sleep(self._outage_hang)
                return FocusError(504, "gateway_timeout", "Tempo esgotado (sandbox)").response()
            verdict = self._charge(token)
            if verdict.allowed:
                try:
                    response = await handler(request, token)
                except FocusError as exc:
                    response = exc.response()
            else:
                response = _over_limit(verdict)
            response.headers.update(verdict.headers())
            if outage == "slow":
                # A provider under load: it does the work, but its answer takes `hang` seconds.
                await asyncio.sleep(self._outage_hang)
            return response

        return endpoint

    def _charge(self, token: str) -> RateVerdict:
        verdict = self._limiter.hit(token, self.shared.now())
        if verdict.allowed:
            self.stats.credits[token] += 1
        return verdict

    def public_file(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A file Focus serves without credentials (the XML: its unguessable name is the
        secret, and its clients fetch it so, focus-2026.md §1). Fetched without a token it costs
        no token anything; fetched with one, it is that token's request and spends one of its
        credits like any other (§5), refused with 429 past the limit."""

        async def endpoint(request: Request) -> Response:
            if "authorization" not in request.headers:
                return await handler(request)
            try:
                token = self._token(request)
            except FocusError as exc:
                return exc.response()
            verdict = self._charge(token)
            response = await handler(request) if verdict.allowed else _over_limit(verdict)
            response.headers.update(verdict.headers())
            return response

        return endpoint

    # -- test control ----------------------------------------------------------------------

    async def set_scenario(self, request: Request) -> Response:
        try:
            body = await json_object(request)
            ref, scenario = rules.parse_scenario(body)
        except rules.ScenarioError as exc:
            return invalid(str(exc)).response()
        except FocusError as exc:
            return exc.response()
        self.shared.scenarios[ref] = scenario
        return JSONResponse({"ref": ref, "status": scenario.status, "http500": scenario.http500})

    def _outage_now(self) -> str | None:
        if self._outage is None:
            return None
        mode, until = self._outage
        if time.monotonic() >= until:
            self._outage = None
            return None
        return mode

    async def set_outage(self, request: Request) -> Response:
        try:
            body = await json_object(request)
        except FocusError as exc:
            return exc.response()
        mode, seconds, hang = body.get("mode"), body.get("seconds", 3600), body.get("hang", 30)
        if mode not in ("http500", "timeout", "slow", "off"):
            return invalid('Parâmetro "mode" deve ser http500, timeout, slow ou off').response()
        numbers = (seconds, hang)
        if any(isinstance(n, bool) or not isinstance(n, int | float) or n < 0 for n in numbers):
            return invalid('Parâmetros "seconds" e "hang" devem ser números >= 0').response()
        self._outage = None if mode == "off" else (mode, time.monotonic() + float(seconds))
        self._outage_hang = float(hang)
        return JSONResponse({"mode": mode, "seconds": seconds, "hang": hang})

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse(self.requests)

    async def get_stats(self, request: Request) -> Response:
        if request.query_params.get("totals"):
            # Sums only: cheap to poll under load, where the per-ref counts run to megabytes.
            pending = len(self.shared.background.tasks)
            return JSONResponse(self.stats.totals() | {"pending_tasks": pending})
        return JSONResponse(self.stats.as_dict())

    async def advance_clock(self, request: Request) -> Response:
        try:
            body = await json_object(request)
        except FocusError as exc:
            return exc.response()
        advance = body.get("advance")
        if isinstance(advance, bool) or not isinstance(advance, int | float) or advance < 0:
            return invalid('Parâmetro "advance" deve ser um número >= 0').response()
        self.shared.clock_offset += float(advance)
        now = datetime.fromtimestamp(self.shared.now(), UTC)
        return JSONResponse({"now": rules.data_emissao(now), "offset": self.shared.clock_offset})

    # -- wiring ----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        api = self.authenticated
        return [
            *self.nfse.routes(api, self.public_file),
            *self.nfsen.routes(api, self.public_file),
            Route("/v2/hooks", api(self.hooks.create), methods=["POST"]),
            Route("/v2/hooks", api(self.hooks.list), methods=["GET"]),
            Route("/v2/hooks/{id}", api(self.hooks.get), methods=["GET"]),
            Route("/v2/hooks/{id}", api(self.hooks.delete), methods=["DELETE"]),
            Route("/_sandbox/scenario", self.set_scenario, methods=["POST"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
            Route("/_sandbox/outage", self.set_outage, methods=["POST"]),
            Route("/_sandbox/requests", self.get_requests, methods=["GET"]),
            Route("/_sandbox/clock", self.advance_clock, methods=["POST"]),
        ]


def _over_limit(verdict: RateVerdict) -> Response:
    """Focus's 429: the token's requests for this minute are spent."""
    response = FocusError(
        429, "limite_excedido", "Limite de requisições por minuto excedido"
    ).response()
    response.headers["Retry-After"] = str(verdict.reset)
    return response


def create_focus_sandbox(config: FocusSandboxConfig | None = None) -> Starlette:
    sandbox = FocusSandbox(config or FocusSandboxConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Background processing and hook retries must not outlive the server.
        await sandbox.aclose()

    app = Starlette(routes=sandbox.routes(), lifespan=lifespan)
    app.state.sandbox = sandbox
    return app


async def serve_focus_sandbox(
    config: FocusSandboxConfig, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """Runs the sandbox under uvicorn until cancelled (or SIGINT/SIGTERM), then shuts down
    gracefully: stop accepting, let in-flight requests finish, cancel background tasks."""
    app = create_focus_sandbox(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # Cancellation is the CLI's way to say "stop": finish the shutdown and return normally,
        # as documented, instead of leaving uvicorn half-stopped. The backlog is dropped first.
        app.state.sandbox.begin_stop()
        server.should_exit = True
        await serving
