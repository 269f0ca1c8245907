"""A stand-in for the Emites-Client NFC-e service, over real TCP, with in-memory state.

Speaks seed 002: `Size:Identifier:Payload` frames (`notaflow.emites_wire`), one answer per
request, in order, on the connection it came from. The decisions are pure functions in
`sandbox.emites_rules`; this module keeps the state (numbers per série, issued notes, the
clock) and does the I/O.

    CREATE_NFCE   sucesso | rejeitada (field errors, or erros.rejeicao from "SEFAZ")
    CANCEL_NFCE   cancelada | rejeitada | cancelamento_rejeitado (217, 218, 501)
    anything else an answer with the same identifier, status "erro"

A frame that breaks the protocol (bad size, garbage, over `max_frame`) closes the connection.

Failure behaviours, read on every request so a test can flip them at runtime (through the
`EmitesSandbox` methods or straight on the shared config):

    drop_connections  close the connection instead of answering
    stall             read requests and never answer
    answer_delay      seconds to wait before answering (a late answer still goes out)
    garbage           answer bytes that are not a frame
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from notaflow.emites_wire import Frame, FrameDecoder, FrameError, encode_frame
from notaflow.sandbox import emites_documents as documents
from notaflow.sandbox import emites_rules as rules

__all__ = ["EmitesSandbox", "EmitesSandboxConfig", "serve_emites_sandbox"]

GARBAGE = b"HTTP/1.1 502 Bad Gateway\r\n\r\n"


@dataclass
class EmitesSandboxConfig:
    """`clock` gives epoch seconds; the sandbox clock is `clock()` plus what `advance` added.
    `serie` is the série of notes whose request does not name one (an integer `serie` field
    in the request, 1..999, picks another)."""

    clock: Callable[[], float] = time.time
    cancel_window: float = 1800.0
    drop_connections: bool = False
    stall: bool = False
    answer_delay: float = 0.0
    garbage: bool = False
    emitter_cnpj: str = "22769530000131"
    emitter_name: str = "EMITES SANDBOX LTDA"
    uf_code: str = "53"
    serie: int = 1
    public_url: str = "http://127.0.0.1/emites"
    max_frame: int = 4 * 1024 * 1024
    clock_offset: float = 0.0

    def now(self) -> float:
        return self.clock() + self.clock_offset

    def advance(self, seconds: float) -> None:
        self.clock_offset += seconds


@dataclass
class IssuedNote:
    answer: dict[str, Any]
    authorized_at: float
    cancelled: bool = False


@dataclass
class _State:
    numbers: Counter[int] = field(default_factory=Counter)
    ids: int = 0
    protocols: int = 0
    notes: dict[str, IssuedNote] = field(default_factory=dict)


class EmitesSandbox:
    """One sandbox server: `await start(host, port)`, `await aclose()`. `stats` counts
    connections, requests and answers by outcome, for tests to assert on."""

    def __init__(self, config: EmitesSandboxConfig | None = None) -> None:
        self.config = config or EmitesSandboxConfig()
        self.stats: Counter[str] = Counter()
        self._state = _State()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control, for tests ----------------------------------------------------------------

    def set_behaviour(
        self,
        *,
        drop_connections: bool | None = None,
        stall: bool | None = None,
        answer_delay: float | None = None,
        garbage: bool | None = None,
    ) -> None:
        """Change the failure behaviours of every later request; None leaves one as it is."""
        if drop_connections is not None:
            self.config.drop_connections = drop_connections
        if stall is not None:
            self.config.stall = stall
        if answer_delay is not None:
            self.config.answer_delay = answer_delay
        if garbage is not None:
            self.config.garbage = garbage

    def normal(self) -> None:
        """Back to answering every request at once."""
        self.set_behaviour(drop_connections=False, stall=False, answer_delay=0.0, garbage=False)

    def advance(self, seconds: float) -> None:
        self.config.advance(seconds)

    @property
    def emitente(self) -> rules.Emitente:
        return rules.Emitente(
            self.config.emitter_cnpj, self.config.emitter_name, self.config.uf_code
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the sandbox is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- the protocol ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        self.stats["connections"] += 1
        decoder = FrameDecoder(self.config.max_frame)
        try:
            while data := await reader.read(65536):
                try:
                    frames = decoder.feed(data)
                except FrameError:
                    self.stats["garbage_received"] += 1
                    return
                for frame in frames:
                    if not await self._respond(frame, writer):
                        return
        except (ConnectionError, OSError):
            self.stats["connection_errors"] += 1
        except asyncio.CancelledError:
            # aclose cancels handlers that sleep (answer_delay). Ending normally, not
            # cancelled, because asyncio.streams (3.11) logs a spurious error for a
            # cancelled connection task.
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, frame: Frame, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        config = self.config
        self.stats["requests"] += 1
        if config.drop_connections:
            self.stats["dropped"] += 1
            return False
        if config.stall:
            self.stats["stalled"] += 1
            return True
        if config.answer_delay > 0:
            await asyncio.sleep(config.answer_delay)
        if config.garbage:
            self.stats["garbage_sent"] += 1
            writer.write(GARBAGE)
        else:
            writer.write(encode_frame(frame.identifier, self.answer(frame)))
            self.stats["answers"] += 1
        await writer.drain()
        return True

    def answer(self, frame: Frame) -> dict[str, Any]:
        """The payload answering one request frame (also usable without a socket)."""
        if frame.identifier == "CREATE_NFCE":
            return self._create(frame.payload)
        if frame.identifier == "CANCEL_NFCE":
            return self._cancel(frame.payload)
        self.stats["unknown_identifier"] += 1
        return {
            "status": "erro",
            "erros": {"identificador": [f"identificador desconhecido: {frame.identifier}"]},
        }

    def _create(self, doc: dict[str, Any]) -> dict[str, Any]:
        erros = rules.validation_errors(doc)
        if erros:
            self.stats["rejeitada"] += 1
            return rules.rejected(doc, erros)
        rejection = rules.sefaz_rejection(doc)
        if rejection is not None:
            self.stats["rejeitada"] += 1
            return rules.rejected(doc, {"rejeicao": [rejection]})
        state = self._state
        serie = doc.get("serie")
        if not isinstance(serie, int) or isinstance(serie, bool) or not 1 <= serie <= 999:
            serie = self.config.serie
        state.numbers[serie] += 1
        state.ids += 1
        state.protocols += 1
        now = self.config.now()
        answer = documents.authorize(
            doc,
            emitente=self.emitente,
            id_=state.ids,
            serie=serie,
            numero=state.numbers[serie],
            protocol_sequence=state.protocols,
            issued_at=datetime.fromtimestamp(now, UTC),
            public_url=self.config.public_url,
        )
        chave = answer["resposta_emissao"]["chave_acesso"]
        state.notes[chave] = IssuedNote(answer, now)
        self.stats["sucesso"] += 1
        return answer

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        erros = rules.cancel_errors(body)
        if erros:
            self.stats["rejeitada"] += 1
            return rules.rejected(body, erros)
        chave = body["chave_acesso"]
        note = self._state.notes.get(chave)
        now = self.config.now()
        rejection = rules.cancel_rejection(
            note.authorized_at if note else None,
            note.cancelled if note else False,
            now,
            self.config.cancel_window,
        )
        if rejection is not None or note is None:
            self.stats["cancelamento_rejeitado"] += 1
            reason = rejection or rules.REJEICAO_NAO_CONSTA
            return rules.rejected(body, {"rejeicao": [reason]}, status="cancelamento_rejeitado")
        note.cancelled = True
        self._state.protocols += 1
        self.stats["cancelada"] += 1
        return rules.cancelled(
            note.answer,
            emitente=self.emitente,
            protocol_sequence=self._state.protocols,
            cancelled_at=datetime.fromtimestamp(now, UTC),
            public_url=self.config.public_url,
        )


async def serve_emites_sandbox(
    config: EmitesSandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 9100,
    on_start: Callable[[EmitesSandbox], None] | None = None,
) -> None:
    """Serve the sandbox on host:port until cancelled, then close every connection and return
    normally. `on_start` gets the running sandbox (its `port`, behaviour switches, clock)."""
    sandbox = EmitesSandbox(config)
    await sandbox.start(host, port)
    try:
        if on_start is not None:
            on_start(sandbox)
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass  # cancellation is how the caller says "stop"
    finally:
        await sandbox.aclose()
