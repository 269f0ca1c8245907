"""Validation and normalisation of NFC-e commands for the Emites-Client (seed 002).

`normalize_nfce` is the entry point the ingress and the consumers share, cheapest step first:

1. the JSON Schema `schemas/nfce.schema.json` through the compiled jsonschema_rs validator; the
   detailed error list is only computed when the fast `is_valid` says no. It takes every shape
   the official Emites-Client schema and examples use: integer codes also as digit strings,
   `""` in optional texts that have no minimum length, foreign customers;
2. fiscal checks the schema cannot express: `cliente.cpf_cnpj` by `pessoa_fisica_juridica`
   (CPF or CNPJ check digits, or a foreign id of 5 to 20 letters and digits), IBGE
   municipality code and real UF of the customer's and the delivery address, the card
   acquirer's CNPJ, the CPF/CNPJ of `lista_autorizacao`; and every text in ISO-8859-1, the
   only character set the Emites wire carries. Whether SEFAZ takes a foreign customer in a
   given operation is SEFAZ's call (the sandbox plays it), not the door's;
3. a new dict: nulls and `""` members dropped (the protocol treats both as absent, and
   Emites-Client checks the minimum length of any string it gets; `omitted_fields` lists
   them for the answer), integer codes sent as digit strings turned into the integers the
   official schema types them as, payments under `forma_pagamento` whichever name the client
   used, a Brazilian `cliente.cpf_cnpj` without punctuation, and the defaults of
   `DEFAULTS_DOC` filled in. Unknown fields are kept: the official schema knows more
   optional fields than we check, and Emites validates them itself.

Every failure is `InvalidDocument(field, message)` with Focus-style Portuguese wording and the
dotted path of the first offending field ("produtos.0.ncm"); the smallest path wins, so the
answer does not depend on the order the client wrote its fields in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import jsonschema_rs

from notaflow import schemas
from notaflow.brdocs import (
    clean_document,
    valid_cnpj,
    valid_cpf,
    valid_ibge_municipio,
    valid_uf,
)
from notaflow.emites_wire import PayloadNotEncodable, check_payload
from notaflow.errors import InvalidDocument
from notaflow.focus_wording import NOT_AN_OBJECT, NOT_UTF8, dotted, invalid, missing, reject

__all__ = [
    "DEFAULTS_DOC",
    "MOTIVO_MAX",
    "MOTIVO_MIN",
    "NOT_AN_OBJECT",
    "normalize_nfce",
    "omitted_fields",
    "omitted_notices",
    "validate_motivo",
]

MOTIVO_MIN, MOTIVO_MAX = 15, 255

# (field, default, why): the README lists these; the schema carries the same `default`s.
DEFAULTS_DOC: Final[tuple[tuple[str, object, str], ...]] = (
    ("tipo_operacao", 1, "1 = saída: an NFC-e records a sale to a consumer"),
    ("finalidade_nfe", 1, "1 = NF-e normal"),
    ("destino_operacao", 1, "1 = operação interna: a consumer buys in the shop's own state"),
    ("indicador_consumidor_final", 1, "1 = consumidor final, which an NFC-e always has"),
    ("tipo_impressao", 4, "4 = DANFE NFC-e"),
)
_DEFAULTS: Final[dict[str, object]] = {field: default for field, default, _ in DEFAULTS_DOC}

_Check = Callable[[str, Any], Any]

_PAYMENTS: Final = "forma_pagamento"
_PAYMENTS_RENAMED: Final = "forma_de_pagamento"

_SCHEMA: Final = schemas.load("nfce")
_VALIDATOR: Final = schemas.validator("nfce")

# What a `pattern` failure means, by the name of the field (or of the array holding it).
_PATTERN_MESSAGES: Final[dict[str, str]] = {
    "ncm": "NCM deve ter de 2 a 8 dígitos",
    "cfop": "CFOP deve ter 4 dígitos",
    "cest": "CEST deve ter 7 dígitos",
    "codigo_ean": "deve ter de 8 a 14 dígitos ou ser SEM GTIN",
    "ean_unidade_trib": "deve ter de 8 a 14 dígitos ou ser SEM GTIN",
    "cpf_cnpj": (
        "informe o CPF (11 dígitos) ou o CNPJ (14 caracteres); de estrangeiro, o documento (5 a "
        '20 letras ou dígitos) com "pessoa_fisica_juridica": "foreign"'
    ),
    "cnpj_credenciadora": "CNPJ deve ter 14 caracteres",
    "codigo_municipio": "código IBGE de município deve ter 7 dígitos",
    "codigo_municipal": "código IBGE de município deve ter 7 dígitos",
    "codigo_pais": "código de país da tabela do BACEN deve ter de 1 a 4 dígitos",
    "num_item_pedido": "deve ser um número inteiro",
    "quantidade_volumes": "deve ser um número inteiro",
    "inscricao_estadual": "deve ser ISENTO ou ter de 2 a 14 dígitos",
    "lista_autorizacao": "informe o CPF (11 dígitos) ou o CNPJ (14 dígitos)",
    "uf": "deve ser a sigla da UF com 2 letras maiúsculas",
    "cep": "CEP deve ter 8 dígitos",
    "telefone": "deve ter de 6 a 14 dígitos",
    "email": "não é um endereço de e-mail válido",
}
_TYPE_NAMES: Final[dict[str, str]] = {
    "object": "um objeto",
    "array": "uma lista",
    "string": "um texto",
    "number": "um número",
    "integer": "um número inteiro",
}
# Foreign customer id (idEstrangeiro), by the official schema's document-id rule.
_FOREIGN_ID: Final = re.compile(r"[0-9A-Za-z]{5,20}")
_FOREIGN: Final = "foreign"


# --- step 1: schema errors in Focus's words ----------------------------------------------


def _resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        node = _SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def _node(path: list[str | int]) -> Mapping[str, Any] | None:
    """The schema of the value at `path`, None where only `qualquer` applies."""
    node: Mapping[str, Any] | None = _resolve(_SCHEMA)
    for part in path:
        if node is None:
            return None
        child = node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part)
        node = _resolve(child) if child is not None else None
    return node


def _required(path: list[str | int]) -> bool:
    if not path or isinstance(path[-1], int):
        return False
    parent = _node(path[:-1])
    return parent is not None and path[-1] in parent.get("required", ())


def _sort_key(path: list[str | int]) -> tuple[str, ...]:
    # Indices compare as numbers: produtos.2 comes before produtos.10.
    return tuple(f"{part:09d}" if isinstance(part, int) else part for part in path)


def _is_code_text(text: str, codes: set[int]) -> bool:
    return text.isdigit() and int(text) in codes


def _literal(option: object) -> str:
    if option is True or option is False:
        return "true" if option else "false"
    return f'"{option}"' if isinstance(option, str) else str(option)


def _describe(error: jsonschema_rs.ValidationError) -> tuple[tuple[str, ...], str, str]:
    kind = error.kind
    path = list(error.instance_path)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        path.append(kind.property)
        field = dotted(path)
        return _sort_key(path), field, missing(field)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.OneOfNotValid):
        return (_PAYMENTS,), _PAYMENTS, missing(_PAYMENTS)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.OneOfMultipleValid):
        why = f'informe "{_PAYMENTS}" ou "{_PAYMENTS_RENAMED}", não ambos'
        return (_PAYMENTS,), _PAYMENTS, invalid(_PAYMENTS, why)
    field = dotted(path)
    return _sort_key(path), field, _message(error, path, field)


def _message(error: jsonschema_rs.ValidationError, path: list[str | int], field: str) -> str:
    kind = error.kind
    value = error.instance
    node = _node(path) or {}
    if value == "":
        if _required(path):
            return missing(field)
        return invalid(field, "não pode ser vazio; omita o campo ou envie null")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Type):
        expected = " ou ".join(_TYPE_NAMES.get(t, t) for t in kind.types if t != "null")
        return invalid(field, f"deve ser {expected}")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Enum):
        # An integer code also takes its digit string: name each code once.
        codes = {option for option in kind.options if type(option) is int}
        options = ", ".join(
            _literal(option)
            for option in kind.options
            if option is not None and not (isinstance(option, str) and _is_code_text(option, codes))
        )
        return invalid(field, f"valores aceitos {options}")
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.MinItems | jsonschema_rs.ValidationErrorKind.MaxItems,
    ):
        low, high = node.get("minItems", 0), node.get("maxItems")
        return invalid(field, f"deve ter entre {low} e {high} itens")
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.MinLength | jsonschema_rs.ValidationErrorKind.MaxLength,
    ):
        low, high = node.get("minLength", 0), node.get("maxLength")
        if high is None:
            return invalid(field, f"tamanho mínimo {low} caracteres")
        if not low:
            return invalid(field, f"tamanho máximo {high} caracteres")
        return invalid(field, f"tamanho deve estar entre {low} e {high} caracteres")
    name = next((part for part in reversed(path) if isinstance(part, str)), "")
    if "pattern" in node and name in _PATTERN_MESSAGES:
        # An integer code out of range says what the digit-string form says.
        return invalid(field, _PATTERN_MESSAGES[name])
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Minimum):
        return invalid(field, f"deve ser maior ou igual a {kind.limit}")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.ExclusiveMinimum):
        return invalid(field, f"deve ser maior que {kind.limit}")
    if name in _PATTERN_MESSAGES:
        return invalid(field, _PATTERN_MESSAGES[name])
    return invalid(field, "valor não aceito")


def _first_schema_error(raw: dict[str, Any]) -> InvalidDocument:
    described = [_describe(error) for error in _VALIDATOR.iter_errors(raw)]
    if not described:  # is_valid and iter_errors disagree: never seen, still answer sanely
        return InvalidDocument("", NOT_AN_OBJECT)
    _, field, message = min(described)
    return InvalidDocument(field, message)


# --- step 2: fiscal checks ----------------------------------------------------------------


_NOT_CPF_CNPJ: Final = _PATTERN_MESSAGES["cpf_cnpj"]


def _cpf(field: str, number: str) -> str:
    if not (len(number) == 11 and number.isdigit()):
        raise reject(field, "informe o CPF (11 dígitos)")
    if not valid_cpf(number):
        raise reject(field, "CPF com dígito verificador inválido")
    return number


def _cnpj_number(field: str, number: str) -> str:
    if len(number) != 14:
        raise reject(field, "informe o CNPJ (14 caracteres)")
    if not valid_cnpj(number):
        raise reject(field, "CNPJ com dígito verificador inválido")
    return number


def _document_check(kind: object) -> _Check:
    """The check of `cliente.cpf_cnpj` for the customer's `pessoa_fisica_juridica`."""

    def check(field: str, value: Any) -> Any:
        if kind == _FOREIGN:
            # Kept as sent: a foreign id is not a Brazilian number to clean up.
            if not _FOREIGN_ID.fullmatch(value):
                raise reject(field, "documento de estrangeiro deve ter de 5 a 20 letras ou dígitos")
            return value
        number = clean_document(value)
        if kind == "person":
            return _cpf(field, number)
        if kind == "company":
            return _cnpj_number(field, number)
        if len(number) == 11 and number.isdigit():
            return _cpf(field, number)
        if len(number) == 14:
            return _cnpj_number(field, number)
        raise reject(field, _NOT_CPF_CNPJ)

    return check


