"""A stand-in for the Focus NFe `/v2/nfse` API, spoken over real HTTP, with in-memory state.

The decisions of the "prefeitura" are pure functions in `sandbox.focus_rules`; this module is
the async shell: auth, rate limit, state, background processing and hook delivery.

Focus routes (HTTP Basic, token as user name, empty password; errors `{"codigo", "mensagem"}`):

    POST   /v2/nfse?ref=REF        202 processando_autorizacao; 422 em_processamento |
                                   nfe_autorizada; 400 requisicao_invalida; 415 for an XML body;
                                   500 for the first N POSTs of a ref asked to fail
    GET    /v2/nfse/REF            the seed's body for each status (`?completa=1` adds
                                   `requisicao_nota_fiscal`, the body received); 404
    DELETE /v2/nfse/REF            {"justificativa"} 15..255 -> 200 cancelado | erro_cancelamento
                                   (E523); 400 nfe_cancelada | nfe_nao_autorizada; 404
    POST   /v2/nfse/REF/email      {"emails": [..10]} -> 200, recorded only
    POST   /v2/nfse/REF/hook       re-fires the hooks of one note, answers the hooks fired
    POST   /v2/hooks               {"cnpj"|"cpf"?, "event", "url", "authorization"?,
                                   "authorization_header"?}; at most 5 per company and event
    GET    /v2/hooks, GET /v2/hooks/ID, DELETE /v2/hooks/ID

Public pages (no auth, like Focus): `GET /notas_fiscais_servico/{name}.xml` (the NFS-e XML;
`{name}-cancelamento.xml` the cancellation XML of a cancelled note),
`GET /nfse/{cnpj}/{numero}` (HTML espelho), `GET /nfse/{cnpj}/{numero}/danfse.pdf`.

Every authenticated answer carries `Rate-Limit-Limit`, `Rate-Limit-Remaining` and
`Rate-Limit-Reset` (seconds) for a fixed one-minute window per token; over the limit: 429
`limite_excedido` with `Retry-After`.

Hook delivery: one JSON POST per status change (autorizado, erro_autorizacao, cancelado) with
the GET body, the hook's `authorization` in its `authorization_header` (default
`Authorization`); a non-2xx answer or a network error is retried after each delay of
`callback_retry_delays`, then given up. A receiver that refused a connection is not dialled
again for `callback_refused_pause` seconds: attempts due meanwhile count as failed without a
connection (a stopped ingress would otherwise cost a connect per note and retry). When the
sandbox stops, callbacks still pending are given up at once rather than retried.

Test control (no auth):

    POST /_sandbox/scenario  {"ref", "status"?: "autorizado"|"erro_autorizacao", "erros"?: [..],
                              "delay"?: s, "http500"?: N, "drop_callback"?: bool}
                             pre-arranges the outcome of every later POST of that ref
                             (wins over `[sandbox:...]` markers, see focus_rules)
    GET  /_sandbox/stats     counts per ref (emissions accepted, authorizations, rejections,
                             cancellations, 500s) and callbacks sent/failed/given_up/dropped;
                             `?totals=1`: the sums, and the background tasks pending
    POST /_sandbox/clock     {"advance": s} moves the sandbox clock (cancel window, rate limit)
    POST /_sandbox/outage    {"mode": "http500"|"timeout"|"slow"|"off", "seconds"?: s,
                             "hang"?: s} for `seconds`, every authenticated call answers 500,
                             or hangs `hang` seconds and answers 504 unprocessed (an outage),
                             or (slow) works normally but answers `hang` seconds late
    GET  /_sandbox/requests  every POST /v2/nfse: ref, arrival (monotonic), duration, status,
                             the token it came with

The NFS-e Nacional (`/v2/nfsen`) is `sandbox.focus_nacional`, served by the same app.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import json
import math
import secrets
import string
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notaflow.keepalive import KeepAliveTransport
from notaflow.sandbox import focus_rules as rules

Status = Literal["processando_autorizacao", "autorizado", "erro_autorizacao", "cancelado"]
HOOK_EVENTS = frozenset(
    {"nfe", "nfse", "nfsen", "nfce", "nfce_contingencia", "inutilizacao", "cte", "mdfe"}
)
MAX_HOOKS_PER_COMPANY_EVENT = 5
MAX_EMAILS = 10
# Real Focus takes any body it can parse as JSON whatever the declared type (PHP's curl sends
# form-urlencoded); only a body declared as another document format is refused with 415.
_NON_JSON_TYPES = ("application/xml", "text/xml", "multipart/form-data", "text/html")


@dataclass
class FocusSandboxConfig:
    """`tokens` empty accepts any non-empty token. `clock` gives epoch seconds; the sandbox
    clock is `clock()` plus what `/_sandbox/clock` advanced. `public_url` is the base of the
    `url`/`url_danfse` links (default: the URL the POST came to). `allow_hook_to` restricts hook
    URLs to these prefixes (empty: any http(s) URL)."""

    tokens: set[str] = field(default_factory=set)
    processing_delay: float = 0.2
    callback_timeout: float = 5.0
    callback_retry_delays: list[float] = field(default_factory=lambda: [0.5, 2.0, 5.0])
    callback_refused_pause: float = 1.0
    # Callbacks in flight at once; the rest wait their turn in O(1). They go out on the
    # consumers' lean keep-alive transport, not httpx's pool: httpcore walks every connection
    # and queued request for each request it assigns, and under `notaflow dev`'s load the
    # backlog of callbacks queued there took the sandbox's CPU (3.9 ms per note) until it
    # answered later than the consumers' timeout.
    callback_concurrency: int = 32
    rate_limit_per_minute: int = 100_000
    cancel_window: float = 24 * 3600.0
    clock: Callable[[], float] = time.time
    public_url: str | None = None
    allow_hook_to: tuple[str, ...] = ()


class FocusError(Exception):
    """An answer in the Focus error dialect; raised anywhere in a handler."""

    def __init__(self, status_code: int, codigo: str, mensagem: str) -> None:
        super().__init__(mensagem)
        self.status_code = status_code
        self.codigo = codigo
        self.mensagem = mensagem

    def response(self) -> JSONResponse:
        body = {"codigo": self.codigo, "mensagem": self.mensagem}
        return JSONResponse(body, status_code=self.status_code)


def _invalid(mensagem: str) -> FocusError:
    return FocusError(400, "requisicao_invalida", mensagem)


def _not_found(mensagem: str = "Nota fiscal não encontrada") -> FocusError:
    return FocusError(404, "nao_encontrado", mensagem)


@dataclass
class Hook:
    id: str
    token: str
    event: str
    url: str
    authorization: str | None
    authorization_header: str | None
    cnpj: str | None
    cpf: str | None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "authorization": self.authorization,
            "authorization_header": self.authorization_header,
            "event": self.event,
            "cnpj": self.cnpj,
        }
        if self.cpf is not None:
            body["cpf"] = self.cpf
        return body

    def limit_key(self) -> tuple[str, str, str | None, str | None]:
        return (self.token, self.event, self.cnpj, self.cpf)

    def fires_for(self, token: str, event: str, cnpj: str) -> bool:
        # A hook without company fires for every document of its token.
        company_matches = self.cnpj == cnpj or (self.cnpj is None and self.cpf is None)
        return self.token == token and self.event == event and company_matches


@dataclass
class Nota:
    token: str
    ref: str
    cnpj: str
    doc: dict[str, Any]
    numero_rps: int
    plan: rules.Plan
    scenario: rules.Scenario | None
    base_url: str
    status: Status = "processando_autorizacao"
    erros: tuple[rules.Erro, ...] = ()
    autorizada: rules.NotaAutorizada | None = None
    authorized_at: float = 0.0
    emails: list[str] = field(default_factory=list)
    cancelamento: tuple[float, str] | None = None  # (instant, justificativa)

    def consulta(self) -> dict[str, Any]:
        """The body of GET /v2/nfse/REF, also the body of every hook delivery."""
        body: dict[str, Any] = {
            "cnpj_prestador": self.cnpj,
            "ref": self.ref,
            "numero_rps": str(self.numero_rps),
            "serie_rps": rules.SERIE_RPS,
        }
        if self.autorizada is not None:
            body["tipo_rps"] = rules.TIPO_RPS
        body["status"] = self.status
        if self.status == "erro_autorizacao":
            body["erros"] = list(self.erros)
        if self.autorizada is not None:
            body.update(self.autorizada.fields())
            if self.status == "cancelado":
                body["caminho_xml_cancelamento"] = rules.caminho_xml_cancelamento(self.autorizada)
        return body


@dataclass
class Stats:
    posts: Counter[str] = field(default_factory=Counter)  # every POST /v2/nfse, even refused
    emissions: Counter[str] = field(default_factory=Counter)
    authorizations: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    cancellations: Counter[str] = field(default_factory=Counter)
    http500: Counter[str] = field(default_factory=Counter)
    emails: Counter[str] = field(default_factory=Counter)
    callbacks: Counter[str] = field(default_factory=Counter)
    # Focus credits beyond the POST: GETs of a note and XML downloads, by ref (issue 19).
    consultas: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "posts": dict(self.posts),
            "emissions": dict(self.emissions),
            "authorizations": dict(self.authorizations),
            "rejections": dict(self.rejections),
            "cancellations": dict(self.cancellations),
            "http500": dict(self.http500),
            "emails": dict(self.emails),
            "consultas": dict(self.consultas),
            "downloads": dict(self.downloads),
            "callbacks": {
                key: self.callbacks[key] for key in ("sent", "failed", "given_up", "dropped")
            },
        }

    def totals(self) -> dict[str, Any]:
        counts = (
            ("posts", self.posts),
            ("emissions", self.emissions),
            ("authorizations", self.authorizations),
            ("rejections", self.rejections),
            ("cancellations", self.cancellations),
            ("http500", self.http500),
            ("emails", self.emails),
        )
        body: dict[str, Any] = {name: counter.total() for name, counter in counts}
        body["callbacks"] = {
            key: self.callbacks[key] for key in ("sent", "failed", "given_up", "dropped")
        }
        return body


@dataclass(frozen=True)
class RateVerdict:
    limit: int
    remaining: int
    reset: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "Rate-Limit-Limit": str(self.limit),
            "Rate-Limit-Remaining": str(self.remaining),
            "Rate-Limit-Reset": str(self.reset),
        }


class RateLimiter:
    """Fixed one-minute windows per token; refused requests do not use up the window."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, token: str, now: float) -> RateVerdict:
        window = int(now // 60)
        start, used = self._windows.get(token, (window, 0))
        if start != window:
            used = 0
        allowed = used < self._per_minute
        if allowed:
            used += 1
        self._windows[token] = (window, used)
        reset = max(1, math.ceil((window + 1) * 60 - now))
        return RateVerdict(self._per_minute, self._per_minute - used, reset, allowed)


Handler = Callable[[Request, str], Awaitable[Response]]


class FocusSandbox:
    """State and handlers of one sandbox; `create_focus_sandbox` wires it into Starlette."""

    def __init__(self, config: FocusSandboxConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._limiter = RateLimiter(config.rate_limit_per_minute)
        self._clock_offset = 0.0
        self._notes: dict[tuple[str, str], Nota] = {}
        self._by_xml: dict[str, Nota] = {}
        self._by_numero: dict[tuple[str, int], Nota] = {}
        self._numero: Counter[str] = Counter()
        self._rps: Counter[str] = Counter()
        self._posts: Counter[tuple[str, str]] = Counter()
        self._scenarios: dict[str, rules.Scenario] = {}
        self._hooks: dict[str, Hook] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: KeepAliveTransport | None = None
        # Receiver origin -> monotonic time of its last refused connection.
        self._refused: dict[str, float] = {}
        self._stopping = False
        self._outage: tuple[str, float] | None = None  # mode, until (monotonic)
        self._outage_hang = 30.0
        # Every POST /v2/nfse with its monotonic time and answer, for retry-policy checks.
        self.requests: list[dict[str, Any]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def now(self) -> float:
        return self.config.clock() + self._clock_offset

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks weakly, and shutdown must cancel them.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> KeepAliveTransport:
        if self._client is None:
            self._client = KeepAliveTransport(max_connections=self.config.callback_concurrency)
        return self._client

    def begin_stop(self) -> None:
        """Stop background work now (processing, pending callbacks), before the server waits
        for its connections: under a backlog that work would otherwise run through the stop."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- auth and rate limit ---------------------------------------------------------------

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
            verdict = self._limiter.hit(token, self.now())
            if verdict.allowed:
                try:
                    response = await handler(request, token)
                except FocusError as exc:
                    response = exc.response()
            else:
                response = FocusError(
                    429, "limite_excedido", "Limite de requisições por minuto excedido"
                ).response()
                response.headers["Retry-After"] = str(verdict.reset)
            response.headers.update(verdict.headers())
            if outage == "slow":
                # A provider under load: it does the work, but its answer takes `hang` seconds.
                await asyncio.sleep(self._outage_hang)
            return response

        return endpoint

    # -- /v2/nfse --------------------------------------------------------------------------

    async def emit(self, request: Request, token: str) -> Response:
        ref = request.query_params.get("ref", "").strip()
        if not ref:
            raise _invalid('Parâmetro "ref" não informado')
        doc = await _json_object(request)
        cnpj = rules.digits(_dig(doc, "prestador", "cnpj"))
        if not cnpj:
            raise _invalid('Parâmetro "prestador.cnpj" não informado')
        scenario = self._scenarios.get(ref)
        try:
            plan = rules.plan(doc, scenario, self.config.processing_delay)
        except rules.ScenarioError as exc:
            raise _invalid(f"Marcador do sandbox inválido: {exc}") from exc
        self._posts[token, ref] += 1
        self.stats.posts[ref] += 1
        if self._posts[token, ref] <= plan.http500:
            self.stats.http500[ref] += 1
            raise FocusError(500, "erro_interno", "Erro interno simulado pelo sandbox")
        previous = self._notes.get((token, ref))
        _refuse_reuse(previous)
        # A ref re-sent after erro_autorizacao keeps its RPS: that number was never used.
        numero_rps = previous.numero_rps if previous else self._next(self._rps, cnpj)
        nota = Nota(
            token=token,
            ref=ref,
            cnpj=cnpj,
            doc=doc,
            numero_rps=numero_rps,
            plan=plan,
            scenario=scenario,
            base_url=self.config.public_url or str(request.base_url),
        )
        self._notes[token, ref] = nota
        self.stats.emissions[ref] += 1
        self._spawn(self._process(nota))
        body = {"cnpj_prestador": cnpj, "ref": ref, "status": nota.status}
        return JSONResponse(body, status_code=202)

    @staticmethod
    def _next(counter: Counter[str], key: str) -> int:
        counter[key] += 1
        return counter[key]

    async def _process(self, nota: Nota) -> None:
        await asyncio.sleep(nota.plan.delay)
        decision = rules.decide(nota.doc, nota.scenario)
        if decision.authorized:
            self._authorize(nota)
        else:
            nota.status, nota.erros = "erro_autorizacao", decision.erros
            self.stats.rejections[nota.ref] += 1
        self._fire_hooks(nota)

    def _authorize(self, nota: Nota) -> None:
        nota.authorized_at = self.now()
        nota.autorizada = _unguessable_xml_name(
            rules.authorize(
                nota.doc,
                numero=self._next(self._numero, nota.cnpj),
                authorized_at=datetime.fromtimestamp(nota.authorized_at, UTC),
                base_url=nota.base_url,
            )
        )
        nota.status = "autorizado"
        self._by_xml[nota.autorizada.xml_name] = nota
        self._by_numero[nota.cnpj, nota.autorizada.numero] = nota
        self.stats.authorizations[nota.ref] += 1

    def _nota(self, token: str, ref: str) -> Nota:
        nota = self._notes.get((token, ref))
        if nota is None:
            raise _not_found()
        return nota

    async def consult(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        self.stats.consultas[nota.ref] += 1
        body = nota.consulta()
        if request.query_params.get("completa", "").lower() in ("1", "true"):
            body["requisicao_nota_fiscal"] = nota.doc  # the body as received, as Focus shows it
        return JSONResponse(body)

    async def cancel(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        body = await _json_object(request, empty_ok=True)
        if not rules.justificativa_valida(body.get("justificativa")):
            raise _invalid('Parâmetro "justificativa" deve ter de 15 a 255 caracteres')
        if nota.status == "cancelado":
            raise FocusError(400, "nfe_cancelada", "Nota Fiscal já cancelada")
        if nota.status != "autorizado":
            raise FocusError(
                400, "nfe_nao_autorizada", "Nota fiscal não autorizada não pode ser cancelada"
            )
        refusal = rules.cancel_refusal(
            authorized_at=nota.authorized_at,
            now=self.now(),
            window=self.config.cancel_window,
            nao_cancela=nota.plan.nao_cancela,
        )
        if refusal is not None:
            # Focus reports a refused cancel as a status, not as an HTTP error.
            return JSONResponse({"status": "erro_cancelamento", "erros": [refusal]})
        nota.status = "cancelado"
        nota.cancelamento = (self.now(), str(body["justificativa"]).strip())
        self.stats.cancellations[nota.ref] += 1
        self._fire_hooks(nota)
        # The seed's answer; the cancellation XML's path is in GET and the hooks (as at Focus).
        return JSONResponse({"status": "cancelado"})

    async def email(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        emails = (await _json_object(request)).get("emails")
        if not isinstance(emails, list) or not emails or len(emails) > MAX_EMAILS:
            raise _invalid(f'Parâmetro "emails" deve ser uma lista de 1 a {MAX_EMAILS} emails')
        if not all(isinstance(e, str) and "@" in e for e in emails):
            raise _invalid('Parâmetro "emails" contém um email inválido')
        if nota.autorizada is None:
            raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
        nota.emails.extend(emails)
        self.stats.emails[nota.ref] += len(emails)
        return JSONResponse({"emails": emails})

    async def refire(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        fired = self._fire_hooks(nota) if nota.status != "processando_autorizacao" else []
        return JSONResponse([hook.as_dict() for hook in fired])

    # -- hooks -----------------------------------------------------------------------------

    def _fire_hooks(self, nota: Nota) -> list[Hook]:
        hooks = [h for h in self._hooks.values() if h.fires_for(nota.token, "nfse", nota.cnpj)]
        if not nota.plan.send_callbacks:
            self.stats.callbacks["dropped"] += len(hooks)
            return []
        body = nota.consulta()
        for hook in hooks:
            self._spawn(self._deliver(hook, body))
        return hooks

    async def _deliver(self, hook: Hook, body: Mapping[str, Any]) -> None:
        headers: dict[str, str] = {}
        if hook.authorization is not None:
            headers[hook.authorization_header or "Authorization"] = hook.authorization
        try:
            for wait in (0.0, *self.config.callback_retry_delays):
                await asyncio.sleep(wait)
                if await self._post_hook(hook.url, body, headers):
                    self.stats.callbacks["sent"] += 1
                    return
                self.stats.callbacks["failed"] += 1
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        self.stats.callbacks["given_up"] += 1

    async def _post_hook(self, url: str, body: Mapping[str, Any], headers: dict[str, str]) -> bool:
        origin = _origin(url)
        refused_at = self._refused.get(origin)
        if refused_at is not None:
            if time.monotonic() - refused_at < self.config.callback_refused_pause:
                return False
            del self._refused[origin]
        parts = urlsplit(url)
        scheme = parts.scheme.encode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        raw_headers = [
            (b"Host", parts.netloc.encode("idna")),
            (b"Content-Type", b"application/json"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timeout = self.config.callback_timeout
        timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": None}
        try:
            reply = await self._http().exchange(
                scheme, parts.hostname or "", port, b"POST", target.encode(), raw_headers,
                payload, timeouts,
            )  # fmt: skip
        except httpx.ConnectError:
            self._refused[origin] = time.monotonic()
            return False
        except (httpx.HTTPError, UnicodeError):
            return False
        return 200 <= reply.status_code < 300

    async def create_hook(self, request: Request, token: str) -> Response:
        body = await _json_object(request)
        event = body.get("event")
        if event not in HOOK_EVENTS:
            raise _invalid('Parâmetro "event" deve ser um evento válido.')
        url = body.get("url")
        if not isinstance(url, str) or not self._hook_url_ok(url):
            raise _invalid(f"URL inválida: {url}")
        cnpj = rules.digits(body.get("cnpj")) or None
        cpf = None if cnpj else rules.digits(body.get("cpf")) or None
        key = (token, event, cnpj, cpf)
        same = [h for h in self._hooks.values() if h.limit_key() == key]
        if len(same) >= MAX_HOOKS_PER_COMPANY_EVENT:
            raise _invalid(
                f"Limite de {MAX_HOOKS_PER_COMPANY_EVENT} gatilhos por empresa e evento atingido."
            )
        hook = Hook(
            id=_hook_id(),
            token=token,
            event=event,
            url=url,
            authorization=_optional_str(body.get("authorization")),
            authorization_header=_optional_str(body.get("authorization_header")),
            cnpj=cnpj,
            cpf=cpf,
        )
        self._hooks[hook.id] = hook
        return JSONResponse(hook.as_dict())

    def _hook_url_ok(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        allowed = self.config.allow_hook_to
        return not allowed or url.startswith(allowed)

    def _hook(self, token: str, hook_id: str) -> Hook:
        hook = self._hooks.get(hook_id)
        if hook is None or hook.token != token:
            raise _not_found("Gatilho não encontrado")
        return hook

    async def list_hooks(self, request: Request, token: str) -> Response:
        return JSONResponse([h.as_dict() for h in self._hooks.values() if h.token == token])

    async def get_hook(self, request: Request, token: str) -> Response:
        return JSONResponse(self._hook(token, request.path_params["id"]).as_dict())

    async def delete_hook(self, request: Request, token: str) -> Response:
        hook = self._hook(token, request.path_params["id"])
        del self._hooks[hook.id]
        return JSONResponse({**hook.as_dict(), "deleted": True})

    # -- public documents ------------------------------------------------------------------

    async def xml(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name.endswith(rules.CANCEL_SUFFIX):
            return self._cancel_xml(name.removesuffix(rules.CANCEL_SUFFIX))
        nota = self._by_xml.get(name)
        if nota is None or nota.autorizada is None:
            return _not_found("Arquivo não encontrado").response()
        self.stats.downloads[nota.ref] += 1
        return Response(nfse_xml(nota), media_type="application/xml")

    def _cancel_xml(self, name: str) -> Response:
        nota = self._by_xml.get(name)
        if nota is None or nota.autorizada is None or nota.cancelamento is None:
            return _not_found("Arquivo não encontrado").response()
        at, motivo = nota.cancelamento
        xml = rules.cancelamento_xml(
            nota.autorizada,
            cnpj=nota.cnpj,
            municipio=rules.digits(_dig(nota.doc, "prestador", "codigo_municipio")),
            cancelled_at=datetime.fromtimestamp(at, UTC),
            motivo=motivo,
        )
        return Response(xml, media_type="application/xml")

    def _public_nota(self, request: Request) -> Nota:
        try:
            key = (request.path_params["cnpj"], int(request.path_params["numero"]))
        except ValueError as exc:
            raise _not_found() from exc
        nota = self._by_numero.get(key)
        if nota is None:
            raise _not_found()
        return nota

    async def espelho(self, request: Request) -> Response:
        try:
            nota = self._public_nota(request)
        except FocusError as exc:
            return exc.response()
        return Response(espelho_html(nota), media_type="text/html; charset=utf-8")

    async def danfse(self, request: Request) -> Response:
        try:
            nota = self._public_nota(request)
        except FocusError as exc:
            return exc.response()
        return Response(danfse_pdf(espelho_lines(nota)), media_type="application/pdf")

    # -- test control ----------------------------------------------------------------------

    async def set_scenario(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            ref, scenario = rules.parse_scenario(body)
        except rules.ScenarioError as exc:
            return _invalid(str(exc)).response()
        except FocusError as exc:
            return exc.response()
        self._scenarios[ref] = scenario
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
            body = await _json_object(request)
        except FocusError as exc:
            return exc.response()
        mode, seconds, hang = body.get("mode"), body.get("seconds", 3600), body.get("hang", 30)
        if mode not in ("http500", "timeout", "slow", "off"):
            return _invalid('Parâmetro "mode" deve ser http500, timeout, slow ou off').response()
        numbers = (seconds, hang)
        if any(isinstance(n, bool) or not isinstance(n, int | float) or n < 0 for n in numbers):
            return _invalid('Parâmetros "seconds" e "hang" devem ser números >= 0').response()
        self._outage = None if mode == "off" else (mode, time.monotonic() + float(seconds))
        self._outage_hang = float(hang)
        return JSONResponse({"mode": mode, "seconds": seconds, "hang": hang})

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse(self.requests)

    async def get_stats(self, request: Request) -> Response:
        if request.query_params.get("totals"):
            # Sums only: cheap to poll under load, where the per-ref counts run to megabytes.
            return JSONResponse(self.stats.totals() | {"pending_tasks": len(self._tasks)})
        return JSONResponse(self.stats.as_dict())

    async def advance_clock(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
        except FocusError as exc:
            return exc.response()
        advance = body.get("advance")
        if isinstance(advance, bool) or not isinstance(advance, int | float) or advance < 0:
            return _invalid('Parâmetro "advance" deve ser um número >= 0').response()
        self._clock_offset += float(advance)
        now = datetime.fromtimestamp(self.now(), UTC)
        return JSONResponse({"now": rules.data_emissao(now), "offset": self._clock_offset})

    # -- wiring ----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        api = self.authenticated
        return [
            Route("/v2/nfse", api(self.emit), methods=["POST"]),
            Route("/v2/nfse/{ref}", api(self.consult), methods=["GET"]),
            Route("/v2/nfse/{ref}", api(self.cancel), methods=["DELETE"]),
            Route("/v2/nfse/{ref}/email", api(self.email), methods=["POST"]),
            Route("/v2/nfse/{ref}/hook", api(self.refire), methods=["POST"]),
            Route("/v2/hooks", api(self.create_hook), methods=["POST"]),
            Route("/v2/hooks", api(self.list_hooks), methods=["GET"]),
            Route("/v2/hooks/{id}", api(self.get_hook), methods=["GET"]),
            Route("/v2/hooks/{id}", api(self.delete_hook), methods=["DELETE"]),
            Route("/notas_fiscais_servico/{name}.xml", self.xml, methods=["GET"]),
            Route("/nfse/{cnpj}/{numero}", self.espelho, methods=["GET"]),
            Route("/nfse/{cnpj}/{numero}/danfse.pdf", self.danfse, methods=["GET"]),
            Route("/_sandbox/scenario", self.set_scenario, methods=["POST"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
            Route("/_sandbox/outage", self.set_outage, methods=["POST"]),
            Route("/_sandbox/requests", self.get_requests, methods=["GET"]),
            Route("/_sandbox/clock", self.advance_clock, methods=["POST"]),
        ]


def _refuse_reuse(previous: Nota | None) -> None:
    """A ref is reusable only after erro_autorizacao; once authorized, never again."""
    if previous is None or previous.status == "erro_autorizacao":
        return
    if previous.status == "processando_autorizacao":
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento")
    raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada")


async def _json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in _NON_JSON_TYPES:
        raise FocusError(415, "formato_invalido", "O corpo da requisição deve ser JSON")
    raw = await request.body()
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid("JSON inválido") from exc
    if not isinstance(body, dict):
        raise _invalid("JSON inválido: esperado um objeto")
    return body


def _dig(doc: Mapping[str, Any], *path: str) -> object:
    value: object = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _unguessable_xml_name(nota: rules.NotaAutorizada) -> rules.NotaAutorizada:
    """The XML route needs no credentials (as at Focus), so its name is the only secret: the
    rules' name (CNPJ, municipality, number, a short code, all public) gets 128 random bits."""
    name = f"{nota.xml_name}-{secrets.token_hex(16)}"
    return replace(nota, caminho_xml_nota_fiscal=f"/notas_fiscais_servico/{name}.xml")


def _hook_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


# -- rendered documents (small, just enough for a client to fetch and parse) ----------------


def nfse_xml(nota: Nota) -> bytes:
    autorizada = nota.autorizada
    assert autorizada is not None, "only authorized notes have an XML"
    root = ET.Element("CompNfse", xmlns="http://www.abrasf.org.br/nfse.xsd")
    inf = ET.SubElement(ET.SubElement(root, "Nfse"), "InfNfse")
    servico = rules.section(nota.doc, "servico")
    fields = {
        "Numero": str(autorizada.numero),
        "CodigoVerificacao": autorizada.codigo_verificacao,
        "DataEmissao": autorizada.data_emissao,
        "NumeroRps": str(nota.numero_rps),
        "SerieRps": rules.SERIE_RPS,
        "TipoRps": rules.TIPO_RPS,
        "CnpjPrestador": nota.cnpj,
        "CodigoMunicipio": rules.digits(_dig(nota.doc, "prestador", "codigo_municipio")),
        "ItemListaServico": str(servico.get("item_lista_servico", "")),
        "ValorServicos": str(servico.get("valor_servicos", "")),
        "Discriminacao": str(servico.get("discriminacao", "")),
    }
    fields.update(rules.xml_extras(nota.doc))  # the 2026 fields (IBS/CBS, nif), as received
    for tag, text in fields.items():
        ET.SubElement(inf, tag).text = text
    if nota.status == "cancelado":
        ET.SubElement(root, "NfseCancelamento").text = "true"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def espelho_lines(nota: Nota) -> list[str]:
    autorizada = nota.autorizada
    assert autorizada is not None, "only authorized notes have an espelho"
    servico = rules.section(nota.doc, "servico")
    return [
        f"NFS-e {autorizada.numero} - {'CANCELADA' if nota.status == 'cancelado' else 'ATIVA'}",
        f"Codigo de verificacao: {autorizada.codigo_verificacao}",
        f"Emissao: {autorizada.data_emissao}",
        f"Prestador CNPJ: {nota.cnpj}",
        f"RPS: {nota.numero_rps} serie {rules.SERIE_RPS}",
        f"Servico {servico.get('item_lista_servico', '')}: {servico.get('discriminacao', '')}",
        f"Valor dos servicos: {servico.get('valor_servicos', '')}",
    ]


def espelho_html(nota: Nota) -> str:
    lines = espelho_lines(nota)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:])
    return (
        "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>"
        f"<title>{html.escape(lines[0])}</title></head>"
        f"<body><h1>{html.escape(lines[0])}</h1><ul>{items}</ul>"
        "<p>Espelho gerado pelo sandbox Focus do notaflow.</p></body></html>"
    )


def danfse_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with the lines in Helvetica; offsets computed so readers accept it."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text_ops = "".join(f"({escape(line)}) Tj T* " for line in lines)
    stream = f"BT /F1 11 Tf 14 TL 50 790 Td {text_ops}ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# -- factory and server ---------------------------------------------------------------------


def create_focus_sandbox(config: FocusSandboxConfig | None = None) -> Starlette:
    sandbox = FocusSandbox(config or FocusSandboxConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Background processing and hook retries must not outlive the server.
        await sandbox.aclose()

    from notaflow.sandbox.focus_nacional import NacionalSandbox  # it builds on this module

    routes = [*sandbox.routes(), *NacionalSandbox(sandbox).routes()]  # + /v2/nfsen
    app = Starlette(routes=routes, lifespan=lifespan)
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
