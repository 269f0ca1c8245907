"""Framing of the Emites-Client TCP protocol (seed 002), shared by the client and the sandbox.

A frame is `Size:Identifier:Payload` in ISO-8859-1 bytes. Size is the decimal count of the
bytes that follow it, both colons included, written without leading zeros:

    27:TESTE:{ "teste": "teste" }      27 = 1 (":") + 5 ("TESTE") + 1 (":") + 20 (the JSON)

Pure code, no I/O: `encode_frame` builds the bytes of one frame, `FrameDecoder` turns a byte
stream cut anywhere into frames. Errors (in `notaflow.errors`'s tree, and ValueErrors as
before):

    NotaflowError
    ├── PayloadNotEncodable      encode_frame: a value JSON or Latin-1 cannot carry (`field`)
    └── FrameError               FrameDecoder: the peer sent something that is not a frame
        ├── BadSize              empty, not decimal, or too small to hold a frame
        ├── LeadingZeros         the size starts with 0
        ├── FrameTooLarge        the size is over the decoder's `max_size`
        ├── BadIdentifier        empty, or not [A-Z_]+
        ├── MissingSeparator     no ':' after the identifier inside the announced size
        └── BadPayload
            ├── PayloadNotJSON   not JSON (NaN and Infinity are not JSON either)
            └── PayloadNotObject JSON, but not an object

A decoder reports the first defect in stream order as soon as the bytes received prove it, so
the error does not depend on how the stream was chunked, and a peer cannot make it buffer more
than `max_size` plus a few header bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from notaflow.errors import NotaflowError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MIN_FRAME_SIZE",
    "BadIdentifier",
    "BadPayload",
    "BadSize",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "LeadingZeros",
    "MissingSeparator",
    "PayloadNotEncodable",
    "PayloadNotJSON",
    "PayloadNotObject",
    "check_payload",
    "encode_frame",
]

ENCODING: Final = "iso-8859-1"
# A DANFE and an XML in base64 make an answer tens of kB; 500 products stay well under 1 MB.
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024
# The smallest frame body: ":" + one-letter identifier + ":" + "{}".
MIN_FRAME_SIZE: Final = 5

_IDENTIFIER: Final = re.compile(r"[A-Z_]+")
_COLON: Final = ord(":")
_ZERO: Final = ord("0")
_IDENTIFIER_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")


@dataclass(frozen=True, slots=True)
class Frame:
    identifier: str
    payload: dict[str, Any]


class PayloadNotEncodable(NotaflowError, ValueError):
    """`field` is the dotted path of the offending value ("produtos.0.descricao"; "" for the
    payload itself); `reason` says what is wrong with it."""

    def __init__(self, field: str, reason: str, char: str | None = None) -> None:
        where = f"field {field!r}" if field else "payload"
        super().__init__(f"{where}: {reason}")
        self.field = field
        self.reason = reason
        self.char = char  # the first character outside ISO-8859-1, when that is the reason


class FrameError(NotaflowError, ValueError):
    """The peer sent bytes that are not a frame; the decoder that raised it is unusable."""


class BadSize(FrameError):
    pass


class LeadingZeros(FrameError):
    pass


class FrameTooLarge(FrameError):
    pass


class BadIdentifier(FrameError):
    pass


class MissingSeparator(FrameError):
    pass


class BadPayload(FrameError):
    pass


class PayloadNotJSON(BadPayload):
    pass


class PayloadNotObject(BadPayload):
    pass


# --- encoding -----------------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_text(path: str, text: str, what: str) -> None:
    if text.isascii():
        return
    for index, char in enumerate(text):
        if ord(char) > 0xFF:
            raise PayloadNotEncodable(
                path,
                f"{what} has {char!r} (U+{ord(char):04X}) at position {index}, "
                "outside ISO-8859-1, which is all Emites-Client accepts",
                char,
            )


def check_payload(payload: object) -> None:
    """Raise PayloadNotEncodable, naming the field, if `payload` holds a value that JSON or
    ISO-8859-1 cannot carry; validators call it to refuse such a document at the door."""
    _check_value("", payload)


def _check_value(path: str, value: object) -> None:
    # Walked before serialising, so an error names the field that holds the value.
    if isinstance(value, str):
        _check_text(path, value, "text")
    elif value is None or isinstance(value, bool | int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadNotEncodable(path, f"{value!r} is not a JSON number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadNotEncodable(path, f"key {key!r} is not a string")
            _check_text(_join(path, key), key, "the key")
            _check_value(_join(path, key), item)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for index, item in enumerate(value):
            _check_value(_join(path, index), item)
    else:
        raise PayloadNotEncodable(path, f"{type(value).__name__} is not a JSON value")


def encode_frame(identifier: str, payload: Mapping[str, Any] | str) -> bytes:
    """The bytes of one frame. `payload` is an object, serialised compactly, or JSON text sent
    as is (it must hold an object).

    Raises PayloadNotEncodable naming the field for a character outside ISO-8859-1 or a value
    JSON cannot hold, and ValueError for an identifier that is not [A-Z_]+.
    """
    if not _IDENTIFIER.fullmatch(identifier):
        raise ValueError(f"identifier {identifier!r} is not [A-Z_]+")
    if isinstance(payload, str):
        try:
            parsed = json.loads(payload)
        except ValueError:
            raise PayloadNotEncodable("", "the text is not JSON") from None
        if not isinstance(parsed, dict):
            raise PayloadNotEncodable("", "the JSON is not an object")
        if not payload.isascii():
            _check_value("", parsed)  # the field path, before the position in the text
            _check_text("", payload, "the JSON text")
        text = payload
    else:
        _check_value("", payload)
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    body = b":" + identifier.encode("ascii") + b":" + text.encode(ENCODING)
    return str(len(body)).encode("ascii") + body


# --- decoding -----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_payload(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise PayloadNotJSON("empty payload")
    try:
        payload = json.loads(raw.decode(ENCODING), parse_constant=_reject_constant)
    except ValueError as exc:
        raise PayloadNotJSON(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadNotJSON("payload is not JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise PayloadNotObject(f"payload is a JSON {type(payload).__name__}, not an object")
    return payload


class FrameDecoder:
    """Turns a byte stream into frames: `feed` whatever arrived, get the frames it completed.

    A frame split across any number of chunks and several frames in one chunk are both fine.
    On garbage `feed` raises a FrameError and so does every later call: once the stream is out
    of step nothing after it can be trusted, so the caller drops the connection. Frames that
    the same chunk completed before the garbage are lost with it.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if max_size < MIN_FRAME_SIZE:
            raise ValueError(f"max_size must be at least {MIN_FRAME_SIZE}")
        self.max_size = max_size
        self._max_digits = len(str(max_size))
        self._buffer = bytearray()
        self._error: FrameError | None = None
        self._reset()

    def _reset(self) -> None:
        self._body_start = -1  # index of the colon after the size, once the size is read
        self._body_end = -1
        self._identifier_end = -1  # index of the colon after the identifier, once found
        self._scanned = 0  # identifier bytes already checked, so a slow stream costs O(n)

    @property
    def buffered(self) -> int:
        """Bytes received that are not a whole frame yet."""
        return len(self._buffer)

    @property
    def failed(self) -> FrameError | None:
        return self._error

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except FrameError as error:
            self._error = error
            self._buffer.clear()
            raise
        return frames

    def _next(self) -> Frame | None:
        if self._body_start < 0 and not self._read_size():
            return None
        if self._identifier_end < 0 and not self._read_identifier():
            return None
        if len(self._buffer) < self._body_end:
            return None
        buffer = self._buffer
        identifier = buffer[self._body_start + 1 : self._identifier_end].decode("ascii")
        payload = _parse_payload(bytes(buffer[self._identifier_end + 1 : self._body_end]))
        del buffer[: self._body_end]
        self._reset()
        return Frame(identifier, payload)

    def _read_size(self) -> bool:
        buffer = self._buffer
        # Never look past max_digits + 1 bytes: a longer number is already too large.
        for index in range(min(len(buffer), self._max_digits + 1)):
            byte = buffer[index]
            if byte == _COLON:
                if index == 0:
                    raise BadSize("empty size before ':'")
                size = int(buffer[:index])
                if size < MIN_FRAME_SIZE:
                    raise BadSize(f"size {size} is too small for ':IDENTIFIER:{{}}'")
                self._body_start = index
                self._body_end = index + size
                self._scanned = index + 1
                return True
            if not _ZERO <= byte <= _ZERO + 9:
                raise BadSize(f"size must be decimal digits, found {bytes([byte])!r}")
            if index == 1 and buffer[0] == _ZERO:
                raise LeadingZeros("size has leading zeros")
            if int(buffer[: index + 1]) > self.max_size:
                raise FrameTooLarge(
                    f"size {int(buffer[: index + 1])}... is over the limit of {self.max_size} bytes"
                )
        return False

    def _read_identifier(self) -> bool:
        buffer = self._buffer
        stop = min(len(buffer), self._body_end)
        for index in range(self._scanned, stop):
            byte = buffer[index]
            if byte == _COLON:
                if index == self._body_start + 1:
                    raise BadIdentifier("empty identifier")
                self._identifier_end = index
                return True
            if byte not in _IDENTIFIER_BYTES:
                raise BadIdentifier(
                    f"identifier must be [A-Z_]+ followed by ':', found {bytes([byte])!r}"
                )
        self._scanned = stop
        if stop == self._body_end:
            raise MissingSeparator(
                f"no ':' after the identifier within the {self._body_end - self._body_start}"
                " bytes the size announced"
            )
        return False