def _cpf_or_cnpj(field: str, value: Any) -> Any:
    return _cpf(field, value) if len(value) == 11 else _cnpj_number(field, value)


def _cnpj(field: str, value: str) -> str:
    if not valid_cnpj(value):
        raise reject(field, "CNPJ com dígito verificador inválido")
    return value


def _codigo_municipio(field: str, value: Any) -> Any:
    if not valid_ibge_municipio(str(value)):
        raise reject(field, "código IBGE de município inválido")
    return value


def _uf(field: str, value: str) -> str:
    if not valid_uf(value):
        raise reject(field, "UF inexistente")
    return value


def _fiscal(doc: dict[str, Any], errors: list[tuple[tuple[str, ...], InvalidDocument]]) -> None:
    """Run the checks on `doc` (already nulls-free and schema-valid), replacing each value by
    its canonical form; failures are appended to `errors`."""

    def check(holder: Any, key: str, path: list[str | int], function: _Check) -> None:
        if not isinstance(holder, dict) or key not in holder:
            return
        try:
            holder[key] = function(dotted([*path, key]), holder[key])
        except InvalidDocument as error:
            errors.append((_sort_key([*path, key]), error))

    def check_item(holder: list[Any], index: int, path: list[str | int], function: _Check) -> None:
        try:
            holder[index] = function(dotted([*path, index]), holder[index])
        except InvalidDocument as error:
            errors.append((_sort_key([*path, index]), error))

    cliente = doc.get("cliente")
    if isinstance(cliente, dict):
        kind = cliente.get("pessoa_fisica_juridica")
        check(cliente, "cpf_cnpj", ["cliente"], _document_check(kind))
    transporte = doc.get("transporte")
    for holder, parent, key in (
        (cliente, "cliente", "endereco"),
        (transporte, "transporte", "endereco_entrega"),
    ):
        endereco = holder.get(key) if isinstance(holder, dict) else None
        check(endereco, "codigo_municipio", [parent, key], _codigo_municipio)
        check(endereco, "uf", [parent, key], _uf)
    authorized = doc.get("lista_autorizacao") or []
    for index in range(len(authorized)):
        check_item(authorized, index, ["lista_autorizacao"], _cpf_or_cnpj)
    for index, payment in enumerate(doc.get(_PAYMENTS, ())):
        cartao = payment.get("cartao")
        check(cartao, "cnpj_credenciadora", [_PAYMENTS, index, "cartao"], _cnpj)


