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

`--rate-limit N --rate-window S` (the fairness benchmark): Focus's credits per token, scaled.
Each token (HTTP Basic user) gets N API requests per fixed window of S seconds; every answer
carries `Rate-Limit-Limit`, `Rate-Limit-Remaining` and `Rate-Limit-Reset` (seconds, fractional:
the window is scaled down), and past the limit the request is refused with 429 and
`Retry-After` (refused requests do not use up the window, as in the sandbox). The XML is a
public file, as at Focus: fetched without credentials (as the consumer does) it costs no
token a credit; fetched with a token, it is that token's request like any other (§5).
`GET /_rate` answers per token the credits used and the 429s per window; `GET /_credits` the
credits each token spent in all (limited or not) and the XML downloads `[without a token, with
one]`.
`GET /_stats` answers the arrivals as JSON `[[ref, epoch seconds, status], ...]`, `GET /_count`
how many there are, `GET /_peak` the most POSTs it ever had unanswered at once (what the
consumer's concurrency limit must hold).

For the pipeline benchmark it also plays the rest of the world the pipeline talks to:
- `--callback URL --secret S`: CALLBACK_DELAY seconds after answering a POST 202 it calls URL
  (the ingress's `/webhooks/focus/nfse`) with the note `autorizado`, as Focus calls the hook
  registered for the token: the GET fields, `caminho_xml_nota_fiscal` naming the XML above, the
  secret in `Authorization`. Callbacks go out over a few keep-alive connections (a bare
  HTTP/1.1 client: the stand-in's own CPU is not what is measured). `GET /_callbacks` answers
  `[[ref, epoch seconds, http status], ...]` of the callbacks answered.
- `POST /_hook/...`: a client's hook receiver; answers 200 and records `[ref, epoch seconds,
  status]` from the JSON body (`GET /_hooks`).
- `--smtp-port P`: an SMTP server (aiosmtpd, the project's sink's library) that accepts every
  message and records `[recipient, epoch seconds]` (`GET /_mails`).

    python bench/focus_stub.py PORT LATENCY [--callback URL --secret S --callback-delay 0.2
                                             --smtp-port P]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

REJECT_MARKER = b"[bench:rejeitar]"
_ACCEPTED = 202
_REFUSED = 400


def _xml(name: str) -> bytes:
    """The XML of note `N<id>A<attempt>-nfse`, with the numbers `bench/consumer.py`'s callbacks
    claim for it (numero = id, codigo_verificacao = V<id>, its CNPJ): the consumer checks a
    callback against the provider's XML before applying it."""
    doc_id = _doc_id(name)
    return (
        '<?xml version="1.0" encoding="UTF-8"?><CompNfse><Nfse><InfNfse>'
        f"<Numero>{doc_id}</Numero><CodigoVerificacao>V{doc_id}</CodigoVerificacao>"
        "<Cnpj>51916585000125</Cnpj></InfNfse></Nfse></CompNfse>"
    ).encode()


def _doc_id(ref: str) -> str:
    """`N<id>A<attempt>[-nfse.xml]` -> `<id>`: the numbers the stand-in gives a note."""
    return ref.removeprefix("N").split("A", 1)[0]


def _response(
    status: int,
    reason: str,
    body: bytes,
    content_type: str = "application/json",
    extra: dict[str, str] | None = None,
) -> bytes:
    fields = "".join(f"{name}: {value}\r\n" for name, value in (extra or {}).items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode() + body


class Open:
    """POSTs received and not yet answered, across connections."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


@dataclass
class World:
    """What the stand-in records, and where its callbacks go."""

    latency: float
    arrivals: list[tuple[str, float, int]] = field(default_factory=list)
    open_: Open = field(default_factory=Open)
    hooks: list[tuple[str, float, str]] = field(default_factory=list)
    mails: list[tuple[str, float]] = field(default_factory=list)
    callbacks_done: list[tuple[str, float, int]] = field(default_factory=list)
    callbacks: asyncio.Queue[tuple[str, bytes]] | None = None  # None: no callbacks
    callback_delay: float = 0.2
    rate_limit: int = 0  # API requests per window per token; 0: unlimited
    rate_window: float = 60.0
    started: float = field(default_factory=time.monotonic)
    # token -> window index -> [credits used, requests refused]
    windows: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    # Credits spent per token, limited or not, and the XML downloads without / with a token
    # (`GET /_credits`: the pipeline benchmark's credits per note).
    credits: Counter[str] = field(default_factory=Counter)
    downloads: list[int] = field(default_factory=lambda: [0, 0])

    def spend(self, token: str) -> tuple[bool, dict[str, str] | None]:
        """One request of `token`: allowed?, and the rate headers when credits are limited."""
        if not self.rate_limit:
            self.credits[token] += 1
            return True, None
        allowed, headers = self.charge(token)
        if allowed:
            self.credits[token] += 1
        return allowed, headers

    def charge(self, token: str) -> tuple[bool, dict[str, str]]:
        """One API request of `token`: allowed?, and the rate headers of the answer."""
        elapsed = time.monotonic() - self.started
        index = int(elapsed // self.rate_window)
        used = self.windows.setdefault(token, {}).setdefault(index, [0, 0])
        allowed = used[0] < self.rate_limit
        used[0 if allowed else 1] += 1
        reset = (index + 1) * self.rate_window - elapsed
        headers = {
            "Rate-Limit-Limit": str(self.rate_limit),
            "Rate-Limit-Remaining": str(self.rate_limit - used[0]),
            "Rate-Limit-Reset": f"{reset:.3f}",
        }
        if not allowed:
            headers["Retry-After"] = f"{reset:.3f}"
        return allowed, headers


class Responder(asyncio.Protocol):
    def __init__(self, world: World) -> None:
        self._world = world
        self._latency = world.latency
        self._arrivals = world.arrivals
        self._open = world.open_
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
            self._request(head.split("\r\n", 1)[0], body, _token(head))

    def _request(self, request_line: str, body: bytes, token: str = "") -> None:
        method, target, _ = request_line.split(" ", 2)
        url = urlsplit(target)
        if method == "GET" and url.path == "/_count":  # cheap enough to poll
            self._send(_response(200, "OK", str(len(self._arrivals)).encode()))
            return
        if method == "GET" and url.path == "/_rate":
            self._send(_response(200, "OK", json.dumps(self._world.windows).encode()))
            return
        if method == "GET" and url.path == "/_credits":
            anonymous, with_token = self._world.downloads
            got = {"credits": self._world.credits, "downloads": [anonymous, with_token]}
            self._send(_response(200, "OK", json.dumps(got).encode()))
            return
        if method == "GET" and url.path == "/_peak":
            self._send(_response(200, "OK", str(self._open.peak).encode()))
            return
        if method == "GET" and url.path == "/_stats":
            self._send(_response(200, "OK", json.dumps(self._arrivals).encode()))
            return
        if method == "GET" and url.path in ("/_hooks", "/_mails", "/_callbacks"):
            got = {
                "/_hooks": self._world.hooks,
                "/_mails": self._world.mails,
                "/_callbacks": self._world.callbacks_done,
            }[url.path]
            self._send(_response(200, "OK", json.dumps(got).encode()))
            return
        if method == "POST" and url.path.startswith("/_hook"):
            note = json.loads(body)
            self._world.hooks.append((str(note.get("ref")), time.time(), str(note.get("status"))))
            self._send(_response(200, "OK", b"{}"))
            return
        if method == "GET" and url.path.startswith("/notas_fiscais_servico/"):
            # The authorized note's XML, which the consumer downloads when a callback names it.
            name = url.path.rsplit("/", 1)[-1]
            extra: dict[str, str] | None = None
            if token:
                allowed, extra = self._world.spend(token)
                if not allowed:
                    refusal = b'{"codigo":"limite_excedido","mensagem":"Limite excedido"}'
                    self._send(_response(429, "Too Many Requests", refusal, extra=extra))
                    return
            self._world.downloads[bool(token)] += 1
            self._send(_response(200, "OK", _xml(name), "application/xml", extra))
            return
        if method != "POST" or url.path != "/v2/nfse":
            self._send(_response(404, "Not Found", b'{"codigo":"nao_encontrado"}'))
            return
        ref = parse_qs(url.query).get("ref", [""])[0]
        allowed, rate = self._world.spend(token)
        if not allowed:
            refusal = b'{"codigo":"limite_excedido","mensagem":"Limite excedido"}'
            reply = _response(429, "Too Many Requests", refusal, extra=rate)
            self._open.now += 1
            asyncio.get_running_loop().call_later(self._latency, self._answer, reply)
            return
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
        reply = _response(status, reason, json.dumps(answer).encode(), extra=rate)
        loop = asyncio.get_running_loop()
        loop.call_later(self._latency, self._answer, reply)
        queue = self._world.callbacks
        if queue is not None and status == _ACCEPTED:
            cnpj = json.loads(body).get("prestador", {}).get("cnpj", "")
            loop.call_later(
                self._latency + self._world.callback_delay,
                queue.put_nowait,
                (ref, authorized(ref, cnpj)),
            )

    def _answer(self, data: bytes) -> None:
        self._open.now -= 1
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _token(head: str) -> str:
    """The HTTP Basic user of a request head (Focus's token), or ""."""
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "authorization":
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() == "basic":
                try:
                    return base64.b64decode(encoded).decode().partition(":")[0]
                except ValueError:
                    return ""
    return ""


def authorized(ref: str, cnpj: str) -> bytes:
    """Focus's hook body for an authorized NFS-e (the fields of its GET)."""
    n = _doc_id(ref)  # the numbers its XML (`_xml`) carries: the consumer checks they agree
    return json.dumps(
        {
            "cnpj_prestador": cnpj,
            "ref": ref,
            "numero_rps": n,
            "serie_rps": "1",
            "tipo_rps": "RPS",
            "status": "autorizado",
            "numero": n,
            "codigo_verificacao": f"V{n}",
            "data_emissao": "2026-11-22T10:00:00-03:00",
            "url": f"https://prefeitura.example/nfse/{ref}",
            "caminho_xml_nota_fiscal": f"/notas_fiscais_servico/{ref}-nfse.xml",
        }
    ).encode()


async def call_back(world: World, url: str, secret: str) -> None:
    """One keep-alive connection delivering queued callbacks one after the other."""
    assert world.callbacks is not None
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while True:
        ref, body = await world.callbacks.get()
        for _ in range(50):  # a refused or broken connection: reconnect and try again
            try:
                if writer is None or reader is None or writer.is_closing():
                    reader, writer = await asyncio.open_connection(host, port)
                head = (
                    f"POST {target.path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                    f"authorization: {secret}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status_line = await reader.readuntil(b"\r\n")
                length = 0
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                status = int(status_line.split()[1])
                world.callbacks_done.append((ref, time.time(), status))
                if status < 500:
                    break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if writer is not None:
                    writer.close()
                writer = None
            await asyncio.sleep(0.1)


class MailCounter:
    """aiosmtpd handler: accepts every message, records its recipients' arrival."""

    def __init__(self, world: World) -> None:
        self._world = world

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        from notaflow.sandbox.smtp_sink import ehlo_reply  # PIPELINING, as the sink offers it

        return ehlo_reply(session, hostname, responses)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        self._world.mails.extend((rcpt, now) for rcpt in envelope.rcpt_tos)
        return "250 OK"


async def serve(
    port: int,
    latency: float,
    callback: str = "",
    secret: str = "",
    callback_delay: float = 0.2,
    smtp_port: int = 0,
    connections: int = 16,
    rate_limit: int = 0,
    rate_window: float = 60.0,
) -> None:
    world = World(
        latency, callback_delay=callback_delay, rate_limit=rate_limit, rate_window=rate_window
    )
    loop = asyncio.get_running_loop()
    tasks = []
    if callback:
        world.callbacks = asyncio.Queue()
        tasks = [
            asyncio.create_task(call_back(world, callback, secret)) for _ in range(connections)
        ]
    if smtp_port:
        from aiosmtpd.smtp import SMTP

        smtp = await loop.create_server(
            lambda: SMTP(MailCounter(world), hostname="bench-smtp", ident="bench"),
            "127.0.0.1",
            smtp_port,
            backlog=1024,
        )
    server = await loop.create_server(lambda: Responder(world), "127.0.0.1", port, backlog=1024)
    async with server:
        try:
            await server.serve_forever()
        finally:
            for task in tasks:
                task.cancel()
            if smtp_port:
                smtp.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("latency", type=float)
    p.add_argument("--callback", default="", help="the ingress's Focus webhook URL")
    p.add_argument("--secret", default="")
    p.add_argument("--callback-delay", type=float, default=0.2)
    p.add_argument("--smtp-port", type=int, default=0)
    p.add_argument("--rate-limit", type=int, default=0, help="API requests per window per token")
    p.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    a = p.parse_args()
    run = serve(
        a.port,
        a.latency,
        a.callback,
        a.secret,
        a.callback_delay,
        a.smtp_port,
        rate_limit=a.rate_limit,
        rate_window=a.rate_window,
    )
    try:
        import uvloop

        uvloop.run(run)
    except ImportError:
        asyncio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
