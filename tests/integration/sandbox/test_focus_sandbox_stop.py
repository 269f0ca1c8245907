"""The Focus sandbox keeps its callbacks cheap when the receiver is gone and drops its backlog
when it stops (`notaflow dev` stops it after the ingress, under load)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from notaflow.sandbox.focus import FocusSandboxConfig, create_focus_sandbox
from tests.integration.sandbox.test_focus_sandbox import TOKEN, Receiver, nfse, serving


async def _stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        body: dict[str, Any] = (await c.get(f"{url}/_sandbox/stats")).json()
    return body


async def test_a_refused_receiver_is_not_dialled_again_during_the_pause() -> None:
    # Bound but not listening: connections are refused until listen() below.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    hook_url = f"http://127.0.0.1:{sock.getsockname()[1]}/focus"
    config = FocusSandboxConfig(
        processing_delay=0.0, callback_retry_delays=[1.5], callback_refused_pause=1.0
    )
    receiver = Receiver(url=hook_url)
    app = Starlette(routes=[Route("/focus", receiver.handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    async with (
        serving(create_focus_sandbox(config)) as url,
        httpx.AsyncClient(base_url=url, auth=(TOKEN, "")) as api,
    ):
        await api.post("/v2/hooks", json={"event": "nfse", "url": hook_url})
        await api.post("/v2/nfse", params={"ref": "nf1"}, json=nfse())
        for _ in range(100):
            if (await _stats(url))["callbacks"]["failed"] == 1:
                break
            await asyncio.sleep(0.01)
        refused_at = time.monotonic()
        sock.listen()
        serving_task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(500):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            # The receiver is back, but nf2's first attempt falls in the pause: not dialled.
            await api.post("/v2/nfse", params={"ref": "nf2"}, json=nfse())
            await asyncio.sleep(0.5)
            assert time.monotonic() - refused_at < 1.0, "the machine is too slow for this test"
            assert receiver.calls == []
            assert (await _stats(url))["callbacks"]["failed"] == 2
            # Both retries (1.5 s later) are dialled and delivered.
            bodies = await receiver.wait_for(2, timeout=5)
            assert sorted(b["ref"] for b in bodies) == ["nf1", "nf2"]
            assert (await _stats(url))["callbacks"] == {
                "sent": 2, "failed": 2, "given_up": 0, "dropped": 0,
            }  # fmt: skip
        finally:
            server.should_exit = True
            await serving_task
            sock.close()


async def test_stopping_gives_up_the_backlog_at_once() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/focus"
    # Long retries and a slow prefeitura: without the stop they would run for a minute.
    config = FocusSandboxConfig(processing_delay=0.0, callback_retry_delays=[60.0])
    app = create_focus_sandbox(config)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, auth=(TOKEN, "")) as api:
        await api.post("/v2/hooks", json={"event": "nfse", "url": dead})
        for n in range(20):
            await api.post("/v2/nfse", params={"ref": f"nf{n}"}, json=nfse())
        for _ in range(200):
            if (await _stats(url))["callbacks"]["failed"] == 20:
                break
            await asyncio.sleep(0.01)
        await api.post(
            "/_sandbox/scenario", json={"ref": "slow", "delay": 60}
        )  # a note still in processing
        await api.post("/v2/nfse", params={"ref": "slow"}, json=nfse())
        sandbox = app.state.sandbox
        began = time.monotonic()
        sandbox.begin_stop()
        await sandbox.aclose()
        assert time.monotonic() - began < 1.0
        assert sandbox.stats.callbacks["given_up"] == 20
        assert sandbox.stats.callbacks["sent"] == 0
