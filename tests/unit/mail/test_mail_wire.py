"""`mail_wire` makes the bytes and the MAIL options aiosmtplib's `send_message` makes, without
refolding headers that come folded: held to aiosmtplib's own, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message

import aiosmtplib
import pytest
from aiosmtplib.email import flatten_message
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notaflow.consumers.mail_templates import NfseLinks, render_nfce_email, render_nfse_email
from notaflow.consumers.providers.mail_wire import flatten, mail_options

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _nfse(kind: str, issuer: str, tomador: str, recipients: list[str]) -> Message:
    return render_nfse_email(
        kind,  # type: ignore[arg-type]
        {"numero": "233", "codigo_verificacao": "DU1M-M2Y", "cnpj_prestador": "51916585000125"},
        {
            "prestador": {"cnpj": "51916585000125"},
            "tomador": {"razao_social": tomador, "cnpj": "07504505000132"},
            "servico": {"valor_servicos": "1234.56", "discriminacao": "Serviço\n" * 20},
        },
        NfseLinks("https://prefeitura.example/nota?n=233", "https://api.example/x.xml"),
        issuer_name=issuer,
        sender=f"{issuer} <nfse@acme.com.br>",
        recipients=recipients,
        message_id_domain="acme.com.br",
        now=NOW,
    )


RENDERED = [
    _nfse(kind, issuer, tomador, recipients)
    for kind in ("autorizada", "cancelada", "copia")
    for issuer, tomador, recipients in [
        ("ACME LTDA", "José & Filhos", ["jose@example.com"]),
        ("Padaria São João " * 6, "Ação, Comércio; \"Ltda\"" * 4, ["a@x.br", "Zé <b@x.br>"]),
        ("ACME", "Fulano", ["ação@exemplo.br"]),  # RFC 6532: raw UTF-8 in the To
    ]
] + [
    render_nfce_email(
        kind,
        {"numero": "9", "serie": "1", "chave_nfe": "1" * 44, "cnpj_emitente": "51916585000125"},
        {"cliente": {"nome": "Zé"}, "produtos": [{"valor_total_produto": "10.5"}]},
        issuer_name="Loja da Esquina",
        sender="Loja <loja@x.br>",
        recipients=["c@x.br"],
        message_id_domain="x.br",
        danfe=danfe,
        now=NOW,
    )
    for kind in ("autorizada", "cancelada")
    for danfe in (None, b"%PDF-1.4 " * 100)
]


@pytest.mark.parametrize("message", RENDERED)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_every_rendered_email_flattens_to_aiosmtplibs_bytes(
    message: Message, eight_bit: bool
) -> None:
    expected = flatten_message(message, cte_type="8bit" if eight_bit else "7bit")
    assert flatten(message, eight_bit) == expected


_HEADER_TEXT = st.text(st.sampled_from("ab=;,:\"<>@ \t\n\r-.()\x7f\x01é€"), max_size=120)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(["Subject", "To", "X-A-Rather-Long-Header-Name-For-Folding", "Cc"]),
    value=_HEADER_TEXT | st.lists(st.text("abc; ", min_size=1, max_size=30)).map("\n ".join),
    eight_bit=st.booleans(),
)
@example(name="Subject", value="a" * 70 + "\n b", eight_bit=True)  # 78 on the first line
@example(name="Subject", value="a" * 69 + "\n b", eight_bit=True)
@example(name="To", value="a\n\tb \n c", eight_bit=False)
@example(name="To", value="a\n \n c", eight_bit=False)
@example(name="To", value="a  b\n  c", eight_bit=False)
def test_any_header_value_flattens_to_aiosmtplibs_bytes(
    name: str, value: str, eight_bit: bool
) -> None:
    message = Message()
    message[name] = value
    message["Bcc"] = "hidden@example.com"
    message.set_payload("corpo\n")
    try:
        expected: bytes | type[Exception] = flatten_message(
            message, cte_type="8bit" if eight_bit else "7bit"
        )
    except Exception as exc:  # compat32 refuses some values (an embedded header): so do we
        expected = type(exc)
    try:
        got: bytes | type[Exception] = flatten(message, eight_bit)
    except Exception as exc:
        got = type(exc)
    assert got == expected
    assert message["Bcc"] == "hidden@example.com"  # dropped from the copy sent, not the message


@pytest.mark.parametrize(
    ("sender", "recipients", "offered", "expected"),
    [
        ("a@x.br", ["b@x.br"], {"8bitmime", "smtputf8"}, (["BODY=8BITMIME"], True)),
        ("a@x.br", ["b@x.br"], set(), ([], False)),
        ("a@x.br", ["ação@x.br"], {"smtputf8"}, (["SMTPUTF8"], False)),
        ("ação@x.br", ["b@x.br"], {"smtputf8", "8bitmime"}, (["SMTPUTF8", "BODY=8BITMIME"], True)),
    ],
)
def test_mail_options_as_send_message_chooses_them(
    sender: str, recipients: list[str], offered: set[str], expected: tuple[list[str], bool]
) -> None:
    assert mail_options(sender, recipients, offered.__contains__) == expected


def test_an_address_not_ascii_without_smtputf8_is_not_supported() -> None:
    with pytest.raises(aiosmtplib.SMTPNotSupported):
        mail_options("a@x.br", ["ação@x.br"], {"8bitmime"}.__contains__)
