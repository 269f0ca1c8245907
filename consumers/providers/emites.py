"""Emites-Client TCP adapter (NFC-e): create and cancel, over seed 002's framed protocol.

The protocol allows one request in flight per connection, so concurrency comes from a pool of
`pool_size` connections. A connection is reused only after a clean exchange: a timeout, a
cancelled caller, garbage, an unrequested frame or an answer under another identifier closes
and discards it, so a late answer can never be read as the answer to a later request.

Each connection is an asyncio.Protocol that decodes as bytes arrive, so a connection the
service closed while it sat idle in the pool is known to be dead before it is picked again.

Every socket and protocol error is mapped to the error tree; the foreign ones (socket errors,
timeouts, the wire encoder's refusal) in one place, `map_wire_errors`:

    Unsent      connection refused, connect timeout: nothing was sent (retry freely)
    Transient   connection reset, answer timeout, garbage, an answer that does not fit
                the protocol (retry may help)
    Permanent   a request that cannot be sent as it is: a character outside ISO-8859-1 (the
                error names the field), a malformed access key or motivo

A timeout after a CREATE_NFCE was sent does not tell whether Emites issued the note: the
message says so, and the caller must find out before creating it again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from notaflow.brdocs import valid_access_key
from notaflow.emites_wire import (
    DEFAULT_MAX_FRAME,
    Frame,
    FrameDecoder,
    FrameError,
    PayloadNotEncodable,
    encode_frame,
)
from notaflow.errors import Permanent, Transient, Unsent

__all__ = ["STATUSES", "EmitesClient", "EmitesReply"]

CREATE: Final = "CREATE_NFCE"
CANCEL: Final = "CANCEL_NFCE"
STATUSES: Final = frozenset(
    {"sucesso", "rejeitada", "processando", "erro", "cancelada", "cancelamento_rejeitado"}
)
_MOTIVO_MIN, _MOTIVO_MAX = 15, 255


@contextlib.contextmanager
def map_wire_errors(
    label: str, step: Literal["encode", "connect", "exchange"], identifier: str, timeout: float
) -> Iterator[None]:
    """The one place the adapter translates foreign errors into the tree. The step decides
    the class: before the request left (encode, connect) a retry cannot repeat it; after, an
    answer that never came may hide an issued note (said for CREATE_NFCE)."""
    try:
        yield
    except PayloadNotEncodable as exc:
        raise Permanent(
            f"{label}: cannot send {identifier}, field {exc.field!r}: {exc.reason}"
        ) from exc
    except TimeoutError:  # before OSError: it is one
        if step == "connect":
            raise Unsent(f"{label}: cannot connect within {timeout:g} s; retry may help") from None
        if step != "exchange":
            raise
        maybe = " (Emites may still have issued it: check before creating it again)"
        raise Transient(
            f"{label}: {identifier} got no answer within {timeout:g} s; connection "
            f"discarded{maybe if identifier == CREATE else ''}; retry may help"
        ) from None
    except OSError as exc:
        if step != "connect":
            raise
        raise Unsent(f"{label}: cannot connect ({exc.strerror or exc}); retry may help") from exc


@dataclass(frozen=True)
class EmitesReply:
    """An Emites answer in notaflow terms. `danfe` and `xml` are the decoded base64 blobs
    (tens of kB: store them, do not put them in Kafka); `body` is the rest of the answer.
    For a cancellation, `chave_acesso` and `numero_protocolo` come from
    `resposta_cancelamento` when it is there."""

    status: str
    numero: str | None = None
    serie: str | None = None
    chave_acesso: str | None = None
    numero_protocolo: str | None = None
    codigo_verificacao: str | None = None
    data_emissao: str | None = None
    danfe_url: str | None = None
    xml_url: str | None = None
    cancel_xml_url: str | None = None
    erros: dict[str, list[str]] = field(default_factory=dict)
    danfe: bytes | None = field(default=None, repr=False)
    xml: bytes | None = field(default=None, repr=False)
    body: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], label: str = "Emites") -> EmitesReply:
        """Raises Transient for an answer that does not fit the protocol."""
        status = payload.get("status")
        if status not in STATUSES:
            raise Transient(f"{label}: answer with unknown status {status!r}")
        emissao = _object(payload.get("resposta_emissao"))
        cancelamento = _object(payload.get("resposta_cancelamento"))
        return cls(
            status=cast(str, status),
            numero=_text(payload.get("nfe_numero", payload.get("numero"))),
            serie=_text(payload.get("serie")),
            chave_acesso=_text(cancelamento.get("chave_acesso") or emissao.get("chave_acesso")),
            numero_protocolo=_text(
                cancelamento.get("numero_protocolo") or emissao.get("numero_protocolo")
            ),
            codigo_verificacao=_text(emissao.get("codigo_verificacao")),
            data_emissao=_text(emissao.get("data_emissao")),
            danfe_url=_text(payload.get("danfe_url")),
            xml_url=_text(payload.get("xml_url")),
            cancel_xml_url=_text(payload.get("cancel_xml_url")),
            erros=_erros(payload.get("erros")),
            danfe=_blob(payload.get("danfe"), "danfe", label),
            xml=_blob(payload.get("xml"), "xml", label),
            body={k: v for k, v in payload.items() if k not in ("danfe", "xml")},
        )


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _erros(value: object) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return {"": [str(value)]}
    return {
        str(key): [str(item) for item in messages]
        if isinstance(messages, list)
        else [str(messages)]
        for key, messages in value.items()
    }


def _blob(value: object, name: str, label: str) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Transient(f"{label}: answer field {name!r} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Transient(f"{label}: answer field {name!r} is not valid base64") from None


class _Connection(asyncio.Protocol):
    """One TCP connection, one request at a time. Once `broken` is set it is never used again."""

    def __init__(self, label: str, max_frame: int) -> None:
        self.label = label
        self.broken: str | None = None
        self._decoder = FrameDecoder(max_frame)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Frame] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.broken is not None:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            # A callback of the event loop: the request waiting on this connection gets the
            # Transient (see `fail`), nothing is raised here.
            self.fail(f"garbage from Emites ({type(exc).__name__}: {exc})")
            return
        for frame in frames:
            waiter = self._waiter
            if waiter is None or waiter.done():
                self.fail(f"Emites sent a {frame.identifier} frame nobody asked for")
                return
            self._waiter = None
            waiter.set_result(frame)

    def eof_received(self) -> bool:
        self.fail("Emites closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost ({exc})" if exc else "Emites closed the connection")

    def fail(self, reason: str) -> None:
        """Mark the connection unusable, close it, and fail the request waiting on it."""
        if self.broken is None:
            self.broken = reason
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(Transient(f"{self.label}: {reason}; retry may help"))
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, data: bytes, timeout: float) -> Frame:
        """The answer to `data`; TimeoutError (the connection discarded) past `timeout`."""
        if self.broken is not None or self._transport is None:
            raise Transient(f"{self.label}: {self.broken}; retry may help")
        waiter: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(data)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            self.fail(f"no answer within {timeout:g} s")
            raise


class EmitesClient:
    """A pool of up to `pool_size` connections to the Emites-Client at host:port, opened on
    demand. `request_timeout` bounds the wait for each answer, `connect_timeout` each connect;
    `max_frame` bounds an answer's size (a DANFE and an XML in base64 fit in the default)."""

    def __init__(
        self,
        host: str,
        port: int,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        request_timeout: float = 60.0,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.host = host
        self.port = port
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_frame = max_frame
        self.connections_opened = 0
        self._label = f"Emites {host}:{port}"
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    async def create_nfce(self, document: dict[str, Any]) -> EmitesReply:
        """Send a CREATE_NFCE (a document `notaflow.nfce.normalize_nfce` accepted)."""
        return EmitesReply.from_payload(await self._call(CREATE, document), self._label)

    async def cancel_nfce(self, chave_acesso: str, motivo: str | None = None) -> EmitesReply:
        """Send a CANCEL_NFCE; `motivo` is optional, 15..255 characters when given."""
        if not valid_access_key(chave_acesso) or chave_acesso[20:22] != "65":
            raise Permanent(f"{self._label}: {chave_acesso!r} is not an NFC-e access key")
        payload: dict[str, Any] = {"chave_acesso": chave_acesso}
        if motivo is not None:
            if not _MOTIVO_MIN <= len(motivo) <= _MOTIVO_MAX:
                raise Permanent(
                    f"{self._label}: motivo must have {_MOTIVO_MIN} to {_MOTIVO_MAX} characters"
                )
            payload["motivo"] = motivo
        return EmitesReply.from_payload(await self._call(CANCEL, payload), self._label)

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail with Transient."""
        self._closed = True
        for connection in [*self._idle, *self._busy]:
            connection.fail("client closed")
        self._idle.clear()

    async def _call(self, identifier: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise Unsent(f"{self._label}: client closed")
        with map_wire_errors(self._label, "encode", identifier, 0):
            data = encode_frame(identifier, payload)
        async with self._slots:
            connection = self._take_idle() or await self._connect()
            self._busy.add(connection)
            try:
                with map_wire_errors(self._label, "exchange", identifier, self.request_timeout):
                    frame = await connection.exchange(data, self.request_timeout)
            except BaseException:
                connection.fail("request abandoned")  # cancelled or failed: never reuse it
                raise
            finally:
                self._busy.discard(connection)
            if frame.identifier != identifier:
                connection.fail(f"answer to {identifier} came as {frame.identifier}")
                raise Transient(
                    f"{self._label}: {identifier} answered as {frame.identifier}; "
                    "connection discarded; retry may help"
                )
            if connection.broken is None and not self._closed:
                self._idle.append(connection)
            return frame.payload

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # most recently used: the least likely to be stale
            if connection.broken is None:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        with map_wire_errors(self._label, "connect", "", self.connect_timeout):
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._label, self.max_frame), self.host, self.port
                )
        self.connections_opened += 1
        return connection
