"""What makes a Focus callback believable, as pure functions (the emission consumer's shell asks
the provider when these say no).

Focus proves a hook delivery only by a static header value, which proxies log: whoever holds it
can post any body. So a callback is a claim about one of our notes, checked in three ways:
- it names that note: our provider ref and the note's CNPJ;
- an authorization's numbers agree with the XML fetched from Focus's own host (the download we
  make anyway to keep the XML, so this costs no credit);
- an outcome that cannot be undone or that frees the ref (`erro_autorizacao`, `cancelado`) is
  confirmed by a GET of the note at Focus before it is applied.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from notaflow.lifecycle import FINAL, REUSABLE, is_issued

# Outcomes applied only after Focus itself confirms them (one GET, one credit): an error makes
# the ref reusable (a client's retry would then issue a second real note), a cancellation
# cannot be taken back.
CONFIRM_FIRST = REUSABLE | FINAL

# How the current outcome of a note was established, kept in its stored result (not shown in
# any view): "xml" = the callback agreed with the provider's XML; "consulta" = Focus's GET.
VERIFIED_BY = "_verificado_por"


def foreign_note(cnpj_prestador: str, provider_ref: str | None, body: Mapping[str, Any]) -> str:
    """Why the callback cannot be about this note ("" when it can)."""
    if provider_ref is None or str(body.get("ref")) != provider_ref:
        return "ref do provedor não confere"
    cnpj = body.get("cnpj_prestador")
    if cnpj is None or _digits(str(cnpj)) != cnpj_prestador:
        return "cnpj_prestador não confere"
    return ""


def xml_agrees(xml: bytes, body: Mapping[str, Any], cnpj_prestador: str) -> bool:
    """True when the authorized note's XML carries the callback's numero, codigo_verificacao and
    the note's CNPJ. Municipal layouts differ (ABRASF, DSF, Paulistana...), so the check looks
    for the values among the element texts rather than at fixed paths."""
    numero, codigo = body.get("numero"), body.get("codigo_verificacao")
    if numero is None or not codigo:
        return False
    try:
        # The XML comes from the provider's own host over our authenticated channel; expat
        # (Python >= 3.11 ships >= 2.4.1) refuses entity expansion bombs, and ElementTree
        # never fetches external entities.
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError):
        return False
    texts = {(el.text or "").strip() for el in root.iter()}
    numbers = {t.lstrip("0") or "0" for t in texts if t.isdigit()}
    wanted_numero = str(numero).strip().lstrip("0") or "0"
    return (
        wanted_numero in numbers
        and _normal_code(str(codigo)) in {_normal_code(t) for t in texts}
        and cnpj_prestador in {_digits(t) for t in texts}
    )


def same_outcome(
    result: Mapping[str, Any], status: str, stored_status: str, body: Mapping[str, Any]
) -> bool:
    """A repeated callback: the same status and, for an authorization, the same numbers."""
    if status != stored_status:
        return False
    if not is_issued(status):
        return True
    return all(
        str(body.get(k)) == str(result.get(k))
        for k in ("numero", "codigo_verificacao")
        if body.get(k) is not None
    )


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _normal_code(text: str) -> str:
    return "".join(c for c in text if c.isalnum()).upper()
