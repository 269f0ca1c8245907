"""Pure checks of Brazilian document numbers: CPF, CNPJ, IBGE municipality codes, UFs and
NF-e/NFC-e access keys.

Every function takes a string and answers without I/O, so the validators that use them stay
pure and can be tested exhaustively. CPF and CNPJ check digits come from python-stdnum (which
already knows the alphanumeric CNPJ of July 2026); the IBGE and access-key rules are not in
stdnum and are written here following `shared/specs/validation.md`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from stdnum.br import cnpj as _stdnum_cnpj
from stdnum.br import cpf as _stdnum_cpf

__all__ = [
    "IBGE_EXCEPTIONS",
    "IBGE_UF_CODES",
    "UFS",
    "access_key_check_digit",
    "clean_document",
    "ibge_check_digit",
    "only_digits",
    "valid_access_key",
    "valid_cnpj",
    "valid_cpf",
    "valid_ibge_municipio",
    "valid_uf",
]

# Explicit ASCII classes: `\d` and str.isdigit() also accept other scripts' digits ("٣").
_NON_DIGIT = re.compile(r"[^0-9]")
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")
_SEVEN_DIGITS = re.compile(r"[0-9]{7}")

# The 26 states, the Federal District, and "EX" (exterior), which NF-e and most municipal
# layouts use for foreign addresses.
# fmt: off
UFS: frozenset[str] = frozenset({
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA",
    "PB", "PR", "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO", "EX",
})

# First two digits of every IBGE municipality code (and of every access key).
IBGE_UF_CODES: frozenset[str] = frozenset({
    "11", "12", "13", "14", "15", "16", "17", "21", "22", "23", "24", "25", "26", "27",
    "28", "29", "31", "32", "33", "35", "41", "42", "43", "50", "51", "52", "53",
})
# fmt: on

# Official codes that break the check-digit rule (municipalities created after the rule, whose
# codes IBGE assigned by hand) and 9999999, which fiscal layouts use for "abroad".
IBGE_EXCEPTIONS: frozenset[str] = frozenset(
    {
        "2201919",
        "2201988",
        "2202251",
        "2611533",
        "3117836",
        "3152131",
        "4305871",
        "5203939",
        "5203962",
        "9999999",
    }
)

# CNPJ positions (0-based, inside the 44 characters) of an access key: UF(2) AAMM(4) CNPJ(14).
_KEY_CNPJ = slice(6, 20)
_KEY_MODELS = frozenset({"55", "65"})  # NF-e, NFC-e
_KEY_CNPJ_CHARS = re.compile(r"[0-9A-Z]{12}[0-9]{2}")


def only_digits(value: str) -> str:
    """The ASCII digits of `value`, in order ("31999-000" -> "31999000")."""
    return _NON_DIGIT.sub("", value)


def clean_document(value: str) -> str:
    """A CPF or CNPJ without punctuation, letters uppercased.

    Focus says "caracteres não numéricos são ignorados", but from July 2026 a CNPJ may carry
    letters, so only what is neither an ASCII letter nor a digit is dropped.
    """
    return _NON_ALNUM.sub("", value).upper()


def valid_cpf(value: str) -> bool:
    """11 digits with both mod-11 check digits right; punctuation is ignored.

    stdnum accepts all-equal digits such as 11111111111 (their check digits happen to match),
    which the Receita Federal does not issue, so they are refused here.
    """
    number = clean_document(value)
    if len(number) != 11 or not number.isascii() or not number.isdigit():
        return False
    if len(set(number)) == 1:
        return False
    return _stdnum_valid_cpf(number)


def valid_cnpj(value: str) -> bool:
    """14 characters (the first 12 may be letters from July 2026) with both check digits right;
    punctuation is ignored and letters are compared uppercase."""
    number = clean_document(value)
    return len(number) == 14 and _stdnum_valid_cnpj(number)


# stdnum re-cleans and checks Unicode on every call, about 10 µs per number: most of what the
# ingress spends on a document. The same prestadores (and many tomadores) come back all day, so
# the answers for recent numbers are kept; the cache is bounded, and the functions are pure.
@lru_cache(maxsize=16384)
def _stdnum_valid_cpf(number: str) -> bool:
    return bool(_stdnum_cpf.is_valid(number))


@lru_cache(maxsize=16384)
def _stdnum_valid_cnpj(number: str) -> bool:
    return bool(_stdnum_cnpj.is_valid(number))


def ibge_check_digit(first6: str) -> str:
    """Check digit of an IBGE municipality code from its first six digits: weights 1,2,1,2,1,2,
    add the digits of each product, and take what completes the sum to a multiple of ten."""
    if len(first6) != 6 or not first6.isascii() or not first6.isdigit():
        raise ValueError(f"expected 6 digits, got {first6!r}")
    total = 0
    for index, char in enumerate(first6):
        product = int(char) * (1 if index % 2 == 0 else 2)
        total += product // 10 + product % 10
    return str((10 - total % 10) % 10)


@lru_cache(maxsize=8192)  # Brazil has about 5,570 municipalities: every answer fits
def valid_ibge_municipio(code: str) -> bool:
    """A 7-digit IBGE municipality code: a real UF prefix and the right check digit, or one of
    `IBGE_EXCEPTIONS`."""
    if not _SEVEN_DIGITS.fullmatch(code):
        return False
    if code in IBGE_EXCEPTIONS:
        return True
    return code[:2] in IBGE_UF_CODES and ibge_check_digit(code[:6]) == code[6]


def valid_uf(value: str) -> bool:
    """A state abbreviation ("PR", "SP", ...) or "EX"; uppercase only, callers normalise."""
    return value in UFS


def _key_value(char: str) -> int:
    # ASCII - 48 is the same value a digit already has, and is how the Receita Federal
    # extends mod-11 to the letters of the alphanumeric CNPJ.
    return ord(char) - 48


def access_key_check_digit(first43: str) -> str:
    """The 44th character of an NF-e/NFC-e access key: mod 11 with weights 2..9 repeating from
    the right; a remainder of 0 or 1 gives 0."""
    if len(first43) != 43 or not _valid_key_body(first43):
        raise ValueError(f"expected the first 43 characters of an access key, got {first43!r}")
    total = 0
    for position, char in enumerate(reversed(first43)):
        total += _key_value(char) * (2 + position % 8)
    remainder = total % 11
    return "0" if remainder < 2 else str(11 - remainder)


def _valid_key_body(first43: str) -> bool:
    # Digits everywhere except the emitter's CNPJ, which may be alphanumeric from July 2026.
    if not first43.isascii():
        return False
    outside_cnpj = first43[: _KEY_CNPJ.start] + first43[_KEY_CNPJ.stop :]
    return outside_cnpj.isdigit() and bool(_KEY_CNPJ_CHARS.fullmatch(first43[_KEY_CNPJ]))


def valid_access_key(key: str) -> bool:
    """44 characters laid out as UF(2) AAMM(4) CNPJ(14) model(2) série(3) número(9) tpEmis(1)
    código(8) DV(1): a known UF code, model 55 (NF-e) or 65 (NFC-e), and the right DV."""
    if len(key) != 44 or not _valid_key_body(key[:43]) or not key[43].isdigit():
        return False
    if key[:2] not in IBGE_UF_CODES or key[20:22] not in _KEY_MODELS:
        return False
    return access_key_check_digit(key[:43]) == key[43]
