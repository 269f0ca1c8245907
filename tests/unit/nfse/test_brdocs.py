"""notaflow.brdocs against the known-good and known-bad values of shared/specs/validation.md."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.br import cnpj as stdnum_cnpj

from notaflow.brdocs import (
    IBGE_EXCEPTIONS,
    IBGE_UF_CODES,
    UFS,
    access_key_check_digit,
    clean_document,
    ibge_check_digit,
    only_digits,
    valid_access_key,
    valid_cnpj,
    valid_cpf,
    valid_ibge_municipio,
    valid_uf,
)

GOOD_CPFS = ["02558352482", "77184642538", "51966818092"]
GOOD_CNPJS = ["07504505000132", "51916585000125", "22769530000131", "81043396000156"]
GOOD_IBGE = ["3550308", "3304557", "4106902", "3516200", "5300108"]
GOOD_KEY = "53180922769530000131651110000001281355486170"
ALNUM_CNPJ = "12ABC34501DE35"


# --- helpers -------------------------------------------------------------------------------


def test_only_digits_drops_everything_else() -> None:
    assert only_digits("31999-000") == "31999000"
    assert only_digits("80.045-165") == "80045165"
    assert only_digits("abc") == ""
    assert only_digits("١٢٣4") == "4"  # other scripts' digits are not ASCII digits


def test_clean_document_strips_punctuation_and_uppercases() -> None:
    assert clean_document("075.045.050/0001-32") == "075045050000132"
    assert clean_document("07.504.505/0001-32") == "07504505000132"
    assert clean_document("12.abc.345/01de-35") == ALNUM_CNPJ
    assert clean_document(" 519.668.180-92 ") == "51966818092"


@given(st.text())
def test_clean_document_is_idempotent_and_alphanumeric(text: str) -> None:
    cleaned = clean_document(text)
    assert clean_document(cleaned) == cleaned
    assert all(c.isascii() and (c.isdigit() or c.isupper()) for c in cleaned)


# --- CPF -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cpf", GOOD_CPFS)
def test_good_cpfs(cpf: str) -> None:
    assert valid_cpf(cpf)
    assert valid_cpf(f"{cpf[:3]}.{cpf[3:6]}.{cpf[6:9]}-{cpf[9:]}")


@pytest.mark.parametrize("cpf", GOOD_CPFS)
def test_cpf_with_any_check_digit_changed_is_invalid(cpf: str) -> None:
    for position in (9, 10):
        for digit in "0123456789":
            if digit != cpf[position]:
                assert not valid_cpf(cpf[:position] + digit + cpf[position + 1 :])


@pytest.mark.parametrize("digit", "0123456789")
def test_cpf_with_all_equal_digits_is_invalid(digit: str) -> None:
    assert not valid_cpf(digit * 11)


@pytest.mark.parametrize(
    "cpf", ["", "5196681809", "519668180920", "5196681809a", "519.668.180-93", "٥1966818092"]
)
def test_malformed_cpfs(cpf: str) -> None:
    assert not valid_cpf(cpf)


# --- CNPJ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cnpj", [*GOOD_CNPJS, ALNUM_CNPJ])
def test_good_cnpjs(cnpj: str) -> None:
    assert valid_cnpj(cnpj)
    assert valid_cnpj(f"{cnpj[:2]}.{cnpj[2:5]}.{cnpj[5:8]}/{cnpj[8:12]}-{cnpj[12:]}")
    assert valid_cnpj(cnpj.lower())


@pytest.mark.parametrize("cnpj", ["18765499000199", "99999999999999", "00000000000000"])
def test_seed_example_cnpjs_and_zeros_are_invalid(cnpj: str) -> None:
    assert not valid_cnpj(cnpj)


@pytest.mark.parametrize("cnpj", [*GOOD_CNPJS, ALNUM_CNPJ])
def test_cnpj_with_a_check_digit_changed_is_invalid(cnpj: str) -> None:
    for position in (12, 13):
        for digit in "0123456789":
            if digit != cnpj[position]:
                assert not valid_cnpj(cnpj[:position] + digit + cnpj[position + 1 :])


@pytest.mark.parametrize(
    "cnpj", ["", "0750450500013", "075045050001320", "12ABC34501DEAB", "07504505000132X"]
)
def test_malformed_cnpjs(cnpj: str) -> None:
    assert not valid_cnpj(cnpj)


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=12, max_size=12))
def test_any_alphanumeric_base_with_its_check_digits_is_valid(base: str) -> None:
    number = base + stdnum_cnpj.calc_check_digits(base + "00")
    assert valid_cnpj(number) == (not base.startswith("000000000000"))


# --- IBGE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", GOOD_IBGE)
def test_good_ibge_codes(code: str) -> None:
    assert valid_ibge_municipio(code)
    assert ibge_check_digit(code[:6]) == code[6]


@pytest.mark.parametrize("code", sorted(IBGE_EXCEPTIONS))
def test_the_exceptions_are_valid_although_they_break_the_rule(code: str) -> None:
    assert valid_ibge_municipio(code)
    assert ibge_check_digit(code[:6]) != code[6]  # otherwise the list would not be needed


def test_exception_list_is_the_nine_official_codes_plus_abroad() -> None:
    assert len(IBGE_EXCEPTIONS) == 10
    assert "9999999" in IBGE_EXCEPTIONS


@pytest.mark.parametrize(
    "code",
    [
        "35503080",  # 8 digits
        "355030",  # 6 digits
        "3550309",  # wrong check digit
        "0000000",  # right check digit, no such UF
        "3450307",  # UF 34 does not exist
        "35503O8",  # letter O
        "",
        " 3550308",
        "٣550308",
    ],
)
def test_bad_ibge_codes(code: str) -> None:
    assert not valid_ibge_municipio(code)


@given(
    st.sampled_from(sorted(IBGE_UF_CODES)), st.text(alphabet="0123456789", min_size=4, max_size=4)
)
def test_any_code_with_its_check_digit_is_valid(uf: str, middle: str) -> None:
    code = uf + middle + ibge_check_digit(uf + middle)
    assert valid_ibge_municipio(code)
    wrong = str((int(code[6]) + 1) % 10)
    assert valid_ibge_municipio(code[:6] + wrong) == (code[:6] + wrong in IBGE_EXCEPTIONS)


def test_ibge_check_digit_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ibge_check_digit("12345")
    with pytest.raises(ValueError):
        ibge_check_digit("12345a")


# --- UF ------------------------------------------------------------------------------------


def test_ufs() -> None:
    assert len(UFS) == 28
    assert valid_uf("PR") and valid_uf("DF") and valid_uf("EX")
    assert not valid_uf("pr")  # callers uppercase first
    assert not valid_uf("XX")
    assert not valid_uf("")


# --- access key ----------------------------------------------------------------------------


def test_known_access_key() -> None:
    assert valid_access_key(GOOD_KEY)
    assert access_key_check_digit(GOOD_KEY[:43]) == GOOD_KEY[43]


def test_access_key_with_another_check_digit_is_invalid() -> None:
    for digit in "0123456789":
        if digit != GOOD_KEY[43]:
            assert not valid_access_key(GOOD_KEY[:43] + digit)


def test_access_key_model_must_be_nfe_or_nfce() -> None:
    nfe = GOOD_KEY[:20] + "55" + GOOD_KEY[22:43]
    assert valid_access_key(nfe + access_key_check_digit(nfe))
    cte = GOOD_KEY[:20] + "57" + GOOD_KEY[22:43]
    assert not valid_access_key(cte + access_key_check_digit(cte))


def test_access_key_with_an_alphanumeric_cnpj() -> None:
    first43 = GOOD_KEY[:6] + ALNUM_CNPJ + GOOD_KEY[20:43]
    key = first43 + access_key_check_digit(first43)
    assert valid_access_key(key)


@pytest.mark.parametrize(
    "key",
    [
        GOOD_KEY[:43],
        GOOD_KEY + "0",
        "A" + GOOD_KEY[1:],  # letters only inside the CNPJ
        GOOD_KEY[:18] + "AB" + GOOD_KEY[20:],  # nor in the CNPJ's check digits
        "99" + GOOD_KEY[2:],  # no such UF
        "",
    ],
)
def test_malformed_access_keys(key: str) -> None:
    assert not valid_access_key(key)


def test_access_key_check_digit_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        access_key_check_digit(GOOD_KEY[:42])
    with pytest.raises(ValueError):
        access_key_check_digit("X" + GOOD_KEY[1:43])


@given(st.text(alphabet="0123456789", min_size=43, max_size=43))
def test_check_digit_is_one_digit_and_makes_the_key_consistent(first43: str) -> None:
    digit = access_key_check_digit(first43)
    assert digit in "0123456789" and len(digit) == 1
    key = first43 + digit
    expected = first43[:2] in IBGE_UF_CODES and first43[20:22] in ("55", "65")
    assert valid_access_key(key) == expected
