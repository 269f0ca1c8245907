"""One implementation of Focus's note API for every NFS-e kind the sandbox plays: emit, consult,
cancel, e-mail, re-fire hooks and the public XML, parameterised by a `NoteKind` (municipal
`/v2/nfse`, Ambiente Nacional `/v2/nfsen`: `sandbox.focus.kinds`), which holds only what
differs — where the prestador is, the prefeitura's decision, the authorized fields, the bodies
and documents rendered."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.callbacks import Callbacks
from notaflow.sandbox.focus.dialect import FocusError, invalid, json_object, not_found
from notaflow.sandbox.focus.hooks import Hook, Hooks
from notaflow.sandbox.focus.state import Shared

Status = Literal["processando_autorizacao", "autorizado", "erro_autorizacao", "cancelado"]
MAX_EMAILS = 10


class Authorized(Protocol):
    """What an authorized note of any kind has: its public XML's name and the GET fields."""

    @property
    def xml_name(self) -> str: ...

    def fields(self) -> dict[str, str]: ...


A = TypeVar("A", bound=Authorized)


@dataclass
class Nota(Generic[A]):
    token: str
    ref: str
    cnpj: str
    doc: dict[str, Any]
    numero_rps: int  # the DPS number of a national note
    plan: rules.Plan
    scenario: rules.Scenario | None
    base_url: str
    status: Status = "processando_autorizacao"
    erros: tuple[rules.Erro, ...] = ()
    autorizada: A | None = None
    authorized_at: float = 0.0
    emails: list[str] = field(default_factory=list)
    cancelamento: tuple[float, str] | None = None  # (instant, justificativa)


class NoteKind(ABC, Generic[A]):
    """What differs between the NFS-e kinds; everything else is `Notes`."""

    event: str  # the hook event, and the API path /v2/<event>
    xml_dir: str  # where the public XML is served
    missing_cnpj: str  # the 400's message when the document has no prestador CNPJ

    @abstractmethod
    def cnpj(self, doc: dict[str, Any]) -> str: ...

    def plan_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as `focus_rules.plan` reads its markers."""
        return doc

    @abstractmethod
    def decide(self, doc: dict[str, Any], scenario: rules.Scenario | None) -> rules.Decision: ...

    @abstractmethod
    def authorize(self, nota: Nota[A], numero: int, authorized_at: datetime) -> A: ...

    @abstractmethod
    def public_key(self, nota: Nota[A], autorizada: A) -> Hashable:
        """How the public pages find the note."""

    def rps(self, nota: Nota[A]) -> dict[str, Any]:
        """The RPS fields GET shows besides `numero_rps` (none for a DPS)."""
        return {}

    @abstractmethod
    def cancel_path(self, autorizada: A) -> str:
        """`caminho_xml_cancelamento` of a cancelled note."""

    def consulta(self, nota: Nota[A]) -> dict[str, Any]:
        """The body of GET, also the body of every hook delivery."""
        body: dict[str, Any] = {
            "cnpj_prestador": nota.cnpj,
            "ref": nota.ref,
            "numero_rps": str(nota.numero_rps),
            **self.rps(nota),
            "status": nota.status,
        }
        if nota.status == "erro_autorizacao":
            body["erros"] = list(nota.erros)
        if nota.autorizada is not None:
            body.update(nota.autorizada.fields())
            if nota.status == "cancelado":
                body["caminho_xml_cancelamento"] = self.cancel_path(nota.autorizada)
        return body

    @abstractmethod
    def xml(self, nota: Nota[A], autorizada: A) -> bytes: ...

    @abstractmethod
    def cancel_xml(self, nota: Nota[A], autorizada: A, at: datetime, motivo: str) -> bytes: ...

    @abstractmethod
    def public_routes(self, notes: Notes[A]) -> list[Route]:
        """The pages a note's `url` and `url_danfse` point at (no credentials)."""


# A handler of the API takes the token the app's auth found; `Authenticated` wraps it with
# auth, rate limit and outages into a Starlette endpoint.
Handler = Callable[[Request, str], Awaitable[Response]]
Authenticated = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
# A public file's endpoint, wrapped with what its request costs (`FocusSandbox.public_file`).
Public = Callable[
    [Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]
]


