"""The emission consumer: NFS-e emit commands in, Focus NFe calls out, provider callbacks applied.

Both topics are handled here because both move the same document through its emission
lifecycle; records share the document key, so the runner keeps a command and its callbacks in
order. Idempotency rests on the state machine: a redelivered command whose attempt was already
submitted does nothing, a duplicate callback finds its transition already made.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from typing import Any, TypeVar

from notaflow import topics as t
from notaflow.accounts import AccountDisabled, FocusCredentials
from notaflow.bus import Publisher
from notaflow.consumers.callback_check import (
    CONFIRM_FIRST,
    VERIFIED_BY,
    foreign_note,
    same_outcome,
    xml_agrees,
)
from notaflow.consumers.lifecycle_events import publish_if_current, publish_status
from notaflow.consumers.nfce import NfceEmitter
from notaflow.consumers.providers.focus import FocusClient, FocusToken
from notaflow.consumers.providers.urls import ForeignPath
from notaflow.envelope import Event
from notaflow.errors import (
    CredentialRefused,
    InvalidDocument,
    Permanent,
    RateLimited,
    RefInUse,
    Stopping,
    Transient,
)
from notaflow.focus_kinds import BY_CANCEL_TYPE, BY_EMIT_TYPE, BY_KIND, NFSE, FocusKind
from notaflow.lifecycle import (
    AUTHORIZED,
    CANCELLED,
    CORRECTABLE,
    ERROR,
    OUTCOMES,
    PROCESSING,
    can_follow,
    focus_ref,
    focus_ref_parts,
    ref_reusable,
    sources,
    xml_path,
)
from notaflow.routing import Routes
from notaflow.schemas import validator
from notaflow.store import Document, DocumentStore, TenantStore
from notaflow.store.tenants import TenantCache
from notaflow.views import result_from_provider

log = logging.getLogger(__name__)
K = TypeVar("K")
SOURCE = t.SOURCE_EMISSION
# Seconds a `cancelado` callback for a note still authorized here, whose cancel command this
# consumer saw, waits for the cancellation consumer to record it before it is confirmed with
# Focus (`_own_cancellation`): the DELETE's answer, a GET and a download at Focus's latency,
# and a credit waited for.
CANCEL_SETTLE = 5.0
# Cancel commands seen, the most recent kept (a note whose command was pushed out, or seen by
# a process that has since restarted, is confirmed with Focus, as one cancelled elsewhere).
CANCELS_KEPT = 10_000
KIND = "nfse"
CREDENTIAL_ERROR = "credencial_recusada"
# At most this many accepted provider refs awaiting their hand-over are kept (a record that
# ends in the dead-letter topic leaves its ref here until pushed out).
ACCEPTED_KEPT = 10_000
ACCOUNT_DISABLED = "conta_desabilitada"


class EmissionConsumer:
    def __init__(
        self,
        documents: DocumentStore,
        tenants: TenantStore,
        focus: FocusClient,
        bus: Publisher,
        topics: t.Topics,
        nfce: NfceEmitter | None = None,
        focus_token: FocusToken | None = None,
        cancel_settle: float = CANCEL_SETTLE,
    ) -> None:
        self._focus_token = focus_token
        self._cancel_settle = cancel_settle
        self._nfce = nfce
        self._docs = documents
        # Every command names its tenant; a cached copy saves two queries per note.
        self._tenants = TenantCache(tenants)
        self._focus = focus
        self._bus = bus
        self._topics = topics
        # Provider refs Focus accepted whose hand-over is not recorded yet. A retry of the
        # record in this process (the broker or the database failed right after the POST)
        # goes straight to the hand-over instead of POSTing again: Focus would answer the
        # repeat 422 (ours, so accepted) but count it against the company's 100 requests a
        # minute. A crash forgets them, and the redelivery takes the 422 path as before.
        self._accepted: OrderedDict[str, None] = OrderedDict()
        # Notes (tenant, kind, ref) whose cancel command went by on the command topic: their
        # `cancelado` callback is likely our own DELETE's (`_own_cancellation`).
        self._cancels: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def routes(self) -> Routes:
        """Emit commands (a municipal NFS-e or an NFS-e Nacional), Focus's callbacks, NFC-e
        creation. Other command types on these topics belong to other consumers."""
        routes = Routes()
        for event_type, kind in BY_EMIT_TYPE.items():
            routes.add(
                self._topics.nfse_commands, event_type, functools.partial(self.emit, kind=kind)
            )
        routes.add(self._topics.nfce_commands, t.NFCE_CREATE, self.create_nfce)
        routes.add(self._topics.provider_events, t.FOCUS_NFSE_CALLBACK, self.apply_callback)
        for event_type, kind in BY_CANCEL_TYPE.items():  # the cancellation consumer's to do
            seen = functools.partial(self.saw_cancel, kind=kind)
            routes.add(self._topics.nfse_commands, event_type, seen)
        return routes

    async def saw_cancel(self, event: Event, kind: FocusKind = NFSE) -> None:
        """A cancel command went by (the cancellation consumer carries it out): remember its
        note, so that Focus's `cancelado` callback for it waits for our own record instead of
        being confirmed at a credit. The command is published before the DELETE it causes, and
        shares its note's key with the callbacks, whose records run in the order fetched: it is
        seen first unless this consumer lags behind on the command topic, and then the callback
        is confirmed at a credit, as before."""
        data = event.data if isinstance(event.data, dict) else {}
        tenant, ref = data.get("tenant"), data.get("ref")
        if isinstance(tenant, str) and isinstance(ref, str):
            _remember(self._cancels, (tenant, kind.kind, ref), CANCELS_KEPT)

    async def create_nfce(self, event: Event) -> None:
        if self._nfce is None:
            raise Permanent("NFC-e is not configured (NOTAFLOW_EMITES_*)")
        await self._nfce.create(event)

    # -- emit ----------------------------------------------------------------------------------

    async def emit(self, event: Event, kind: FocusKind = NFSE) -> None:
        data = event.data
        errors = sorted(validator(kind.command_schema).iter_errors(data), key=lambda e: str(e))
        if errors:
            raise InvalidDocument("data", f"comando inválido: {errors[0]}")
        tenant_id, ref = data["tenant"], data["ref"]
        doc = await self._docs.get(tenant_id, kind.kind, ref)
        document: dict[str, Any] | None = None
        if doc is not None and doc.command_id == event.id:
            # Claimed with this very command (by the ingress, or by an earlier delivery): the
            # stored payload is the normalized document; normalizing it again is wasted work.
            cnpj = doc.cnpj_prestador
        else:
            document = kind.normalize(data[kind.kind])
            cnpj = kind.prestador(document)
        tenant = await self._tenants.get(tenant_id)
        if tenant is None or cnpj not in tenant.cnpjs:
            tenant = await self._tenants.get(tenant_id, fresh=True)  # refuse on current data
        if tenant is None:
            raise InvalidDocument("tenant", f"tenant desconhecido: {tenant_id}")
        if cnpj not in tenant.cnpjs:
            raise InvalidDocument("prestador.cnpj", "empresa_nao_habilitada")

        if document is not None and (doc is None or ref_reusable(doc.status)):
            # Published straight to Kafka by another system, or a re-emission after an error.
            if doc is not None:
                # The error this attempt replaces goes out again first, as the ingress sends it
                # for the re-emissions it takes (`ingress.intake`): its writer may have died
                # before publishing it, and its redelivered callback will find the note moved on.
                await publish_status(self._bus, self._topics, doc, SOURCE, event)
            try:
                await self._docs.claim(
                    tenant_id, kind.kind, ref, cnpj, document, event.id, SOURCE, current=doc
                )
            except RefInUse as exc:
                raise Permanent(f"ref {ref} em uso ({exc.status})") from exc
            doc = await self._docs.get(tenant_id, kind.kind, ref)
        if doc is None or doc.command_id != event.id:
            log.info("skipping stale emit %s for %s/%s", event.id, tenant_id, ref)
            return
        if doc.submitted_at is not None:
            # Redelivery of a command already handed to the provider (its lifecycle event went
            # out before the hand-over was recorded, below); outcomes after it are the
            # callbacks', whose redeliveries send their events again.
            return
        if doc.status != PROCESSING:
            # An outcome this handler wrote itself, never handed over (a refusal, a refused
            # token, a disabled account): the process may have died between that write and
            # its event, so the event goes out again (same id, deduplicated downstream).
            await self._publish_status(doc, event)
            return
        pref = focus_ref(doc.id, doc.attempt)
        if pref in self._accepted:
            # Focus took it on an earlier try of this record in this process; what failed
            # after (the broker, the database) is all that is left to do.
            await self._hand_over(doc, pref, event)
            return
        try:
            token = await self._token(tenant_id, cnpj)
        except AccountDisabled:
            # Disabled after the door accepted the note: it ends here, explained, before any
            # call (the default token must not stand in for a disabled company's).
            erro = {
                "codigo": ACCOUNT_DISABLED,
                "mensagem": f"A conta Focus NFe da empresa {cnpj} está desabilitada: "
                "reative-a ou cadastre outra e emita a nota de novo",
                "correcao": None,
            }
            await self._finish(doc, ERROR, None, [erro], event)
            return
        # No write before the call: a callback racing our own bookkeeping finds the note by the
        # attempt its ref names (`DocumentStore.by_provider_ref`).
        try:
            reply = await self._focus.emit_document(
                kind.api_path, pref, doc.payload, token, tenant_id
            )
        except CredentialRefused as exc:
            # Final, explained, and only for this company: its notes stop here (a retry would
            # only spend attempts on a token Focus refuses) until an operator fixes the
            # account; the ref is reusable after the error, as after any erro_autorizacao.
            log.warning("Focus refused the token of %s/%s: %s", tenant_id, cnpj, exc)
            erro = {
                "codigo": CREDENTIAL_ERROR,
                "mensagem": f"A Focus NFe recusou a credencial (token) da empresa {cnpj} "
                f"(HTTP {exc.status}): verifique a conta do prestador",
                "correcao": None,
            }
            await self._finish(doc, ERROR, None, [erro], event)
            return
        code = reply.body.get("codigo")
        if reply.status_code in (200, 201, 202) or code in ("em_processamento", "nfe_autorizada"):
            # 422 for our own provider ref means an earlier delivery of this command got through.
            _remember(self._accepted, pref, ACCEPTED_KEPT)
            await self._hand_over(doc, pref, event)
            return
        # The provider refused the document outright: a final, explained state.
        erros = reply.body.get("erros") or [
            {
                "codigo": code or str(reply.status_code),
                "mensagem": reply.body.get("mensagem"),
                "correcao": None,
            }
        ]
        await self._finish(doc, ERROR, None, erros, event)

    async def _hand_over(self, doc: Document, pref: str, event: Event) -> None:
        """What follows Focus's acceptance. The lifecycle event goes out before the hand-over
        is recorded: a crash between the two leaves the note unrecorded, and whatever comes
        next (this command redelivered, or the provider's callback fetched ahead of it)
        publishes it again under the same id. The other order could lose it: recorded, never
        published, and a callback applied first finds the note submitted and moves it on
        without it."""
        await self._publish_status(doc, event)
        await self._docs.mark_submitted(doc.id, doc.attempt, pref)
        self._accepted.pop(pref, None)

    # -- callbacks -----------------------------------------------------------------------------

    async def apply_callback(self, event: Event) -> None:
        body = event.data
        errors = sorted(validator("focus_callback").iter_errors(body), key=lambda e: str(e))
        if errors:
            raise InvalidDocument("data", f"callback inválido: {errors[0]}")
        doc = await self._docs.by_provider_ref(str(body["ref"]))
        if doc is None:
            if await self._earlier_attempt(str(body["ref"])):
                return
            raise InvalidDocument("ref", f"callback para ref desconhecida {body['ref']}")
        status = body["status"]
        if status not in OUTCOMES:
            return
        if same_outcome(doc.result, status, doc.status, body):
            # Already applied. Publish the status again: if a crash came between the state
            # change and its lifecycle event, this redelivery is the only chance to send it, and
            # the event's id is deterministic, so downstream deduplicates the extra copy.
            await self._publish_status(doc, event)
            return
        correcting = _correctable(doc) and status in CORRECTABLE
        if not correcting and not can_follow(doc.status, status):
            return  # late callback: the note has moved on
        if (
            status == CANCELLED
            and doc.status == AUTHORIZED
            and (doc.tenant_id, doc.kind, doc.ref) in self._cancels
        ):
            settled = await self._own_cancellation(doc, str(body["ref"]))
            if settled is not None:
                await self._publish_status(settled, event)  # as for any repeated callback
                return
        checked = await self._verified(doc, body, confirm=correcting or status in CONFIRM_FIRST)
        if checked is None:
            return
        truth, xml, how = checked
        status = truth["status"]
        if same_outcome(doc.result, status, doc.status, truth):
            return  # Focus confirms what we have: the claim was not true
        allowed = sources(status, correcting=correcting)
        if doc.status not in allowed:
            return
        # The provider's answer may come before our record of handing the note over: a crash
        # fell between the POST and that bookkeeping, and after the restart this callback was
        # fetched ahead of the redelivered command. Record it now, event first as in `emit`, so
        # the stream still reads processing -> outcome.
        if doc.status == PROCESSING and doc.submitted_at is None:
            await self._publish_status(doc, event)
            await self._docs.mark_submitted(doc.id, doc.attempt, str(body["ref"]))
        result: dict[str, Any] = {**result_from_provider(truth), VERIFIED_BY: how}
        # Documents are served under names of our own (128 random bits), never the provider's:
        # the XML routes need no credentials, so the name is the only secret (issue 19).
        result.pop("caminho_xml_nota_fiscal", None)
        result.pop("caminho_xml_cancelamento", None)
        if status == AUTHORIZED and xml is not None:
            path = xml_path(doc.kind)
            await self._docs.put_blob(path, doc.tenant_id, "application/xml", xml)
            result["caminho_xml_nota_fiscal"] = path
        elif status == CANCELLED:
            # Cancelled at Focus (outside notaflow, or our DELETE's callback): the authorized
            # XML keeps its name, and the cancellation XML is kept beside it.
            if doc.result.get("caminho_xml_nota_fiscal"):
                result["caminho_xml_nota_fiscal"] = doc.result["caminho_xml_nota_fiscal"]
            if truth.get("caminho_xml_cancelamento"):
                cancel_xml = await self._focus.download(
                    str(truth["caminho_xml_cancelamento"]),
                    await self._doc_token(doc),
                    doc.tenant_id,
                )
                path = xml_path(doc.kind)
                await self._docs.put_blob(path, doc.tenant_id, "application/xml", cancel_xml)
                result["caminho_xml_cancelamento"] = path
        erros = truth.get("erros") if status == ERROR else None
        updated = await self._docs.transition(
            doc.id, doc.attempt, status, SOURCE, result, erros, after=allowed
        )
        if updated is not None:
            # The conditional transition tells the note is in this state now: no re-read.
            await publish_status(self._bus, self._topics, updated, SOURCE, event)

    async def _earlier_attempt(self, provider_ref: str) -> bool:
        """Whether `provider_ref` is an earlier attempt of a note whose ref was emitted again
        after an error: Focus's late or repeated callback for it (Focus retries a hook it
        thinks undelivered) is old news, not an unknown ref for the dead-letter topic."""
        parts = focus_ref_parts(provider_ref)
        if parts is None:
            return False
        doc = await self._docs.by_id(parts[0])
        if doc is None or doc.kind not in BY_KIND or doc.attempt <= parts[1]:
            return False
        log.info(
            "callback for %s ignored: note %s is at attempt %d now",
            provider_ref,
            doc.id,
            doc.attempt,
        )
        return True

    async def _verified(
        self, doc: Document, body: dict[str, Any], confirm: bool
    ) -> tuple[dict[str, Any], bytes | None, str] | None:
        """The outcome to apply, with the authorized note's XML and how it was established
        ("xml" or "consulta"), or None when Focus does not confirm the callback.

        Cheapest first: an authorization that names our note and agrees with the XML on
        Focus's own host costs no credit (the XML download we make anyway goes without the
        token, as Focus serves it); anything else (an outcome
        that frees the ref or cannot be undone, a disagreement, a path off Focus's host) costs
        one GET of the note at Focus, whose answer is applied instead of the callback's."""
        # Found by the ref, recorded or named (a callback ahead of the hand-over's record).
        pref = doc.provider_ref or focus_ref(doc.id, doc.attempt)
        why = foreign_note(doc.cnpj_prestador, pref, body)
        if not why and not confirm and body["status"] == AUTHORIZED:
            try:
                xml = await self._focus.download(
                    str(body.get("caminho_xml_nota_fiscal") or ""),
                    await self._doc_token(doc),
                    doc.tenant_id,
                )
            except ForeignPath as exc:
                why = f"caminho_xml_nota_fiscal recusado ({exc})"
            except (Stopping, RateLimited):
                raise
            except Transient as exc:
                why = f"XML indisponível ({exc})"
            else:
                if xml_agrees(xml, body, doc.cnpj_prestador):
                    return body, xml, "xml"
                why = "XML do provedor não confere com o callback"
        if why:
            log.warning("callback for document %s not taken as sent: %s", doc.id, why)
        token = await self._doc_token(doc)
        reply = await self._focus.get_document(
            BY_KIND[doc.kind].api_path, pref, token, doc.tenant_id
        )
        truth = reply.body
        if (
            reply.status_code != 200
            or str(truth.get("ref")) != pref
            or truth.get("status") not in OUTCOMES
        ):
            log.warning(
                "callback for document %s (%s) not confirmed by Focus: HTTP %s, status %s",
                doc.id,
                body["status"],
                reply.status_code,
                str(truth.get("status"))[:40],
            )
            return None
        path = truth.get("caminho_xml_nota_fiscal")
        if truth["status"] == AUTHORIZED and path:
            return truth, await self._focus.download(str(path), token, doc.tenant_id), "consulta"
        return truth, None, "consulta"

    async def _own_cancellation(self, doc: Document, provider_ref: str) -> Document | None:
        """The note as cancelled by notaflow's own DELETE, if the cancellation consumer records
        it within `cancel_settle` seconds; else None. Focus calls back `cancelado` as soon as it
        answers a DELETE, and when the DELETE was ours the cancellation consumer is recording
        that answer meanwhile (after the GET that names the cancellation XML, and its download):
        the callback often comes first. Confirming it with Focus then costs a credit for what
        is our own doing; waiting a little costs nothing. Only notes whose cancel command this
        consumer saw wait: a cancellation made outside notaflow is confirmed at once."""
        waited, pause = 0.0, 0.05
        while waited < self._cancel_settle:
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1.0, self._cancel_settle - waited)
            now = await self._docs.by_provider_ref(provider_ref)
            if now is None or now.id != doc.id or now.attempt != doc.attempt:
                return None
            if now.status == CANCELLED:
                return now
            if now.status != AUTHORIZED:
                return None
        return None

    async def _token(self, tenant_id: str, cnpj: str) -> FocusCredentials | None:
        return None if self._focus_token is None else await self._focus_token(tenant_id, cnpj)

    async def _doc_token(self, doc: Document) -> FocusCredentials | None:
        return await self._token(doc.tenant_id, doc.cnpj_prestador)

    async def _finish(
        self,
        doc: Document,
        status: str,
        result: dict[str, Any] | None,
        erros: list[dict[str, Any]] | None,
        cause: Event,
    ) -> None:
        updated = await self._docs.transition(doc.id, doc.attempt, status, SOURCE, result, erros)
        if updated is not None:
            # The transition is the conditional write that tells: the note is in this state
            # now, made so by us; no re-read (one read less per note). What could follow it, a
            # cancellation, first waits for this state and then makes its own call to Focus.
            await publish_status(self._bus, self._topics, updated, SOURCE, cause)

    async def _publish_status(self, doc: Document, cause: Event) -> None:
        # Only if still current: `doc` may have been read before a slow Focus call, and the
        # note moved on meanwhile (its callback applied, a cancellation): publishing the old
        # status then would make the note go backwards on the lifecycle topic.
        await publish_if_current(self._bus, self._topics, self._docs, doc, SOURCE, cause)


def _correctable(doc: Document) -> bool:
    """An authorization applied from a callback Focus was not asked about: a later outcome
    that disagrees is checked with Focus and, if Focus says so, replaces it."""
    return doc.status == AUTHORIZED and doc.result.get(VERIFIED_BY) != "consulta"


def _remember(seen: OrderedDict[K, None], key: K, kept: int) -> None:
    """`key` as the most recent of `seen`, which keeps only the `kept` most recent."""
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > kept:
        seen.popitem(last=False)
