"""The two NFS-e kinds the Focus sandbox plays, as `NoteKind`s of `sandbox.focus.notes`:
`MUNICIPAL` (`/v2/nfse`, a prefeitura: `sandbox.focus_rules`) and `NACIONAL` (`/v2/nfsen`, the
Ambiente Nacional: `sandbox.focus_nacional_rules`). Only what differs is here."""

from __future__ import annotations

import html
import secrets
from collections.abc import Hashable
from dataclasses import replace
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow.sandbox import focus_nacional_rules as nacional
from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.dialect import FocusError, dig, not_found
from notaflow.sandbox.focus.documents import danfse_pdf, espelho_html, espelho_lines, nfse_xml
from notaflow.sandbox.focus.notes import Nota, NoteKind, Notes

MUNICIPAL_XML_DIR = "/notas_fiscais_servico"


class Municipal(NoteKind[rules.NotaAutorizada]):
    """NFS-e of a prefeitura (ABRASF-like). Public pages: the espelho at
    `/nfse/{cnpj}/{numero}` and its DANFSe at `.../danfse.pdf`."""

    event = "nfse"
    xml_dir = MUNICIPAL_XML_DIR
    missing_cnpj = 'Parâmetro "prestador.cnpj" não informado'

    def cnpj(self, doc: dict[str, Any]) -> str:
        return rules.digits(dig(doc, "prestador", "cnpj"))

    def decide(self, doc: dict[str, Any], scenario: rules.Scenario | None) -> rules.Decision:
        return rules.decide(doc, scenario)

    def authorize(
        self, nota: Nota[rules.NotaAutorizada], numero: int, authorized_at: datetime
    ) -> rules.NotaAutorizada:
        autorizada = rules.authorize(
            nota.doc, numero=numero, authorized_at=authorized_at, base_url=nota.base_url
        )
        # The XML route needs no credentials (as at Focus), so its name is the only secret:
        # the rules' name (CNPJ, municipality, number, a short code, all public) gets 128
        # random bits.
        name = f"{autorizada.xml_name}-{secrets.token_hex(16)}"
        return replace(autorizada, caminho_xml_nota_fiscal=f"{MUNICIPAL_XML_DIR}/{name}.xml")

    def public_key(
        self, nota: Nota[rules.NotaAutorizada], autorizada: rules.NotaAutorizada
    ) -> Hashable:
        return (nota.cnpj, autorizada.numero)

    def rps(self, nota: Nota[rules.NotaAutorizada]) -> dict[str, Any]:
        if nota.autorizada is None:
            return {"serie_rps": rules.SERIE_RPS}
        return {"serie_rps": rules.SERIE_RPS, "tipo_rps": rules.TIPO_RPS}

    def cancel_path(self, autorizada: rules.NotaAutorizada) -> str:
        return rules.caminho_xml_cancelamento(autorizada)

    def xml(self, nota: Nota[rules.NotaAutorizada], autorizada: rules.NotaAutorizada) -> bytes:
        return nfse_xml(nota)

    def cancel_xml(
        self,
        nota: Nota[rules.NotaAutorizada],
        autorizada: rules.NotaAutorizada,
        at: datetime,
        motivo: str,
    ) -> bytes:
        return rules.cancelamento_xml(
            autorizada,
            cnpj=nota.cnpj,
            municipio=rules.digits(dig(nota.doc, "prestador", "codigo_municipio")),
            cancelled_at=at,
            motivo=motivo,
        )

    def public_routes(self, notes: Notes[rules.NotaAutorizada]) -> list[Route]:
        def find(request: Request) -> Nota[rules.NotaAutorizada]:
            try:
                key = (request.path_params["cnpj"], int(request.path_params["numero"]))
            except ValueError as exc:
                raise not_found() from exc
            return notes.public(key)[0]

        async def espelho(request: Request) -> Response:
            try:
                nota = find(request)
            except FocusError as exc:
                return exc.response()
            return Response(espelho_html(nota), media_type="text/html; charset=utf-8")

        async def danfse(request: Request) -> Response:
            try:
                nota = find(request)
            except FocusError as exc:
                return exc.response()
            return Response(danfse_pdf(espelho_lines(nota)), media_type="application/pdf")

        return [
            Route("/nfse/{cnpj}/{numero}", espelho, methods=["GET"]),
            Route("/nfse/{cnpj}/{numero}/danfse.pdf", danfse, methods=["GET"]),
        ]


class Nacional(NoteKind[nacional.NfsenAutorizada]):
    """NFS-e Nacional (DPS, chave de acesso). Public pages: the DANFSe at
    `/nfsen/CHAVE/danfse.pdf` and the consultation page `/ConsultaPublica/?tpc=1&chave=CHAVE`."""

    event = "nfsen"
    xml_dir = nacional.XML_DIR
    missing_cnpj = 'Parâmetro "cnpj_prestador" não informado'

    def cnpj(self, doc: dict[str, Any]) -> str:
        return nacional.prestador(doc)[1]

    def plan_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        return nacional.as_municipal(doc)

    def decide(self, doc: dict[str, Any], scenario: rules.Scenario | None) -> rules.Decision:
        return nacional.decide(doc, scenario)

    def authorize(
        self, nota: Nota[nacional.NfsenAutorizada], numero: int, authorized_at: datetime
    ) -> nacional.NfsenAutorizada:
        return nacional.authorize(
            nota.doc,
            numero=numero,
            authorized_at=authorized_at,
            base_url=nota.base_url,
            secret=secrets.token_hex(8),
        )

    def public_key(
        self, nota: Nota[nacional.NfsenAutorizada], autorizada: nacional.NfsenAutorizada
    ) -> Hashable:
        return autorizada.chave

    def cancel_path(self, autorizada: nacional.NfsenAutorizada) -> str:
        return autorizada.caminho_xml_cancelamento

    def xml(
        self, nota: Nota[nacional.NfsenAutorizada], autorizada: nacional.NfsenAutorizada
    ) -> bytes:
        return nacional.nfsen_xml(nota.doc, autorizada, numero_dps=nota.numero_rps)

    def cancel_xml(
        self,
        nota: Nota[nacional.NfsenAutorizada],
        autorizada: nacional.NfsenAutorizada,
        at: datetime,
        motivo: str,
    ) -> bytes:
        return nacional.cancelamento_xml(autorizada, cancelled_at=at, motivo=motivo)

    def public_routes(self, notes: Notes[nacional.NfsenAutorizada]) -> list[Route]:
        def lines(chave: str) -> list[str]:
            nota, autorizada = notes.public(chave)
            return nacional.danfse_lines(nota.doc, autorizada, nota.status == "cancelado")

        async def danfse(request: Request) -> Response:
            try:
                page = lines(request.path_params["chave"])
            except FocusError as exc:
                return exc.response()
            return Response(danfse_pdf(page), media_type="application/pdf")

        async def consulta_publica(request: Request) -> Response:
            try:
                page = lines(request.query_params.get("chave", ""))
            except FocusError as exc:
                return exc.response()
            items = "".join(f"<li>{html.escape(line)}</li>" for line in page[1:])
            body = (
                "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>"
                f"<title>{html.escape(page[0])}</title></head><body><h1>Consulta pública NFS-e"
                f"</h1><p>{html.escape(page[0])}</p><ul>{items}</ul></body></html>"
            )
            return Response(body, media_type="text/html; charset=utf-8")

        return [
            Route("/nfsen/{chave}/danfse.pdf", danfse, methods=["GET"]),
            Route("/ConsultaPublica/", consulta_publica, methods=["GET"]),
        ]


MUNICIPAL = Municipal()
NACIONAL = Nacional()
