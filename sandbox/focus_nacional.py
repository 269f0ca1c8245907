"""The Focus sandbox's NFS-e Nacional (`/v2/nfsen`), playing the Ambiente Nacional.

It shares the Focus sandbox's auth, rate limit, outages, hooks (event `nfsen`), clock and
stats (`sandbox.focus.FocusSandbox`); decisions are pure functions in
`sandbox.focus_nacional_rules`. Routes (Focus's error dialect):

    POST   /v2/nfsen?ref=REF   202 processando_autorizacao; 422 em_processamento |
                               nfe_autorizada; 400 requisicao_invalida; 500 for the first N
                               POSTs of a ref asked to fail ([sandbox:http500=N])
    GET    /v2/nfsen/REF       the note (`?completa=1` adds `requisicao_nota_fiscal`: the body
                               received); 404 nao_encontrado
    DELETE /v2/nfsen/REF       {"justificativa"} -> 200 cancelado | erro_cancelamento (E523);
                               400 nfe_cancelada | nfe_nao_autorizada
    POST   /v2/nfsen/REF/email, POST /v2/nfsen/REF/hook   as for /v2/nfse

Public (no credentials): the XML and the cancellation XML under
`/notas_fiscais_servico_nacional/` (a random part in the name), the DANFSe PDF at
`/nfsen/CHAVE/danfse.pdf`, the public consultation page `/ConsultaPublica/?tpc=1&chave=CHAVE`.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notaflow.sandbox import focus_nacional_rules as nacional
from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus import (
    MAX_EMAILS,
    FocusError,
    FocusSandbox,
    Status,
    _invalid,
    _json_object,
    _not_found,
    _refuse_reuse,
    danfse_pdf,
)


@dataclass
class NotaNacional:
    token: str
    ref: str
    cnpj: str
    doc: dict[str, Any]
    numero_dps: int
    plan: rules.Plan
    scenario: rules.Scenario | None
    base_url: str
    status: Status = "processando_autorizacao"
    erros: tuple[rules.Erro, ...] = ()
    autorizada: nacional.NfsenAutorizada | None = None
    authorized_at: float = 0.0
    cancelamento: tuple[float, str] | None = None
    emails: list[str] = field(default_factory=list)

    def consulta(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "cnpj_prestador": self.cnpj,
            "ref": self.ref,
            "numero_rps": str(self.numero_dps),
            "status": self.status,
        }
        if self.status == "erro_autorizacao":
            body["erros"] = list(self.erros)
        if self.autorizada is not None:
            body.update(self.autorizada.fields())
            if self.status == "cancelado":
                body["caminho_xml_cancelamento"] = self.autorizada.caminho_xml_cancelamento
        return body


class NacionalSandbox:
    def __init__(self, focus: FocusSandbox) -> None:
        self.focus = focus
        self._notes: dict[tuple[str, str], NotaNacional] = {}
        self._by_xml: dict[str, NotaNacional] = {}
        self._by_chave: dict[str, NotaNacional] = {}
        self._numero: Counter[str] = Counter()
        self._dps: Counter[str] = Counter()
        self._posts: Counter[tuple[str, str]] = Counter()

    # -- API -------------------------------------------------------------------------------

    async def emit(self, request: Request, token: str) -> Response:
        ref = request.query_params.get("ref", "").strip()
        if not ref:
            raise _invalid('Parâmetro "ref" não informado')
        doc = await _json_object(request)
        _, cnpj = nacional.prestador(doc)
        if not cnpj:
            raise _invalid('Parâmetro "cnpj_prestador" não informado')
        scenario = self.focus._scenarios.get(ref)
        try:
            plan = rules.plan(
                nacional.as_municipal(doc), scenario, self.focus.config.processing_delay
            )
        except rules.ScenarioError as exc:
            raise _invalid(f"Marcador do sandbox inválido: {exc}") from exc
        self._posts[token, ref] += 1
        self.focus.stats.posts[ref] += 1
        if self._posts[token, ref] <= plan.http500:
            self.focus.stats.http500[ref] += 1
            raise FocusError(500, "erro_interno", "Erro interno simulado pelo sandbox")
        previous = self._notes.get((token, ref))
        _refuse_reuse(previous)  # type: ignore[arg-type]  # same status field as a Nota
        numero_dps = previous.numero_dps if previous else self._next(self._dps, cnpj)
        nota = NotaNacional(
            token=token,
            ref=ref,
            cnpj=cnpj,
            doc=doc,
            numero_dps=numero_dps,
            plan=plan,
            scenario=scenario,
            base_url=self.focus.config.public_url or str(request.base_url),
        )
        self._notes[token, ref] = nota
        self.focus.stats.emissions[ref] += 1
        self.focus._spawn(self._process(nota))
        return JSONResponse(
            {"cnpj_prestador": cnpj, "ref": ref, "status": nota.status}, status_code=202
        )

    @staticmethod
    def _next(counter: Counter[str], key: str) -> int:
        counter[key] += 1
        return counter[key]

    async def _process(self, nota: NotaNacional) -> None:
        await asyncio.sleep(nota.plan.delay)
        decision = nacional.decide(nota.doc, nota.scenario)
        if decision.authorized:
            nota.authorized_at = self.focus.now()
            nota.autorizada = nacional.authorize(
                nota.doc,
                numero=self._next(self._numero, nota.cnpj),
                authorized_at=datetime.fromtimestamp(nota.authorized_at, UTC),
                base_url=nota.base_url,
                secret=secrets.token_hex(8),
            )
            nota.status = "autorizado"
            self._by_xml[nota.autorizada.xml_name] = nota
            self._by_chave[nota.autorizada.chave] = nota
            self.focus.stats.authorizations[nota.ref] += 1
        else:
            nota.status, nota.erros = "erro_autorizacao", decision.erros
            self.focus.stats.rejections[nota.ref] += 1
        self._fire_hooks(nota)

    def _nota(self, token: str, ref: str) -> NotaNacional:
        nota = self._notes.get((token, ref))
        if nota is None:
            raise _not_found()
        return nota

    async def consult(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        self.focus.stats.consultas[nota.ref] += 1  # a credit at Focus, as for municipal notes
        body = nota.consulta()
        if request.query_params.get("completa", "").lower() in ("1", "true"):
            body["requisicao_nota_fiscal"] = nota.doc
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
            now=self.focus.now(),
            window=self.focus.config.cancel_window,
            nao_cancela=nota.plan.nao_cancela,
        )
        if refusal is not None:
            return JSONResponse({"status": "erro_cancelamento", "erros": [refusal]})
        nota.status = "cancelado"
        nota.cancelamento = (self.focus.now(), str(body["justificativa"]).strip())
        self.focus.stats.cancellations[nota.ref] += 1
        self._fire_hooks(nota)
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
        self.focus.stats.emails[nota.ref] += len(emails)
        return JSONResponse({"emails": emails})

    async def refire(self, request: Request, token: str) -> Response:
        nota = self._nota(token, request.path_params["ref"])
        fired = self._fire_hooks(nota) if nota.status != "processando_autorizacao" else []
        return JSONResponse([hook.as_dict() for hook in fired])

    def _fire_hooks(self, nota: NotaNacional) -> list[Any]:
        hooks = [
            h for h in self.focus._hooks.values() if h.fires_for(nota.token, "nfsen", nota.cnpj)
        ]
        if not nota.plan.send_callbacks:
            self.focus.stats.callbacks["dropped"] += len(hooks)
            return []
        body = nota.consulta()
        for hook in hooks:
            self.focus._spawn(self.focus._deliver(hook, body))
        return hooks

    # -- public documents ------------------------------------------------------------------

    async def xml(self, request: Request) -> Response:
        name = request.path_params["name"]
        cancel = name.endswith(rules.CANCEL_SUFFIX)
        nota = self._by_xml.get(name.removesuffix(rules.CANCEL_SUFFIX))
        if nota is None or nota.autorizada is None:
            return _not_found("Arquivo não encontrado").response()
        if not cancel:
            xml = nacional.nfsen_xml(nota.doc, nota.autorizada, numero_dps=nota.numero_dps)
            return Response(xml, media_type="application/xml")
        if nota.cancelamento is None:
            return _not_found("Arquivo não encontrado").response()
        at, motivo = nota.cancelamento
        xml = nacional.cancelamento_xml(
            nota.autorizada, cancelled_at=datetime.fromtimestamp(at, UTC), motivo=motivo
        )
        return Response(xml, media_type="application/xml")

    def _public(self, chave: str) -> NotaNacional:
        nota = self._by_chave.get(chave)
        if nota is None or nota.autorizada is None:
            raise _not_found()
        return nota

    async def danfse(self, request: Request) -> Response:
        try:
            nota = self._public(request.path_params["chave"])
        except FocusError as exc:
            return exc.response()
        assert nota.autorizada is not None
        lines = nacional.danfse_lines(nota.doc, nota.autorizada, nota.status == "cancelado")
        return Response(danfse_pdf(lines), media_type="application/pdf")

    async def consulta_publica(self, request: Request) -> Response:
        try:
            nota = self._public(request.query_params.get("chave", ""))
        except FocusError as exc:
            return exc.response()
        assert nota.autorizada is not None
        lines = nacional.danfse_lines(nota.doc, nota.autorizada, nota.status == "cancelado")
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:])
        page = (
            "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>"
            f"<title>{html.escape(lines[0])}</title></head><body><h1>Consulta pública NFS-e"
            f"</h1><p>{html.escape(lines[0])}</p><ul>{items}</ul></body></html>"
        )
        return Response(page, media_type="text/html; charset=utf-8")

    def routes(self) -> list[Route]:
        api = self.focus.authenticated
        return [
            Route("/v2/nfsen", api(self.emit), methods=["POST"]),
            Route("/v2/nfsen/{ref}", api(self.consult), methods=["GET"]),
            Route("/v2/nfsen/{ref}", api(self.cancel), methods=["DELETE"]),
            Route("/v2/nfsen/{ref}/email", api(self.email), methods=["POST"]),
            Route("/v2/nfsen/{ref}/hook", api(self.refire), methods=["POST"]),
            Route(f"{nacional.XML_DIR}/{{name}}.xml", self.xml, methods=["GET"]),
            Route("/nfsen/{chave}/danfse.pdf", self.danfse, methods=["GET"]),
            Route("/ConsultaPublica/", self.consulta_publica, methods=["GET"]),
        ]