def _absent(value: object) -> bool:
    return value is None or value == ""


def _without_absent(value: Any) -> Any:
    # Only members of objects: an item of a list cannot go without shifting the others (the
    # schema refuses "" there).
    if isinstance(value, dict):
        return {key: _without_absent(item) for key, item in value.items() if not _absent(item)}
    if isinstance(value, list):
        return [_without_absent(item) for item in value]
    return value


def omitted_fields(raw: object, path: str = "") -> list[str]:
    """The dotted paths of the `""` members `normalize_nfce` leaves out of a valid document, in
    document order: the answer tells the client these did not go to Emites-Client."""
    found: list[str] = []
    if isinstance(raw, dict):
        for key, item in raw.items():
            where = f"{path}.{key}" if path else str(key)
            if item == "":
                found.append(where)
            else:
                found += omitted_fields(item, where)
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            found += omitted_fields(item, f"{path}.{index}" if path else str(index))
    return found


def omitted_notices(raw: object) -> list[str]:
    """`omitted_fields` in the words of the answer's `avisos`."""
    return [f'Parâmetro "{f}" vazio: omitido no envio à Emites-Client' for f in omitted_fields(raw)]


def _is_integer_code(node: Mapping[str, Any]) -> bool:
    types = node.get("type", ())
    if "integer" in (types if isinstance(types, list) else [types]):
        return True
    return any(type(option) is int for option in node.get("enum", ()))


