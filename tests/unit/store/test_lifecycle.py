"""The document lifecycle (notaflow.lifecycle) as a table: every status against every operation
(transitions, corrections, cancel, e-mail, reuse of the ref), written out here rather than
derived from the module, so a change to a rule fails a row. Plus the provider refs and the blob
names, whose spelling other processes and stored rows depend on."""

from __future__ import annotations

import re

import pytest

from notaflow import lifecycle as lc
from notaflow.focus_kinds import BY_KIND
from notaflow.lifecycle import AUTHORIZED, CANCELLED, ERROR, PROCESSING, Cancel

P, A, E, C = PROCESSING, AUTHORIZED, ERROR, CANCELLED

# The spelling is the API's (Focus's statuses): clients, stored rows and lifecycle event ids
# carry these words.
SPELLING = {
    P: "processando_autorizacao",
    A: "autorizado",
    E: "erro_autorizacao",
    C: "cancelado",
}

# status: (reusable ref, issued = may be e-mailed, final, cancel)
TABLE = {
    P: (False, False, False, Cancel.WAIT),
    A: (False, True, False, Cancel.GO),
    E: (True, False, False, Cancel.NOT_AUTHORIZED),
    C: (False, True, True, Cancel.ALREADY_CANCELLED),
}

# (from, to) a transition may make; with `correcting`, also an unconfirmed authorization
# replaced by the outcome the provider confirmed (issue 19).
MOVES = {(P, A), (P, E), (A, C)}
CORRECTIONS = {(A, A), (A, E)}


def test_the_statuses_keep_their_spelling() -> None:
    assert {s: s for s in lc.STATUSES} == SPELLING
    assert set(lc.STATUSES) == set(TABLE)


@pytest.mark.parametrize("status", list(TABLE))
def test_each_status_against_the_preconditions(status: str) -> None:
    reusable, issued, final, cancel = TABLE[status]
    assert lc.ref_reusable(status) is reusable
    assert lc.is_issued(status) is issued
    assert lc.can_email(status) is issued
    assert lc.is_final(status) is final
    assert lc.can_cancel(status) is cancel


@pytest.mark.parametrize("current", list(TABLE))
@pytest.mark.parametrize("target", list(TABLE))
def test_each_pair_of_statuses_against_the_transitions(current: str, target: str) -> None:
    assert lc.can_follow(current, target) is ((current, target) in MOVES)
    corrected = (current, target) in MOVES | CORRECTIONS
    assert lc.can_follow(current, target, correcting=True) is corrected


def test_sources_are_what_the_store_guards_its_updates_with() -> None:
    assert lc.sources(A) == {P}
    assert lc.sources(E) == {P}
    assert lc.sources(C) == {A}
    assert lc.sources(P) == frozenset()  # only a claim puts a note in processing
    assert lc.sources(A, correcting=True) == {P, A}
    assert lc.sources(E, correcting=True) == {P, A}
    assert lc.sources(C, correcting=True) == {A}


def test_the_named_sets_agree_with_the_table() -> None:
    assert {A, E, C} == lc.OUTCOMES
    assert {s for s, row in TABLE.items() if row[0]} == lc.REUSABLE
    assert {s for s, row in TABLE.items() if row[1]} == lc.ISSUED
    assert {s for s, row in TABLE.items() if row[2]} == lc.FINAL


def test_refusals_carry_focus_answer_codes() -> None:
    assert Cancel.NOT_AUTHORIZED.value == "nfe_nao_autorizada"
    assert Cancel.ALREADY_CANCELLED.value == "nfe_cancelada"
    assert (lc.CANCEL_DONE, lc.CANCEL_FAILED, lc.CANCEL_NOT_FOUND) == (
        "cancelado",
        "erro_cancelamento",
        "nao_encontrado",
    )


@pytest.mark.parametrize(
    "check",
    [
        lc.ref_reusable,
        lc.is_issued,
        lc.is_final,
        lc.can_email,
        lc.can_cancel,
        lc.sources,
        lambda s: lc.can_follow(s, A),
        lambda s: lc.can_follow(P, s),
    ],
)
@pytest.mark.parametrize("status", ["", "AUTORIZADO", "erro_cancelamento", "processando"])
def test_an_unknown_status_is_refused_not_guessed(check: object, status: str) -> None:
    with pytest.raises(ValueError, match="unknown document status"):
        check(status)  # type: ignore[operator]


def test_provider_refs_are_unique_per_document_and_attempt() -> None:
    assert lc.focus_ref(42, 1) == "N42A1"
    assert lc.emites_ref(42, 2) == "E42A2"
    refs = {lc.focus_ref(d, a) for d in range(1, 30) for a in range(1, 30)}
    assert len(refs) == 29 * 29  # no (document, attempt) pair shares a ref
    assert all(r.isalnum() for r in refs)
    assert all(
        lc.focus_ref_parts(lc.focus_ref(d, a)) == (d, a) for d in (1, 7, 10**12) for a in (1, 9)
    )
    for foreign in ("", "N0A1", "N1A0", "N01A1", "n1a1", "N1A1x", "N1", "A1", "E1A1", "N1A1\n"):
        assert lc.focus_ref_parts(foreign) is None, foreign


def test_nfce_files_are_kept_by_document_id() -> None:
    assert lc.nfce_blob(7, lc.NFCE_DANFE) == "nfce/7/danfe.pdf"
    assert lc.nfce_blob(7, lc.NFCE_XML) == "nfce/7/nfce.xml"
    with pytest.raises(ValueError):
        lc.nfce_blob(7, "../8/danfe.pdf")


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [("nfse", "/notas_fiscais_servico/"), ("nfsen", "/notas_fiscais_servico_nacional/")],
)
def test_public_xml_names_are_fresh_and_unguessable(kind: str, prefix: str) -> None:
    names = {lc.xml_path(kind) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(re.escape(prefix) + r"[0-9a-f]{32}\.xml", name)
    assert lc.XML_PREFIXES[kind] == prefix
    with pytest.raises(KeyError):
        lc.xml_path("nfce")  # NFC-e files are served behind the tenant's auth, by id


def test_the_focus_kinds_are_the_ones_focus_emits() -> None:
    """The store finds a callback's note among these kinds: the same as the Focus dialect's."""
    assert set(BY_KIND) == lc.FOCUS_KINDS