class Notes(Generic[A]):
    """The notes of one kind in one sandbox, and their API."""

    def __init__(
        self, kind: NoteKind[A], shared: Shared, hooks: Hooks, callbacks: Callbacks
    ) -> None:
        self.kind = kind
        self._shared = shared
        self._hooks = hooks
        self._callbacks = callbacks
        self._notes: dict[tuple[str, str], Nota[A]] = {}
        self._by_xml: dict[str, Nota[A]] = {}
        self._by_public: dict[Hashable, Nota[A]] = {}
        self._numero: Counter[str] = Counter()
        self._rps: Counter[str] = Counter()
        self._posts: Counter[tuple[str, str]] = Counter()

    # -- the API ---------------------------------------------------------------------------

    async def emit(self, request: Request, token: str) -> Response:
        shared, stats = self._shared, self._shared.stats
        ref = request.query_params.get("ref", "").strip()
        if not ref:
            raise invalid('Parâmetro "ref" não informado')
        doc = await json_object(request)
        cnpj = self.kind.cnpj(doc)
        if not cnpj:
            raise invalid(self.kind.missing_cnpj)
        scenario = shared.scenarios.get(ref)
        try:
            plan = rules.plan(self.kind.plan_doc(doc), scenario, shared.config.processing_delay)
        except rules.ScenarioError as exc:
            raise invalid(f"Marcador do sandbox inválido: {exc}") from exc
        self._posts[token, ref] += 1
        stats.posts[ref] += 1
        if self._posts[token, ref] <= plan.http500:
            stats.http500[ref] += 1
            raise FocusError(500, "erro_interno", "Erro interno simulado pelo sandbox")
        previous = self._notes.get((token, ref))
        _refuse_reuse(previous)
        # A ref re-sent after erro_autorizacao keeps its RPS: that number was never used.
        numero_rps = previous.numero_rps if previous else _next(self._rps, cnpj)
        nota: Nota[A] = Nota(
            token=token,
            ref=ref,
            cnpj=cnpj,
            doc=doc,
            numero_rps=numero_rps,
            plan=plan,
            scenario=scenario,
            base_url=shared.config.public_url or str(request.base_url),
        )
        self._notes[token, ref] = nota
        stats.emissions[ref] += 1
        shared.background.spawn(self._process(nota))
        body = {"cnpj_prestador": cnpj, "ref": ref, "status": nota.status}
        return JSONResponse(body, status_code=202)

    async def _process(self, nota: Nota[A]) -> None:
        await asyncio.sleep(nota.plan.delay)
        decision = self.kind.decide(nota.doc, nota.scenario)
        if decision.authorized:
            self._authorize(nota)
        else:
            nota.status, nota.erros = "erro_autorizacao", decision.erros
            self._shared.stats.rejections[nota.ref] += 1
        self._fire_hooks(nota)

    def _authorize(self, nota: Nota[A]) -> None:
        nota.authorized_at = self._shared.now()
        autorizada = self.kind.authorize(
            nota,
            _next(self._numero, nota.cnpj),
            datetime.fromtimestamp(nota.authorized_at, UTC),
        )
        nota.autorizada = autorizada
        nota.status = "autorizado"
        self._by_xml[autorizada.xml_name] = nota
        self._by_public[self.kind.public_key(nota, autorizada)] = nota
        self._shared.stats.authorizations[nota.ref] += 1

    def _nota(self, token: str, ref: str) -> Nota[A]:
        nota = self._notes.get((token, ref))
        if nota is None:
            raise not_found()
        return nota

    async def consult(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        self._shared.stats.consultas[nota.ref] += 1  # a credit at Focus
        body = self.kind.consulta(nota)
        if request.query_params.get("completa", "").lower() in ("1", "true"):
            body["requisicao_nota_fiscal"] = nota.doc  # the body as received, as Focus shows it
        return JSONResponse(body)

    async def cancel(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        body = await json_object(request, empty_ok=True)
        if not rules.justificativa_valida(body.get("justificativa")):
            raise invalid('Parâmetro "justificativa" deve ter de 15 a 255 caracteres')
        if nota.status == "cancelado":
            raise FocusError(400, "nfe_cancelada", "Nota Fiscal já cancelada")
        if nota.status != "autorizado":
            raise FocusError(
                400, "nfe_nao_autorizada", "Nota fiscal não autorizada não pode ser cancelada"
            )
        refusal = rules.cancel_refusal(
            authorized_at=nota.authorized_at,
            now=self._shared.now(),
            window=self._shared.config.cancel_window,
            nao_cancela=nota.plan.nao_cancela,
        )
        if refusal is not None:
            # Focus reports a refused cancel as a status, not as an HTTP error.
            return JSONResponse({"status": "erro_cancelamento", "erros": [refusal]})
        nota.status = "cancelado"
        nota.cancelamento = (self._shared.now(), str(body["justificativa"]).strip())
        self._shared.stats.cancellations[nota.ref] += 1
        self._fire_hooks(nota)
        # The seed's answer; the cancellation XML's path is in GET and the hooks (as at Focus).
        return JSONResponse({"status": "cancelado"})

    async def email(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        emails = (await json_object(request)).get("emails")
        if not isinstance(emails, list) or not emails or len(emails) > MAX_EMAILS:
            raise invalid(f'Parâmetro "emails" deve ser uma lista de 1 a {MAX_EMAILS} emails')
        if not all(isinstance(e, str) and "@" in e for e in emails):
            raise invalid('Parâmetro "emails" contém um email inválido')
        if nota.autorizada is None:
            raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
        nota.emails.extend(emails)
        self._shared.stats.emails[nota.ref] += len(emails)
        return JSONResponse({"emails": emails})

    async def refire(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        fired = self._fire_hooks(nota) if nota.status != "processando_autorizacao" else []
        return JSONResponse([hook.as_dict() for hook in fired])

    def _fire_hooks(self, nota: Nota[A]) -> list[Hook]:
        hooks = self._hooks.matching(nota.token, self.kind.event, nota.cnpj)
        if not nota.plan.send_callbacks:
            self._shared.stats.callbacks["dropped"] += len(hooks)
            return []
        self._callbacks.send(hooks, self.kind.consulta(nota))
        return hooks

    # -- public documents ------------------------------------------------------------------

    async def xml(self, request: Request) -> Response:
        """The note's XML, or with `-cancelamento` its cancellation's; like Focus, no
        credentials: the unguessable name is the secret."""
        name = request.path_params["name"]
        cancel = name.endswith(rules.CANCEL_SUFFIX)
        nota = self._by_xml.get(name.removesuffix(rules.CANCEL_SUFFIX))
        if nota is None or nota.autorizada is None or (cancel and nota.cancelamento is None):
            return not_found("Arquivo não encontrado").response()
        # Counted whoever asks; a credit only when it came with a token (`public_file`).
        self._shared.stats.downloads[nota.ref] += 1
        if cancel and nota.cancelamento is not None:
            at, motivo = nota.cancelamento
            when = datetime.fromtimestamp(at, UTC)
            xml = self.kind.cancel_xml(nota, nota.autorizada, when, motivo)
            return Response(xml, media_type="application/xml")
        return Response(self.kind.xml(nota, nota.autorizada), media_type="application/xml")

    def public(self, key: Hashable) -> tuple[Nota[A], A]:
        """The authorized note a public page asks for, or a Focus 404."""
        nota = self._by_public.get(key)
        if nota is None or nota.autorizada is None:
            raise not_found()
        return nota, nota.autorizada

    def routes(self, authenticated: Authenticated, public_file: Public) -> list[Route]:
        """The API (behind `authenticated`: auth, rate limit, outages) and the public pages;
        the XML behind `public_file` (no credentials needed; a token sent is charged)."""
        base = f"/v2/{self.kind.event}"
        return [
            Route(base, authenticated(self.emit), methods=["POST"]),
            Route(base + "/{ref}", authenticated(self.consult), methods=["GET"]),
            Route(base + "/{ref}", authenticated(self.cancel), methods=["DELETE"]),
            Route(base + "/{ref}/email", authenticated(self.email), methods=["POST"]),
            Route(base + "/{ref}/hook", authenticated(self.refire), methods=["POST"]),
            Route(f"{self.kind.xml_dir}/{{name}}.xml", public_file(self.xml), methods=["GET"]),
            *self.kind.public_routes(self),
        ]


def _next(counter: Counter[str], key: str) -> int:
    counter[key] += 1
    return counter[key]


def _refuse_reuse(previous: Nota[Any] | None) -> None:
    """A ref is reusable only after erro_autorizacao; once authorized, never again."""
    if previous is None or previous.status == "erro_autorizacao":
        return
    if previous.status == "processando_autorizacao":
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento")
    raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada")