def _as_integers(value: Any, node: Mapping[str, Any] | None) -> Any:
    """`value` with every field the schema types as an integer code sent as the integer: the
    official schema's type, whatever form (digit string, 7.0) the client wrote it in."""
    if node is None:
        return value
    if _is_integer_code(node):
        if isinstance(value, str) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        return value
    if isinstance(value, dict):
        properties = node.get("properties", {})
        return {
            key: _as_integers(item, _resolve(properties[key]) if key in properties else None)
            for key, item in value.items()
        }
    if isinstance(value, list) and "items" in node:
        items = _resolve(node["items"])
        return [_as_integers(item, items) for item in value]
    return value


# --- the entry points ---------------------------------------------------------------------


def normalize_nfce(raw: object) -> dict[str, Any]:
    """Validate a CREATE_NFCE document (a parsed JSON body) and return it ready for Emites.

    The result is a new dict without null or `""` members (`omitted_fields` lists the `""`);
    integer codes as integers (a client may write "3170206" for 3170206); the payments under
    `forma_pagamento` (the client may send `forma_de_pagamento`, the maintainers' later name,
    but not both); a Brazilian `cliente.cpf_cnpj` without punctuation (CNPJ letters
    uppercased), a foreign one as sent; the defaults of `DEFAULTS_DOC` where the client left
    the field out; everything else as sent, unknown fields included. Normalising the result
    again gives the same dict.

    Raises InvalidDocument naming the first offending field.
    """
    if not isinstance(raw, dict):
        raise InvalidDocument("", NOT_AN_OBJECT)
    try:
        if not _VALIDATOR.is_valid(raw):
            raise _first_schema_error(raw)
    except UnicodeEncodeError:  # lone surrogates, which json.loads lets through from "\ud800"
        raise InvalidDocument("", NOT_UTF8) from None
    except ValueError:  # a value JSON cannot hold (bytes, a non-string key): not a JSON body
        raise InvalidDocument("", NOT_AN_OBJECT) from None
    doc: dict[str, Any] = _as_integers(_without_absent(raw), _resolve(_SCHEMA))
    if _PAYMENTS_RENAMED in doc:
        doc[_PAYMENTS] = doc.pop(_PAYMENTS_RENAMED)
    errors: list[tuple[tuple[str, ...], InvalidDocument]] = []
    _fiscal(doc, errors)
    try:
        check_payload(doc)
    except PayloadNotEncodable as exc:
        why = f'contém "{exc.char}", caractere fora do ISO-8859-1 aceito pela Emites'
        if exc.char is None:
            why = "valor não aceito"
        parts = [int(part) if part.isdigit() else part for part in exc.field.split(".")]
        errors.append((_sort_key(parts), reject(exc.field, why)))
    if errors:
        raise min(errors, key=lambda item: (item[0], item[1].message))[1]
    for field, default in _DEFAULTS.items():
        doc.setdefault(field, default)
    return doc


def validate_motivo(body: object) -> str | None:
    """The Emites `motivo` of a cancellation, from the Focus-dialect `justificativa`, trimmed.

    Emites makes the reason optional (absent or null gives None), but when present it must
    have 15 to 255 characters; an empty string is refused rather than taken for absent.
    """
    if not isinstance(body, dict):
        raise InvalidDocument("", NOT_AN_OBJECT)
    value = body.get("justificativa")
    if value is None:
        return None
    if not isinstance(value, str):
        raise reject("justificativa", "deve ser um texto")
    # Trimmed first: padding with spaces must not turn a too-short reason into a valid one.
    text = value.strip()
    if not MOTIVO_MIN <= len(text) <= MOTIVO_MAX:
        raise InvalidDocument(
            "justificativa",
            f'Parâmetro "justificativa" deve ter entre {MOTIVO_MIN} e {MOTIVO_MAX} caracteres',
        )
    try:
        check_payload(text)
    except PayloadNotEncodable as exc:
        why = f'contém "{exc.char}", caractere fora do ISO-8859-1 aceito pela Emites'
        raise reject("justificativa", why) from None
    return text
