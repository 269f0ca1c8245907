"""Hooks benchmark: the notification consumer's CPU per webhook delivered over HTTPS in bursts,
as a tenant's receiver gets them when a batch of notes is authorized.

    bin/bench hooks [--bursts 30] [--size 64] [--rounds 3]

A TLS receiver (its own process, a certificate made for the run) answers every POST after
5 ms; the sender delivers ROUNDS x BURSTS bursts of SIZE hooks at once, with a pause between
bursts, the way the consumer's window releases them. Three senders, alternated each round:
- notaflow: the webhook transport as `notaflow consume notification` makes it
  (`consumers.providers.webhooks.hook_transport`: 8 connections kept per receiver at least, and
  more while all receivers together keep fewer than the 100 that may be in use);
- notaflow, 8 kept: the same transport held to 8 per receiver, as it was before;
- baseline: what a user would write instead, `httpx.AsyncClient()` with httpx's defaults
  (100 connections, 20 kept alive) posting the same JSON.
Reported: the sender process's CPU per hook (user + system), best and median of rounds, the
TLS connections opened per hook after the first burst (the receiver numbers each connection
it accepts: those seen since, above the first burst's, were opened since), and the
ratios against the baseline. A connection opened is a TLS handshake for both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from notaflow.consumers.providers.webhooks.sender import hook_transport
from notaflow.keepalive import KeepAliveTransport

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's testkit
from testkit.certificates import self_signed

NAME = "hooks.bench.test"
BODY = b'{"cnpj_prestador":"51916585000125","ref":"nota-1","status":"autorizado","numero":"1"}'

RECEIVER = r"""
import asyncio, ssl, sys
count = 0
async def handle(reader, writer):
    global count
    count += 1
    number = str(count).encode()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            size = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    size = int(line.split(b":")[1])
            if size:
                await reader.readexactly(size)
            await asyncio.sleep(0.005)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Connection: " + number
                         + b"\r\n\r\n")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[3]), ssl=context)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

Post = Callable[[], Awaitable[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(post: Post, bursts: int, size: int) -> tuple[float, float]:
    """CPU µs per hook and connections opened per hook, over `bursts` bursts of `size`."""
    warm = await asyncio.gather(*(post() for _ in range(size)))  # the first burst opens
    seen: set[int] = set()
    before = time.process_time()
    for _ in range(bursts):
        seen.update(int(n) for n in await asyncio.gather(*(post() for _ in range(size))))
        await asyncio.sleep(0.02)  # the consumer's next records
    cpu = time.process_time() - before
    # The receiver numbers connections as it accepts them: above the warm-up's, new ones.
    opened = len([n for n in seen if n > max(int(n) for n in warm)])
    return cpu / (bursts * size) * 1e6, opened / (bursts * size)


def ours(transport: KeepAliveTransport, port: int) -> Post:
    headers = [(b"host", NAME.encode()), (b"content-type", b"application/json")]

    async def post() -> bytes:
        reply = await transport.exchange(
            b"https", "127.0.0.1", port, b"POST", b"/hook", headers, BODY,
            {"connect": 10, "read": 10, "write": 10, "pool": 10}, server_hostname=NAME,
        )  # fmt: skip
        return dict(reply.headers)[b"x-connection"]

    return post


def httpx_client(client: httpx.AsyncClient, port: int) -> Post:
    async def post() -> bytes:
        reply = await client.post(
            f"https://127.0.0.1:{port}/hook",
            content=BODY,
            headers={"content-type": "application/json", "host": NAME},
            extensions={"sni_hostname": NAME},
        )
        return reply.headers["x-connection"].encode()

    return post


async def run(args: argparse.Namespace, cert: Path, port: int) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    results: dict[str, list[tuple[float, float]]] = {"notaflow": [], "notaflow, 8 kept": [],
                                                     "baseline": []}  # fmt: skip
    for _ in range(args.rounds):
        transport = hook_transport(ssl_context=context)
        results["notaflow"].append(await measure(ours(transport, port), args.bursts, args.size))
        await transport.aclose()
        eight = KeepAliveTransport(context, 100, max_idle_per_origin=8, idle_expiry=4.0)
        results["notaflow, 8 kept"].append(await measure(ours(eight, port), args.bursts, args.size))
        await eight.aclose()
        async with httpx.AsyncClient(verify=context) as client:
            results["baseline"].append(
                await measure(httpx_client(client, port), args.bursts, args.size)
            )
    print(
        f"\nhooks benchmark (HTTPS receiver answering in 5 ms, {args.rounds} rounds of "
        f"{args.bursts} bursts of {args.size} hooks, senders alternated)"
    )
    print(f"{'sender':18} {'CPU us/hook best':>17} {'median':>8} {'opened/hook':>12}")
    best: dict[str, float] = {}
    median: dict[str, float] = {}
    for name, rows in results.items():
        cpus = [cpu for cpu, _ in rows]
        best[name], median[name] = min(cpus), statistics.median(cpus)
        opened = statistics.median(conns for _, conns in rows)
        print(f"{name:18} {best[name]:17.0f} {median[name]:8.0f} {opened:12.3f}")
    for name in ("notaflow", "notaflow, 8 kept"):
        print(
            f"CPU per hook {name} / baseline: best {best[name] / best['baseline']:.2f}, "
            f"median {median[name] / median['baseline']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cert, key = self_signed(NAME, Path(folder), ca=True)
        port = free_port()
        receiver = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(cert), str(key), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            import uvloop  # the consumers' loop

            uvloop.run(run(args, cert, port))
        finally:
            receiver.kill()
            receiver.wait()


if __name__ == "__main__":
    main()
