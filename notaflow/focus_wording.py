"""How Focus words a refused document, shared by every document's rules (`notaflow.nfse`,
`notaflow.nfsen` through it, `notaflow.nfce`): the body-level messages and the per-field ones,
each field named by its dotted path (`prestador.cnpj`, `produtos.0.ncm`)."""

from __future__ import annotations

from typing import Final

from notaflow.errors import InvalidDocument

NOT_AN_OBJECT: Final = "O corpo da requisição deve ser um objeto JSON"
NOT_UTF8: Final = "O corpo da requisição contém texto que não é UTF-8 válido"


def missing(field: str) -> str:
    return f'Parâmetro "{field}" não informado'


def invalid(field: str, why: str) -> str:
    return f'Parâmetro "{field}" inválido: {why}'


def reject(field: str, why: str) -> InvalidDocument:
    return InvalidDocument(field, invalid(field, why))


def dotted(path: list[str | int]) -> str:
    return ".".join(str(part) for part in path)
