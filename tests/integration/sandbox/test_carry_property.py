"""Property: any JSON object a client puts under a key notaflow does not know, in a valid NFS-e,
reaches the Focus sandbox unchanged, or is refused with a clear Focus 400 naming a field under
that key; it is never dropped. The path is the production one from the ingress on: the body
parsed as the ingress parses it, `normalize_nfse`, the real Focus client over a real socket, the
sandbox, and the sandbox's own `GET ?completa=1` read back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notaflow.consumers.providers.focus import FocusClient
from notaflow.errors import InvalidDocument
from notaflow.ingress.body import parse_json
from notaflow.nfse import normalize_nfse
from notaflow.sandbox.focus import FocusSandboxConfig, create_focus_sandbox
from tests.integration.sandbox.test_focus_sandbox import serving
from tests.unit.nfse.test_nfse_validation import valid_doc

T = TypeVar("T")
TOKEN = "tok-carry"


class Background:
    """An event loop in a thread running the sandbox under uvicorn and one Focus client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop = asyncio.Event()
        self.url: Future[str] = Future()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        self.base = self.url.result(timeout=10)
        self.focus = self.run(self._client())

    async def _client(self) -> FocusClient:
        return FocusClient(self.base, TOKEN, timeout=10)

    async def _serve(self) -> None:
        config = FocusSandboxConfig(processing_delay=30.0)  # nothing needs to be decided
        async with serving(create_focus_sandbox(config)) as url:
            self.url.set_result(url)
            await self._stop.wait()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def close(self) -> None:
        self.run(self.focus.aclose())
        self.loop.call_soon_threadsafe(self._stop.set)
        self._served.result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def background() -> Iterator[Background]:
    running = Background()
    yield running
    running.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
_counter = iter(range(10**9))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    where=st.sampled_from(["", "servico", "tomador", "tomador.endereco", "prestador"]),
    key=st.text(min_size=1, max_size=10),
    value=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
)
def test_unknown_object_reaches_the_sandbox_or_is_refused(
    background: Background, where: str, key: str, value: dict[str, Any]
) -> None:
    raw = valid_doc()
    target = raw
    for part in filter(None, where.split(".")):
        target = target[part]
    if key in target or key in ("nif", "motivo_ausencia_nif", "codigo_nbs", "tomador"):
        return  # a field notaflow knows (or may): not what this property is about
    target[key] = value
    body = parse_json(orjson.dumps(raw))  # as the ingress reads the request
    try:
        doc = normalize_nfse(body)
    except InvalidDocument as error:
        assert error.field.startswith(f"{where}.{key}" if where else key), error
        assert error.message.startswith(f'Parâmetro "{error.field}"'), error.message
        return
    ref = f"c{next(_counter)}"
    reply = background.run(background.focus.emit_nfse(ref, doc))
    assert reply.status_code == 202, reply.body
    received = httpx.get(
        f"{background.base}/v2/nfse/{ref}", params={"completa": 1}, auth=(TOKEN, "")
    ).json()["requisicao_nota_fiscal"]
    for part in filter(None, where.split(".")):
        received = received[part]
    assert received[key] == value
