"""notaflow.emites_wire: the seed's example, every kind of garbage, and properties over any
payload and any chunking."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notaflow.emites_wire import (
    MIN_FRAME_SIZE,
    BadIdentifier,
    BadPayload,
    BadSize,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    LeadingZeros,
    MissingSeparator,
    PayloadNotEncodable,
    PayloadNotJSON,
    PayloadNotObject,
    check_payload,
    encode_frame,
)

SEED = b'27:TESTE:{ "teste": "teste" }'


# --- encoding -----------------------------------------------------------------------------


def test_seed_example_encodes_byte_for_byte() -> None:
    assert encode_frame("TESTE", '{ "teste": "teste" }') == SEED


def test_seed_example_decodes() -> None:
    assert FrameDecoder().feed(SEED) == [Frame("TESTE", {"teste": "teste"})]


def test_size_counts_both_colons_and_the_payload_bytes() -> None:
    frame = encode_frame("CREATE_NFCE", {"a": 1})
    size, _, rest = frame.partition(b":")
    assert int(size) == len(b":" + rest) == len(b":CREATE_NFCE:" + b'{"a":1}')


def test_latin1_text_is_one_byte_per_character() -> None:
    frame = encode_frame("X", {"d": "Pão ção"})
    assert frame == b'18:X:{"d":"P\xe3o \xe7\xe3o"}'
    assert FrameDecoder().feed(frame) == [Frame("X", {"d": "Pão ção"})]


def test_size_has_no_leading_zeros() -> None:
    # 9-byte and 10-byte bodies: "9:" and "10:", never "09:".
    assert encode_frame("A", {"": 1}) == b'9:A:{"":1}'
    assert encode_frame("A", {"a": 1}) == b'10:A:{"a":1}'
    assert encode_frame("A", {}) == b"5:A:{}"


def test_payload_may_span_lines_when_sent_as_text() -> None:
    text = '{\n  "a": "b"\n}'
    frame = encode_frame("A", text)
    assert frame == f"{len(text) + 3}:A:{text}".encode()
    assert FrameDecoder().feed(frame) == [Frame("A", {"a": "b"})]


@pytest.mark.parametrize(
    ("payload", "field", "char"),
    [
        ({"descricao": "Café ☕"}, "descricao", "☕"),
        ({"produtos": [{"d": "ok"}, {"d": "€ 10"}]}, "produtos.1.d", "€"),
        ({"cliente": {"nome": "Zoë", "apelido": "Łukasz"}}, "cliente.apelido", "Ł"),
        ({"a": {"chave—longa": 1}}, "a.chave—longa", "—"),
        ({"lone": "\ud800"}, "lone", "\ud800"),
    ],
)
def test_character_outside_latin1_names_the_field(payload: Any, field: str, char: str) -> None:
    with pytest.raises(PayloadNotEncodable) as caught:
        encode_frame("CREATE_NFCE", payload)
    assert caught.value.field == field
    assert caught.value.char == char
    assert repr(field) in str(caught.value)
    assert "ISO-8859-1" in str(caught.value)


def test_non_latin1_in_json_text_names_the_field() -> None:
    with pytest.raises(PayloadNotEncodable) as caught:
        encode_frame("A", '{"x": {"y": "€"}}')
    assert caught.value.field == "x.y"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"v": math.nan}, "v"),
        ({"v": [1, math.inf]}, "v.1"),
        ({"v": b"bytes"}, "v"),
        ({"v": {1: "x"}}, "v"),
        ({"v": {1, 2}}, "v"),
    ],
)
def test_values_json_cannot_hold_name_the_field(payload: Any, field: str) -> None:
    with pytest.raises(PayloadNotEncodable) as caught:
        encode_frame("A", payload)
    assert caught.value.field == field
    assert caught.value.char is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"a"'])
def test_text_payload_must_be_a_json_object(text: str) -> None:
    with pytest.raises(PayloadNotEncodable):
        encode_frame("A", text)


@pytest.mark.parametrize("identifier", ["", "teste", "CREATE-NFCE", "A1", "A:B", "É"])
def test_identifier_must_be_upper_letters_and_underscores(identifier: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        encode_frame(identifier, {})


def test_check_payload_accepts_latin1_json() -> None:
    check_payload({"a": ["ÿ", 1, 1.5, None, True, {"b": "\x00"}]})


# --- decoding -----------------------------------------------------------------------------


def test_a_frame_split_at_every_position() -> None:
    payload = {"chave_acesso": "5" * 44, "motivo": "Desistência"}
    frame = encode_frame("CANCEL_NFCE", payload)
    for cut in range(len(frame) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(frame[:cut])
        second = decoder.feed(frame[cut:])
        assert first + second == [Frame("CANCEL_NFCE", payload)]
        assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    stream = encode_frame("A", {"x": 1}) + encode_frame("B_B", {"y": [1, 2]})
    decoder = FrameDecoder()
    frames = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]
    assert frames == [Frame("A", {"x": 1}), Frame("B_B", {"y": [1, 2]})]


def test_several_frames_in_one_chunk_and_a_partial_one() -> None:
    frames = [encode_frame("A", {"n": n}) for n in range(5)]
    decoder = FrameDecoder()
    partial = frames[4][:7]
    got = decoder.feed(b"".join(frames[:4]) + partial)
    assert [frame.payload["n"] for frame in got] == [0, 1, 2, 3]
    assert decoder.buffered == len(partial)
    assert decoder.feed(frames[4][7:]) == [Frame("A", {"n": 4})]


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(SEED[:3]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(SEED[3:]) == [Frame("TESTE", {"teste": "teste"})]


GARBAGE: list[tuple[bytes, type[FrameError], str]] = [
    (b"x5:A:{}", BadSize, "decimal digits"),
    (b"5x:A:{}", BadSize, "decimal digits"),
    (b"-5:A:{}", BadSize, "decimal digits"),
    (b" 5:A:{}", BadSize, "decimal digits"),
    (b":A:{}", BadSize, "empty size"),
    (b"0:", BadSize, "too small"),
    (b"4:A:{", BadSize, "too small"),
    (b"05:A:{}", LeadingZeros, "leading zeros"),
    (b"00", LeadingZeros, "leading zeros"),
    (b"1001", FrameTooLarge, "over the limit of 1000"),
    (b"99999999999999999999", FrameTooLarge, "over the limit"),
    (b"5:a:{}", BadIdentifier, "[A-Z_]+"),
    (b"6:A1:{}", BadIdentifier, "[A-Z_]+"),
    (b"7:A B:{}", BadIdentifier, "[A-Z_]+"),
    (b"5::A{}", BadIdentifier, "empty identifier"),
    (b'13:TESTE{"a":1}', BadIdentifier, "[A-Z_]+"),
    (b"7:ABCDEFG", MissingSeparator, "no ':' after the identifier"),
    (b"6:A:xyz", PayloadNotJSON, "not JSON"),
    (b"6:A:   ", PayloadNotJSON, "empty payload"),
    (b'12:A:{"a":NaN}', PayloadNotJSON, "not JSON"),
    (b'9:A:{"a":1', PayloadNotJSON, "not JSON"),
    (b"6:A:[1]", PayloadNotObject, "not an object"),
    (b'6:A:"x"', PayloadNotObject, "not an object"),
    (b"7:A:null", PayloadNotObject, "not an object"),
    (b"100003:A:" + b"[" * 100_000, PayloadNotJSON, "not JSON"),
]


@pytest.mark.parametrize(("stream", "error", "words"), GARBAGE)
def test_garbage_raises_a_specific_frame_error(
    stream: bytes, error: type[FrameError], words: str
) -> None:
    max_size = 1000 if error is FrameTooLarge and stream.startswith(b"1001") else 200_000
    decoder = FrameDecoder(max_size)
    with pytest.raises(error, match=None) as caught:
        decoder.feed(stream)
    assert words in str(caught.value)
    # Unusable afterwards, whatever comes next.
    with pytest.raises(error):
        decoder.feed(SEED)
    assert decoder.failed is caught.value
    assert decoder.buffered == 0


@pytest.mark.parametrize(("stream", "error", "words"), GARBAGE)
def test_garbage_byte_by_byte_gives_the_same_error(
    stream: bytes, error: type[FrameError], words: str
) -> None:
    max_size = 1000 if error is FrameTooLarge and stream.startswith(b"1001") else 200_000
    decoder = FrameDecoder(max_size)
    with pytest.raises(error):
        for byte in stream:
            decoder.feed(bytes([byte]))


def test_too_large_is_seen_before_the_colon_arrives() -> None:
    # A peer announcing a huge frame is refused at once, not after buffering it.
    decoder = FrameDecoder(max_size=4096)
    assert decoder.feed(b"409") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"7")


def test_exactly_max_size_is_accepted() -> None:
    frame = encode_frame("A", {"x": "y" * 100})
    size = int(frame.split(b":", 1)[0])
    assert FrameDecoder(max_size=size).feed(frame) == [Frame("A", {"x": "y" * 100})]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_size=size - 1).feed(frame)


def test_good_frames_in_earlier_chunks_survive_later_garbage() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(SEED) == [Frame("TESTE", {"teste": "teste"})]
    with pytest.raises(BadSize):
        decoder.feed(b"garbage")


def test_a_frame_after_garbage_is_never_returned() -> None:
    with pytest.raises(BadPayload):
        FrameDecoder().feed(b"6:A:xyz" + SEED)


def test_max_size_below_a_frame_is_refused() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(MIN_FRAME_SIZE - 1)


# --- properties ---------------------------------------------------------------------------

LATIN1 = st.characters(max_codepoint=0xFF)
latin1_text = st.text(alphabet=LATIN1, max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | latin1_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(latin1_text, children, max_size=5)
    ),
    max_leaves=25,
)
payloads = st.dictionaries(latin1_text, json_values, max_size=6)
identifiers = st.from_regex(r"[A-Z_]{1,20}", fullmatch=True)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.tuples(identifiers, payloads), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_round_trip_for_any_latin1_payload_and_any_chunking(
    frames: list[tuple[str, dict[str, Any]]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(identifier, payload) for identifier, payload in frames)
    decoder = FrameDecoder()
    got = [frame for chunk in _chunks(stream, cuts) for frame in decoder.feed(chunk)]
    assert got == [Frame(identifier, payload) for identifier, payload in frames]
    assert decoder.buffered == 0


def _outcome(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Frame], type | None]:
    frames: list[Frame] = []
    for chunk in chunks:
        try:
            frames += decoder.feed(chunk)
        except FrameError as error:
            return frames, type(error)
    return frames, None


@settings(max_examples=500, deadline=1000)
@given(
    stream=st.binary(max_size=300) | st.from_regex(rb"[0-9]{1,4}:[A-Z_a-z:]{0,6}.{0,40}"),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_garbage_never_raises_anything_but_frame_error(stream: bytes, cuts: list[int]) -> None:
    # And the verdict does not depend on the chunking: byte by byte finds every frame before
    # the defect, any other chunking a prefix of them (frames sharing a chunk with the
    # defect are dropped with it), and both name the same defect.
    one_by_one = _outcome(FrameDecoder(1000), [bytes([b]) for b in stream])
    chunked = _outcome(FrameDecoder(1000), _chunks(stream, cuts))
    assert chunked[1] == one_by_one[1]
    assert chunked[0] == one_by_one[0][: len(chunked[0])]


@settings(max_examples=150, deadline=1000)
@given(
    payload=payloads,
    position=st.integers(min_value=0, max_value=10_000),
    junk=st.binary(min_size=1, max_size=8),
    delete=st.booleans(),
)
def test_a_corrupted_frame_is_a_frame_error_or_a_frame(
    payload: dict[str, Any], position: int, junk: bytes, delete: bool
) -> None:
    frame = encode_frame("CREATE_NFCE", payload)
    at = position % len(frame)
    corrupted = frame[:at] + (b"" if delete else junk) + frame[at + (1 if delete else 0) :]
    decoder = FrameDecoder(10_000)
    try:
        frames = decoder.feed(corrupted)
    except FrameError:
        return
    assert all(isinstance(frame, Frame) for frame in frames)
    assert decoder.buffered <= 10_000 + 6
