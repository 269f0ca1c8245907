"""Validation and normalisation of Focus NFe NFS-e commands (`/v2/nfse`, seed 001 and 2026).

`normalize_nfse` is the one entry point the ingress and the Kafka consumers share. It runs in
three steps, cheapest first because the ingress calls it for every request:

1. the JSON Schema `schemas/nfse.schema.json` through the compiled jsonschema_rs validator; the
   detailed (slow) error list is only computed when the fast `is_valid` says no. Only then are
   the values real clients send for "no value" (null, false outside booleans, "") removed from
   the known fields and the schema asked again (see `without_absent`): a clean document pays
   nothing for that leniency;
2. fiscal checks the schema cannot express: CPF/CNPJ check digits, IBGE municipality codes,
   real UFs, calendar dates;
3. a new dict with the known fields in one canonical form (see `normalize_nfse`), every other
   field carried exactly as sent (Focus is the authority on those; `carry` bounds them), and
   the defaults of `DEFAULTS_DOC` filled in.

The known fields are read from the schema itself, so a field added there is validated and
kept without touching this module; a new `$defs` entry needs a handler here (the import fails
loudly until it has one) and should get a message in `_STATIC_DEF_MESSAGES`.

Every failure is `InvalidDocument(field, message)`, with Focus's Portuguese wording and the
dotted path of the first offending field (the smallest path, so the answer is deterministic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import jsonschema_rs

from notaflow import schemas
from notaflow.brdocs import (
    clean_document,
    only_digits,
    valid_cnpj,
    valid_cpf,
    valid_ibge_municipio,
    valid_uf,
)
from notaflow.errors import InvalidDocument
from notaflow.focus_wording import NOT_AN_OBJECT, NOT_UTF8, dotted, invalid, missing, reject

__all__ = [
    "CARRY_MAX_DEPTH",
    "CARRY_MAX_ITEMS",
    "CARRY_MAX_KEYS",
    "CARRY_MAX_TEXT",
    "DEFAULTS_DOC",
    "NOT_AN_OBJECT",
    "carry",
    "compile_plan",
    "def_messages",
    "normalize_nfse",
    "normalize_with",
    "validate_justificativa",
    "validate_ref",
    "without_absent",
]


# (field, default, why): the README lists these. A default whose field has no dot is applied
# as is; servico.codigo_municipio is copied from the prestador (see `_apply_defaults`).
DEFAULTS_DOC: Final[tuple[tuple[str, object, str], ...]] = (
    (
        "natureza_operacao",
        "1",
        "the seed marks it required yet gives 'Valor padrão: 1' and its JSON example omits it",
    ),
    (
        "optante_simples_nacional",
        False,
        "the seed marks it required, but its JSON, Java, Ruby and JS examples omit it",
    ),
    (
        "incentivador_cultural",
        False,
        "the seed gives 'Valor padrão: false'",
    ),
    (
        "servico.codigo_municipio",
        "prestador.codigo_municipio",
        "the seed marks it required, but its JSON, Ruby and JS examples omit it; the service "
        "is most often rendered where the prestador is established",
    ),
)
_TOP_LEVEL_DEFAULTS: Final[dict[str, object]] = {
    field: default for field, default, _ in DEFAULTS_DOC if "." not in field
}

# Bounds of what is carried to the provider unvalidated (fields notaflow does not know). The body
# limit bounds the bytes; these bound the shape, so a document stays something a provider, the
# bus and the database handle in one piece: nesting below the unknown field, keys of one object
# or items of one array, values carried by one document in all, characters of one text or key.
CARRY_MAX_DEPTH: Final = 8
CARRY_MAX_KEYS: Final = 200
CARRY_MAX_ITEMS: Final = 2000
CARRY_MAX_TEXT: Final = 20_000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

_REF = re.compile(r"[A-Za-z0-9]+")
_REF_MAX = 50
_JUSTIFICATIVA_MIN, _JUSTIFICATIVA_MAX = 15, 255

# Mirrors the `data_emissao` pattern of the schema, with groups, to check the calendar.
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,9})?)?"
    r"(Z|[+-][0-9]{1,2}(?::?[0-9]{2})?)?)?"
)


# --- step 2 and 3: one handler per schema definition ---------------------------------------
# A handler gets a value the schema already accepted, with its dotted path for errors, and
# returns the canonical value or raises InvalidDocument for a fiscal rule.

_Handler = Callable[[str, Any], object]


def _text(path: str, value: str) -> str:
    # Free text is the one place a lone surrogate (json.loads turns "\ud800" into one) gets
    # past the schema; it would fail later, when the bus or the database encodes UTF-8.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise reject(path, "contém caracteres inválidos") from None
    return value


def _boolean(path: str, value: bool | str | int | float) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value in ("true", "1")
    return value == 1


def _code(path: str, value: str | int | float) -> str:
    # The schema allows "1" or 1 (and so 1.0, which JSON Schema counts as equal to 1).
    return value if isinstance(value, str) else str(int(value))


def _decimal(path: str, value: str | int | float) -> str:
    # Keep the client's scale: "1.00" stays "1.00". A float goes through its shortest repr,
    # which is what the client wrote (1.0 -> "1.0", 2.92 -> "2.92"), never its binary value.
    number = Decimal(value) if isinstance(value, str | int) else Decimal(repr(value))
    if number.is_zero():
        number = number.copy_abs()  # -0.0 passes "minimum: 0"; "-0.0" would not pass again
    return format(number, "f")


def _cnpj(path: str, value: str) -> str:
    number = clean_document(value)
    if len(number) != 14:
        raise reject(path, "CNPJ deve ter 14 caracteres")
    if not valid_cnpj(number):
        raise reject(path, "CNPJ com dígito verificador inválido")
    return number


def _cpf(path: str, value: str) -> str:
    number = clean_document(value)
    if len(number) != 11 or not number.isdigit():
        raise reject(path, "CPF deve ter 11 dígitos")
    if not valid_cpf(number):
        raise reject(path, "CPF com dígito verificador inválido")
    return number


def _codigo_municipio(path: str, value: str) -> str:
    if not valid_ibge_municipio(value):
        raise reject(path, "código IBGE de município inválido")
    return value


def _uf(path: str, value: str) -> str:
    uf = value.upper()
    if not valid_uf(uf):
        raise reject(path, "UF inexistente")
    return uf


def _digits(path: str, value: str) -> str:
    # inscricao_municipal and cep: the seed says non-digits are ignored.
    return only_digits(value)


def _data_emissao(path: str, value: str) -> str:
    # Kept as the client wrote it (municipalities differ in whether they use the time at all);
    # only checked to be a real date and offset.
    if not _real_date(value):
        raise reject(path, _DEF_MESSAGES["data_emissao"])
    return value


def _real_date(value: str) -> bool:
    match = _DATE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError:
        return False
    if offset is None or offset == "Z":
        return True
    digits = offset[1:].replace(":", "")
    hours, minutes = (digits[:-2], digits[-2:]) if len(digits) > 2 else (digits, "0")
    return int(hours) < 24 and int(minutes) < 60


def _kept(path: str, value: str) -> str:
    return value  # the schema's pattern is the whole check (digits only)


_HANDLERS: Final[dict[str, _Handler]] = {
    "data_emissao": _data_emissao,
    "codigo_numerico": _kept,
    "codigo_tributacao_nacional": _kept,
    "nif": _text,
    "motivo_ausencia_nif": _code,
    "natureza_operacao": _code,
    "regime_especial_tributacao": _code,
    "booleano": _boolean,
    "decimal": _decimal,
    "cnpj": _cnpj,
    "cpf": _cpf,
    "codigo_municipio": _codigo_municipio,
    "inscricao_municipal": _digits,
    "uf": _uf,
    "cep": _digits,
}

# What a schema failure inside a definition means to the client, besides a wrong JSON type
# (answered first, by `_describe`). Enum definitions get "valores aceitos ..." built from the
# schema; cnpj and cpf can only fail on type, their format is a fiscal check.
_STATIC_DEF_MESSAGES: Final[dict[str, str]] = {
    "data_emissao": "deve ser uma data ISO 8601, por exemplo 2016-12-25T12:00-0300",
    "booleano": "deve ser true ou false",
    "decimal": "deve ser um número decimal",
    "codigo_municipio": "código IBGE de município inválido",
    "inscricao_municipal": "deve conter dígitos",
    "uf": "deve ser a sigla da UF com 2 letras",
    "cep": "CEP deve ter 8 dígitos",
    "codigo_numerico": "deve ser um texto só com dígitos (até 20)",
    "codigo_tributacao_nacional": "deve ter 6 dígitos, por exemplo 010701",
}


def def_messages(defs: Mapping[str, Any]) -> dict[str, str]:
    messages = dict(_STATIC_DEF_MESSAGES)
    for name, definition in defs.items():
        if name not in messages and "enum" in definition:
            accepted = dict.fromkeys(str(option) for option in definition["enum"])
            messages[name] = "valores aceitos " + ", ".join(accepted)
    return messages


@dataclass(frozen=True)
class _Object:
    """Each known field of an object: its dotted path (built once here, not per request) and
    its handler, or the plan of a nested object. Free-text fields are kept apart because they
    are most of a document and, when ASCII, need no call at all."""

    fields: Mapping[str, tuple[str, _Handler | _Object]]
    prefix: str = ""
    required: frozenset[str] = frozenset()


def compile_plan(
    schema: Mapping[str, Any], prefix: str = "", defs: Mapping[str, Any] | None = None
) -> _Object:
    """The normalisation plan of a document schema (this one, or another Focus document's
    built from the same `$defs` names, such as `notaflow.nfsen`'s). An enum definition without
    a handler of its own is a code (`_code`)."""
    defs = schema["$defs"] if defs is None else defs
    fields: dict[str, tuple[str, _Handler | _Object]] = {}
    for name, sub in schema["properties"].items():
        path = prefix + name
        if "properties" in sub:
            fields[name] = (path, compile_plan(sub, path + ".", defs))
        elif "$ref" in sub:
            definition = sub["$ref"].removeprefix("#/$defs/")
            if definition in _HANDLERS:
                fields[name] = (path, _HANDLERS[definition])
            elif "enum" in defs.get(definition, {}):
                fields[name] = (path, _code)
            else:
                raise RuntimeError(f"schema definition {definition!r} has no handler")
        elif sub.get("type") == "string":
            fields[name] = (path, _text)
        else:
            raise RuntimeError(f"nfse schema property {name!r} needs a $ref or type string")
    return _Object(fields, prefix, frozenset(schema.get("required", ())))


_SCHEMA: Final = schemas.load("nfse")
_VALIDATOR: Final = schemas.validator("nfse")
_DEF_MESSAGES: Final = def_messages(_SCHEMA["$defs"])
_PLAN: Final = compile_plan(_SCHEMA)


# --- step 1: schema errors in Focus's words ----------------------------------------------


def _definition(schema_path: list[str | int]) -> str | None:
    """The innermost `$defs` entry the failing keyword belongs to, if any."""
    for index in range(len(schema_path) - 2, -1, -1):
        if schema_path[index] == "$defs":
            return str(schema_path[index + 1])
    return None


def _describe(error: jsonschema_rs.ValidationError, messages: Mapping[str, str]) -> tuple[str, str]:
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        field = dotted([*error.instance_path, kind.property])
        return field, missing(field)
    field = dotted(error.instance_path)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MinLength):
        return field, missing(field)  # "" is how form-built clients leave a field out
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Type):
        expected = "um objeto" if "object" in kind.types else "um texto"
        return field, invalid(field, f"deve ser {expected}")
    definition = _definition(error.schema_path)
    if definition is not None and definition in messages:
        return field, invalid(field, messages[definition])
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MaxLength):
        return field, invalid(field, f"tamanho máximo {kind.limit} caracteres")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Not):
        return field, invalid(field, "informe apenas um entre cpf, cnpj e nif")
    return field, invalid(field, "valor não aceito")


def _first_schema_error(
    raw: dict[str, Any], validator: jsonschema_rs.Validator, messages: Mapping[str, str]
) -> InvalidDocument:
    described = [_describe(error, messages) for error in validator.iter_errors(raw)]
    if not described:  # is_valid and iter_errors disagree: never seen, still answer sanely
        return InvalidDocument("", NOT_AN_OBJECT)
    field, message = min(described)
    return InvalidDocument(field, message)


# --- the entry points ---------------------------------------------------------------------


def _absent(value: object, node: object) -> bool:
    """What ERPs send for "no value": null, "", and false where false is not itself a value."""
    return value is None or value == "" or (value is False and node is not _boolean)


def without_absent(raw: Mapping[str, Any], plan: _Object | None = None) -> dict[str, Any]:
    """`raw` without the known fields whose value means absent (`_absent`), at every level of
    the known objects. Unknown fields are left alone: they go to the provider as sent. A
    required field removed here is then reported missing, by name, by the schema."""
    plan = _PLAN if plan is None else plan
    out: dict[str, Any] = {}
    for name, value in raw.items():
        known = plan.fields.get(name)
        if known is None:
            out[name] = value
            continue
        node = known[1]
        if _absent(value, node):
            continue
        out[name] = (
            without_absent(value, node)
            if isinstance(node, _Object) and isinstance(value, dict)
            else value
        )
    return out


def carry(path: str, value: object, budget: list[int] | None = None, depth: int = 0) -> object:
    """A value of a field notaflow does not know, checked against the carry bounds and returned
    unchanged (the same object). `budget` counts the values a document may still carry."""
    if budget is None:
        budget = [CARRY_MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise reject(path, f"o documento leva no máximo {CARRY_MAX_ITEMS} valores não validados")
    if isinstance(value, str):
        if len(value) > CARRY_MAX_TEXT:
            raise reject(path, f"tamanho máximo {CARRY_MAX_TEXT} caracteres")
        _text(path, value)
    elif isinstance(value, dict | list):
        if depth >= CARRY_MAX_DEPTH:
            raise reject(path, f"aninhamento maior que {CARRY_MAX_DEPTH} níveis")
        if len(value) > CARRY_MAX_KEYS:
            raise reject(path, f"no máximo {CARRY_MAX_KEYS} itens")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or len(key) > 200:
                    raise reject(path, "nome de campo inválido")
                carry(f"{path}.{_text(path, key)}", item, budget, depth + 1)
        else:
            for index, item in enumerate(value):
                carry(f"{path}.{index}", item, budget, depth + 1)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        # What the bus and the database write (orjson) holds 64 bits; json.loads (the Kafka
        # path of other publishers) takes any size.
        if not _INT_MIN <= value <= _INT_MAX:
            raise reject(path, "número inteiro fora do intervalo de 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise reject(path, "número não finito")
    else:
        raise reject(path, "não é um valor JSON")
    return value


def _normalize_object(
    raw: Mapping[str, Any],
    plan: _Object,
    errors: list[InvalidDocument] | None,
    budget: list[int],
) -> dict[str, Any]:
    """The known fields of `raw`, normalised, and the unknown ones carried. Driven by the
    client's keys rather than the plan because a document carries far fewer fields than the
    schema knows; the client's order is kept. With `errors`, failures are collected instead of
    raised (the slow path that finds the smallest one)."""
    out: dict[str, Any] = {}
    fields = plan.fields
    for name, value in raw.items():
        known = fields.get(name)
        if known is None:
            out[name] = _collect(carry, plan.prefix + name, value, budget, errors)
            continue
        path, node = known
        if node is _text and value.isascii():  # the schema made it a string: kept as is
            if value:
                out[name] = value
            elif name in plan.required:  # "" where the schema has no minLength: absent
                _collect(_required, path, value, budget, errors)
        elif isinstance(node, _Object):
            out[name] = _normalize_object(value, node, errors, budget)
        elif value == "":
            if name in plan.required:
                _collect(_required, path, value, budget, errors)
        elif errors is None:
            out[name] = node(path, value)
        else:
            try:
                out[name] = node(path, value)
            except InvalidDocument as error:
                errors.append(error)
    return out


def _required(path: str, value: object, budget: list[int]) -> object:
    raise InvalidDocument(path, missing(path))


def _collect(
    check: Callable[[str, Any, list[int]], object],
    path: str,
    value: object,
    budget: list[int],
    errors: list[InvalidDocument] | None,
) -> object:
    if errors is None:
        return check(path, value, budget)
    try:
        return check(path, value, budget)
    except InvalidDocument as error:
        errors.append(error)
        return value


def _apply_defaults(doc: dict[str, Any]) -> None:
    for field, default in _TOP_LEVEL_DEFAULTS.items():
        doc.setdefault(field, default)
    doc["servico"].setdefault("codigo_municipio", doc["prestador"]["codigo_municipio"])


def normalize_nfse(raw: object) -> dict[str, Any]:
    """Validate an NFS-e document (a parsed JSON body) and return it in canonical form.

    The result is a new dict in the client's field order in which, for the fields the schema
    knows, booleans are `bool` (ABRASF "2"/2 is false); decimals are decimal strings keeping
    the client's scale ("1.00", 1.0 -> "1.0", 3 -> "3"); enum codes are strings ("1"); CPF,
    CNPJ, CEP and inscrições municipais carry no punctuation (CNPJ letters uppercased); `uf` is
    uppercase; `data_emissao` is the client's string; null, "" (and false outside booleans)
    are absent; and the `DEFAULTS_DOC` defaults are filled in. Every field the schema does not
    know is carried as the same object the client sent, within the `CARRY_*` bounds.
    Normalising the result again gives the same dict.

    Raises InvalidDocument for anything else.
    """
    doc = normalize_with(raw, _VALIDATOR, _PLAN, _DEF_MESSAGES)
    _apply_defaults(doc)
    return doc


def normalize_with(
    raw: object,
    validator: jsonschema_rs.Validator,
    plan: _Object,
    messages: Mapping[str, str],
) -> dict[str, Any]:
    """Steps 1 to 3 for any Focus document schema built on these `$defs` (module docstring)."""
    if not isinstance(raw, dict):
        raise InvalidDocument("", NOT_AN_OBJECT)
    try:
        if not validator.is_valid(raw):
            # The slow path: maybe only "no value" markers (null, false, "") are in the way.
            raw = without_absent(raw, plan)
            if not validator.is_valid(raw):
                raise _first_schema_error(raw, validator, messages)
    except UnicodeEncodeError:  # lone surrogates, which json.loads lets through from "\ud800"
        raise InvalidDocument("", NOT_UTF8) from None
    except ValueError:  # a value JSON cannot hold (bytes, a non-string key): not a JSON body
        raise InvalidDocument("", NOT_AN_OBJECT) from None
    try:
        return _normalize_object(raw, plan, None, [CARRY_MAX_ITEMS])
    except InvalidDocument:
        # Rare: walk again collecting every error, to report the smallest path as the schema
        # step does, whatever order the client wrote its fields in.
        errors: list[InvalidDocument] = []
        _normalize_object(raw, plan, errors, [CARRY_MAX_ITEMS])
        raise min(errors, key=lambda error: (error.field, error.message)) from None


def validate_justificativa(body: object) -> str:
    """The `justificativa` of a cancellation body, trimmed; 15 to 255 characters."""
    if not isinstance(body, dict):
        raise InvalidDocument("", NOT_AN_OBJECT)
    value = body.get("justificativa")
    if value is None or value == "":
        raise InvalidDocument("justificativa", missing("justificativa"))
    if not isinstance(value, str):
        raise reject("justificativa", "deve ser um texto")
    # Trimmed first: padding with spaces must not turn a too-short reason into a valid one.
    text = value.strip()
    if not _JUSTIFICATIVA_MIN <= len(text) <= _JUSTIFICATIVA_MAX:
        raise InvalidDocument(
            "justificativa",
            f'Parâmetro "justificativa" deve ter entre {_JUSTIFICATIVA_MIN} e '
            f"{_JUSTIFICATIVA_MAX} caracteres",
        )
    return text


def validate_ref(ref: str | None) -> str:
    """A document reference: required, ASCII letters and digits only, at most 50 characters.

    The seed's own consulta example shows "nfs-2", but Focus's rule (and our issue) is letters
    and digits only; refs become Kafka keys and URL path segments, where that rule keeps them
    unambiguous.
    """
    if ref is None or ref == "":
        raise InvalidDocument("ref", missing("ref"))
    if not _REF.fullmatch(ref):
        raise reject("ref", "use apenas letras e números")
    if len(ref) > _REF_MAX:
        raise reject("ref", f"tamanho máximo {_REF_MAX} caracteres")
    return ref
