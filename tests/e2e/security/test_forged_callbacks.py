"""Issue 19's regression cases, against the production processes: whoever holds the static
callback secret can post any body to `/webhooks/focus/nfse`; the Focus token must never leave for
another host, and no forged outcome may be applied.

A loopback listener stands where an attacker's server would: it must never see a request. Notes
marked `[sandbox:sem_callback]` are authorized at the sandbox but the sandbox keeps quiet, so a
note waits at notaflow in `processando_autorizacao` while forged callbacks arrive."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow.settings import Settings
from testkit.receiver import ReceiverServer
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import DEMO_CNPJS, Stack
from testkit.waiting import wait_for

CNPJ_A, CNPJ_B = DEMO_CNPJS
TOKEN = "sandbox-token"  # the stack's Focus token (testkit.stack)


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(settings, tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def listener() -> Iterator[ReceiverServer]:
    server = ReceiverServer()
    server.start()
    yield server
    server.stop()


def note(cnpj: str, quiet: bool = False) -> dict[str, Any]:
    doc = with_valid_cnpjs(JSON_EXAMPLE)
    doc = copy.deepcopy(doc)
    doc["prestador"]["cnpj"] = cnpj
    if doc.get("tomador", {}).get("cnpj"):
        doc["tomador"]["cnpj"] = CNPJ_B if cnpj == CNPJ_A else CNPJ_A
    if quiet:
        doc["servico"]["discriminacao"] += " [sandbox:sem_callback]"
    return doc


class Attacker:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.hook = f"{stack.base}/webhooks/focus/nfse"
        self.secret = {"Authorization": stack.settings.focus_webhook_secret}

    def emit(self, ref: str, doc: dict[str, Any]) -> str:
        """Emit through the ingress; the provider ref the consumer uses at Focus."""
        with self.stack.client() as c:
            assert c.post("/v2/nfse", params={"ref": ref}, json=doc).status_code == 202
            doc_id = c.get(f"/v2/nfse/{ref}").json()["id"]
        return f"N{doc_id}A1"

    def at_focus(self, pref: str, status: str = "autorizado") -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(
                f"{self.stack.sandbox}/v2/nfse/{pref}", auth=("sandbox-token", "")
            ).json()
            return body if body.get("status") == status else None

        result: dict[str, Any] = wait_for(ready, 20, 0.1)
        return result

    def post(self, body: dict[str, Any]) -> None:
        assert httpx.post(self.hook, json=body, headers=self.secret).status_code == 200

    def view(self, ref: str) -> dict[str, Any]:
        with self.stack.client() as c:
            body: dict[str, Any] = c.get(f"/v2/nfse/{ref}").json()
            return body

    def consultas(self) -> dict[str, int]:
        consultas: dict[str, int] = self.stack.focus_stats()["consultas"]
        return consultas

    def settle(self, pref: str, before: int, listener: ReceiverServer | None = None) -> None:
        """Wait until the consumer asked Focus about `pref` again (its verification ran), or
        until the attacker's listener was called (then fail, showing what it got)."""
        seen = listener.receiver.seen if listener is not None else []
        wait_for(lambda: self.consultas().get(pref, 0) > before or seen, 20, 0.1)
        assert not seen, f"a forged callback made the consumer call another host: {seen}"


