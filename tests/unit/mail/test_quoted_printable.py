"""`quoted_printable.body_encode` writes what `Charset("utf-8")` with QP writes, for any text:
the line breaking at 76 around escapes, whitespace ending a line, every line separator
`str.splitlines` knows, characters of every UTF-8 length."""

from __future__ import annotations

from email.charset import QP, Charset

from hypothesis import example, given, settings
from hypothesis import strategies as st

from notaflow.consumers.quoted_printable import body_encode

_CHARSET = Charset("utf-8")
_CHARSET.body_encoding = QP

_PIECES = st.sampled_from(
    [
        "a",
        "=",
        " ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "ç",
        "€",
        "😀",
        "\x0b",
        "\x0c",
        "\x85",
        "\u2028",
        ".",
        "x" * 70,
    ]
)


@settings(max_examples=500)
@given(st.text() | st.lists(_PIECES, max_size=60).map("".join))
@example("")
@example("x" * 74 + "=" + "y" * 10)
@example("x" * 73 + "ção" + "\n")
@example("x" * 75 + " \n" + "y" * 74 + "\t")
@example("Olá, José & Filhos — R$ 1.234,56\nsegunda linha \n")
def test_the_same_as_the_standard_librarys(text: str) -> None:
    assert body_encode(text) == _CHARSET.body_encode(text)
