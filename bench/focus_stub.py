"""A minimal Focus-compatible responder for the consumer benchmark: `POST /v2/nfse?ref=REF`
answers 202 `processando_autorizacao` exactly LATENCY seconds after the request arrived.

Why not `notaflow sandbox focus`: its `--delay` is the *processing* delay (the callback comes
after it), its POST answers at once, and its Starlette/uvicorn stack, rate limiter, state and
hook machinery cost more CPU per request than the consumer we want to measure, on a 2-core
machine they share. This is a bare asyncio protocol (uvloop when present) that keeps
connections alive and does nothing per request but a timer, so the figures are about the
consumer.

A POST whose body contains `[bench:rejeitar]` and whose provider ref is a first attempt
(`...A1`) is refused with 400 and Focus's `erros` list, so the benchmark can send a rejected
emission followed by its re-emission and check the two arrive in publish order.

`GET /notas_fiscais_servico/...` answers a small XML at once (the callbacks phase).
`GET /_stats` answers the arrivals as JSON `[[ref, epoch seconds, status], ...]`, `GET /_count`
how many there are, `GET /_peak` the most POSTs it ever had unanswered at once (what the
consumer's concurrency limit must hold).

    python bench/focus_stub.py PORT LATENCY
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

REJECT_MARKER = b"[bench:rejeitar]"
_ACCEPTED = 202
_REFUSED = 400


def _xml(name: str) -> bytes:
    """The XML of note `N<id>A<attempt>-nfse`, with the numbers `bench/consumer.py`'s callbacks
    claim for it (numero = id, codigo_verificacao = V<id>, its CNPJ): the consumer checks a
    callback against the provider's XML before applying it."""
    doc_id = name.removeprefix("N").split("A", 1)[0]
    return (
        '<?xml version="1.0" encoding="UTF-8"?><CompNfse><Nfse><InfNfse>'
        f"<Numero>{doc_id}</Numero><CodigoVerificacao>V{doc_id}</CodigoVerificacao>"
        "<Cnpj>51916585000125</Cnpj></InfNfse></Nfse></CompNfse>"
    ).encode()


def _response(
    status: int, reason: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Open:
    """POSTs received and not yet answered, across connections."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class Responder(asyncio.Protocol):
    def __init__(self, latency: float, arrivals: list[tuple[str, float, int]], open_: Open) -> None:
        self._latency = latency
        self._arrivals = arrivals
        self._open = open_
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            self._request(head.split("\r\n", 1)[0], body)

    def _request(self, request_line: str, body: bytes) -> None:
        method, target, _ = request_line.split(" ", 2)
        url = urlsplit(target)
        if method == "GET" and url.path == "/_count":  # cheap enough to poll
            self._send(_response(200, "OK", str(len(self._arrivals)).encode()))
            return
        if method == "GET" and url.path == "/_peak":
            self._send(_response(200, "OK", str(self._open.peak).encode()))
            return
        if method == "GET" and url.path == "/_stats":
            self._send(_response(200, "OK", json.dumps(self._arrivals).encode()))
            return
        if method == "GET" and url.path.startswith("/notas_fiscais_servico/"):
            # The authorized note's XML, which the consumer downloads when a callback names it.
            name = url.path.rsplit("/", 1)[-1]
            self._send(_response(200, "OK", _xml(name), "application/xml"))
            return
        if method != "POST" or url.path != "/v2/nfse":
            self._send(_response(404, "Not Found", b'{"codigo":"nao_encontrado"}'))
            return
        ref = parse_qs(url.query).get("ref", [""])[0]
        if REJECT_MARKER in body and ref.endswith("A1"):
            status, reason = _REFUSED, "Bad Request"
            answer = {
                "codigo": "erro_validacao_schema",
                "mensagem": "rejeitada pelo benchmark",
                "erros": [{"codigo": "E0", "mensagem": "rejeitada", "correcao": None}],
            }
        else:
            status, reason = _ACCEPTED, "Accepted"
            answer = {"ref": ref, "status": "processando_autorizacao"}
        self._arrivals.append((ref, time.time(), status))
        self._open.now += 1
        self._open.peak = max(self._open.peak, self._open.now)
        reply = _response(status, reason, json.dumps(answer).encode())
        asyncio.get_running_loop().call_later(self._latency, self._answer, reply)

    def _answer(self, data: bytes) -> None:
        self._open.now -= 1
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


async def serve(port: int, latency: float) -> None:
    arrivals: list[tuple[str, float, int]] = []
    open_ = Open()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Responder(latency, arrivals, open_), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    port, latency = int(sys.argv[1]), float(sys.argv[2])
    try:
        import uvloop

        uvloop.run(serve(port, latency))
    except ImportError:
        asyncio.run(serve(port, latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