def test_forged_callbacks_never_carry_the_token_nor_change_a_note(
    stack: Stack, listener: ReceiverServer
) -> None:
    attacker = Attacker(stack)
    port = listener.receiver.port
    spent = stack.focus_stats()["credits"].get(TOKEN, 0)
    b_pref = attacker.emit("b1", note(CNPJ_B))
    b_view = stack.wait_status("b1", {"autorizado"})
    # What a genuine authorization costs at Focus: one credit, the POST. The callback is checked
    # against the XML, downloaded without credentials as Focus serves it, so no token's credit;
    # no GET.
    stats = stack.focus_stats()
    assert (stats["consultas"].get(b_pref, 0), stats["downloads"][b_pref]) == (0, 1)
    assert stats["credits"][TOKEN] - spent == 1
    b_genuine = attacker.at_focus(b_pref)  # (this GET is the test's, not the consumer's)

    def exfiltrating(path: str) -> Any:
        return lambda truth: {**truth, "caminho_xml_nota_fiscal": path}

    forgeries: list[Any] = [
        # 1. The token goes nowhere a callback says: an absolute URL, a non-ASCII path with
        # `@host`, a scheme-relative one, user info. Refused before any request is made.
        exfiltrating(f"http://127.0.0.1:{port}/x.xml"),
        exfiltrating(f"/\u00e9@127.0.0.1:{port}/x.xml"),
        exfiltrating(f"//127.0.0.1:{port}/x.xml"),
        exfiltrating(f"http://sandbox-token@127.0.0.1:{port}/x.xml"),
        # 2. Company B's genuine body re-pointed at A's note (B's CNPJ), then with A's CNPJ too
        # (the XML on Focus's host is B's and disagrees), a forged error (would free the ref).
        lambda truth: {**b_genuine, "ref": truth["ref"]},
        lambda truth: {**b_genuine, "ref": truth["ref"], "cnpj_prestador": CNPJ_A},
        lambda truth: {
            "ref": truth["ref"],
            "status": "erro_autorizacao",
            "cnpj_prestador": CNPJ_A,
            "erros": [{"codigo": "E1", "mensagem": "forjado", "correcao": None}],
        },
    ]
    prefs = [b_pref]
    for i, forge in enumerate(forgeries):
        ref = f"a{i}"
        pref = attacker.emit(ref, note(CNPJ_A, quiet=True))
        prefs.append(pref)
        truth = attacker.at_focus(pref)
        assert attacker.view(ref)["status"] == "processando_autorizacao"
        before = attacker.consultas().get(pref, 0)
        attacker.post(forge(truth))
        attacker.settle(pref, before, listener)
        # Focus's answer was applied, never the claim: the note is authorized with its own
        # numbers, and its ref is never freed (a client's retry gets 422, no second note).
        view = stack.wait_status(ref, {"autorizado", "erro_autorizacao"})
        assert view["status"] == "autorizado", (i, view)
        assert (view["numero"], view["codigo_verificacao"]) == (
            truth["numero"],
            truth["codigo_verificacao"],
        )
        with stack.client() as c:
            again = c.post("/v2/nfse", params={"ref": ref}, json=note(CNPJ_A))
            assert (again.status_code, again.json()["codigo"]) == (422, "nfe_autorizada")
        history = json.loads(stack.run("history", "acme", ref))["history"]
        assert [h["status"] for h in history] == ["processando_autorizacao", "autorizado"]

    # A forged cancellation of B's authorized note: Focus says authorized, nothing changes.
    before = attacker.consultas().get(b_pref, 0)
    attacker.post({"ref": b_pref, "status": "cancelado", "cnpj_prestador": CNPJ_B})
    attacker.settle(b_pref, before)
    time.sleep(0.5)
    assert attacker.view("b1") == b_view

    assert listener.receiver.seen == [], "a forged callback made the consumer call another host"
    stats = stack.focus_stats()
    assert stats["emissions"] == {pref: 1 for pref in prefs}
    assert "sandbox-token" not in "".join(p.output() for p in stack.procs)
    # Same processes (a stack costs ~10-20 s to start): the correction case.
    corrects_an_unconfirmed_authorization(stack)


def corrects_an_unconfirmed_authorization(stack: Stack) -> None:
    """The one forgery the XML check cannot see: another genuine note of the same company,
    re-pointed. It is applied (its XML is genuine), and the real callback, which disagrees,
    makes the consumer ask Focus and correct it."""
    attacker = Attacker(stack)
    # A genuine error frees the ref, so it costs one GET: POST + GET, no download.
    rejected = note(CNPJ_A)
    rejected["servico"]["discriminacao"] += " [sandbox:erro]"
    e_pref = attacker.emit("e1", rejected)
    stack.wait_status("e1", {"erro_autorizacao"})
    stats = stack.focus_stats()
    assert (stats["consultas"][e_pref], stats["downloads"].get(e_pref, 0)) == (1, 0)

    d_pref = attacker.emit("d1", note(CNPJ_A))
    stack.wait_status("d1", {"autorizado"})
    c_pref = attacker.emit("c1", note(CNPJ_A, quiet=True))
    c_truth = attacker.at_focus(c_pref)
    d_genuine = attacker.at_focus(d_pref)

    attacker.post({**d_genuine, "ref": c_pref})
    wrong = stack.wait_status("c1", {"autorizado"})
    assert wrong["numero"] == d_genuine["numero"]

    before = attacker.consultas().get(c_pref, 0)
    attacker.post(c_truth)
    attacker.settle(c_pref, before)
    fixed = wait_for(
        lambda: (v := attacker.view("c1"))["numero"] == c_truth["numero"] and v, 20, 0.1
    )
    assert fixed["codigo_verificacao"] == c_truth["codigo_verificacao"]
    # notaflow's own name for the XML, 128 random bits, not the provider's; it serves the
    # genuine XML, without credentials.
    path = fixed["caminho_xml_nota_fiscal"]
    assert path != c_truth["caminho_xml_nota_fiscal"]
    name = path.removeprefix("/notas_fiscais_servico/").removesuffix(".xml")
    assert len(name) == 32 and int(name, 16) >= 0
    xml = httpx.get(stack.base + path)
    assert xml.status_code == 200 and c_truth["codigo_verificacao"].encode() in xml.content
