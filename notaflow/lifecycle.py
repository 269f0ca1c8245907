"""The life of a document (an NFS-e, an NFS-e Nacional, an NFC-e), in one place: its statuses,
which status may follow which, what each status allows (a cancellation, an e-mail, the reuse of
its ref), the ref it goes by at the provider and the names its files are kept under.

Pure data and functions. The store applies the transitions (conditional UPDATEs, so a late or
repeated event is a no-op); the consumers and the ingress ask the preconditions here instead of
spelling the statuses again.

    claim ──> processando_autorizacao ──> autorizado ──> cancelado   (final)
                     ^                └─> erro_autorizacao
                     └───── re-claim (attempt + 1) ──┘                (the ref is reusable)
"""

from __future__ import annotations

import enum
import re
import secrets

PROCESSING = "processando_autorizacao"
AUTHORIZED = "autorizado"
ERROR = "erro_autorizacao"
CANCELLED = "cancelado"

STATUSES = (PROCESSING, AUTHORIZED, ERROR, CANCELLED)

# Which status may follow which: what `DocumentStore.transition` applies. Into processing only
# by a claim (a new ref) or a re-claim (REUSABLE), never by a transition.
TRANSITIONS: dict[str, frozenset[str]] = {
    AUTHORIZED: frozenset({PROCESSING}),
    ERROR: frozenset({PROCESSING}),
    CANCELLED: frozenset({AUTHORIZED}),
}

# A ref is reusable only after erro_autorizacao (Focus rule): the re-claim puts the note back
# in processing under the next attempt.
REUSABLE = frozenset({ERROR})

# The provider's answers about a note (what a callback or a consulta may bring).
OUTCOMES = frozenset({AUTHORIZED, ERROR, CANCELLED})

# The note exists at the prefeitura / SEFAZ: it has numbers and an XML, it can be e-mailed, and
# its ref answers "already authorized" to a second emission.
ISSUED = frozenset({AUTHORIZED, CANCELLED})

# Nothing follows: no transition leaves it and its ref is never reused.
FINAL = frozenset(
    s for s in STATUSES if s not in REUSABLE and all(s not in f for f in TRANSITIONS.values())
)

# Outcomes that may replace an authorization applied from a callback the provider was not asked
# about, once the provider confirms them (issue 19).
CORRECTABLE = frozenset({AUTHORIZED, ERROR})


def _known(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"unknown document status {status!r}")
    return status


def sources(status: str, *, correcting: bool = False) -> frozenset[str]:
    """The statuses a note may move into `status` from (empty: none, a claim's business).
    `correcting`: the note's authorization came from an unconfirmed callback, and the provider
    confirmed `status` instead."""
    allowed = TRANSITIONS.get(_known(status), frozenset())
    if correcting and status in CORRECTABLE:
        allowed = allowed | {AUTHORIZED}
    return allowed


def can_follow(current: str, status: str, *, correcting: bool = False) -> bool:
    """Whether a note in `current` may move to `status`."""
    return _known(current) in sources(status, correcting=correcting)


def ref_reusable(status: str) -> bool:
    """Whether a new emission may take the ref of a note in `status`."""
    return _known(status) in REUSABLE


def is_issued(status: str) -> bool:
    return _known(status) in ISSUED


def is_final(status: str) -> bool:
    return _known(status) in FINAL


def can_email(status: str) -> bool:
    """Whether a copy of the note may be e-mailed on request (Focus: only an authorized note,
    or a cancelled one, whose e-mail says so)."""
    return is_issued(status)


class Cancel(enum.Enum):
    """What a cancel command may do with a note in a given status. The refusals' values are the
    answer codes the cancellation consumer replies and the ingress renders (Focus's own)."""

    GO = "go"  # authorized: ask the provider
    WAIT = "wait"  # still being authorized: the command acts on the emission's outcome
    NOT_AUTHORIZED = "nfe_nao_autorizada"
    ALREADY_CANCELLED = "nfe_cancelada"


_CANCEL = {
    PROCESSING: Cancel.WAIT,
    AUTHORIZED: Cancel.GO,
    ERROR: Cancel.NOT_AUTHORIZED,
    CANCELLED: Cancel.ALREADY_CANCELLED,
}


def can_cancel(status: str) -> Cancel:
    return _CANCEL[_known(status)]


# The other answers of a cancel command (besides Cancel's refusals).
CANCEL_DONE = CANCELLED  # this command cancelled the note (a redelivery gets it again)
CANCEL_FAILED = "erro_cancelamento"  # the provider refused; also the history entry's status
CANCEL_NOT_FOUND = "nao_encontrado"


# -- the provider ref ---------------------------------------------------------------------------
# Unique across tenants and attempts (a client's ref repeats across tenants, and a re-emission
# after an error is a new note at the provider), letters and digits only.


def focus_ref(document_id: int, attempt: int) -> str:
    """The ref a note goes by at Focus NFe."""
    return f"N{document_id}A{attempt}"


def focus_ref_parts(provider_ref: str) -> tuple[int, int] | None:
    """The (document id, attempt) a ref of ours names, or None for one we never made."""
    match = _FOCUS_REF.fullmatch(provider_ref)
    return (int(match[1]), int(match[2])) if match else None


_FOCUS_REF = re.compile(r"N([1-9][0-9]{0,17})A([1-9][0-9]{0,8})")


def emites_ref(document_id: int, attempt: int) -> str:
    """What an NFC-e's submission is recorded under (Emites-Client has no ref of ours)."""
    return f"E{document_id}A{attempt}"


# -- blob keys ----------------------------------------------------------------------------------
# NFC-e files by document id, since refs repeat across tenants (the API serves them at
# /v2/nfce/REF/danfe.pdf and /xml, behind the tenant's auth).

NFCE_DANFE = "danfe.pdf"
NFCE_XML = "nfce.xml"


def nfce_blob(document_id: int, name: str) -> str:
    """Where an NFC-e's DANFE (NFCE_DANFE) or XML (NFCE_XML) is stored."""
    if name not in (NFCE_DANFE, NFCE_XML):
        raise ValueError(f"no NFC-e file {name!r}")
    return f"nfce/{document_id}/{name}"


# The NFS-e XMLs are served without credentials (as at Focus), so such a route has only the name
# as its secret: the name is generated here, never taken from a provider (whose names may be
# derived from public data: CNPJ, number) and never from a callback (which could name another
# tenant's file): 128 random bits, one name per stored copy, the copy kept with its tenant's id.
# Names handed out before this remain valid (their rows are kept).

XML_PREFIXES = {"nfse": "/notas_fiscais_servico/", "nfsen": "/notas_fiscais_servico_nacional/"}
# The kinds Focus NFe emits (`focus_kinds.BY_KIND`, which a test holds equal): each attempt goes
# to Focus as `focus_ref`, and its XML is served under one of the names above.
FOCUS_KINDS = frozenset(XML_PREFIXES)


def xml_path(kind: str) -> str:
    """A fresh name for one stored copy of an NFS-e's (or its cancellation's) XML."""
    return f"{XML_PREFIXES[kind]}{secrets.token_hex(16)}.xml"
