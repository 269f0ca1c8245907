"""Focus NFe dialect, NFS-e Nacional (`/v2/nfsen`): the same lifecycle, routes and answers as
`/v2/nfse` (`ingress.focus_nfse`'s create route, `ingress.focus_notes`' note routes) for the
flat national document, kind `nfsen`, its own command types on the NFS-e command topic."""

from __future__ import annotations

from notaflow.focus_kinds import NFSEN
from notaflow.ingress.focus_nfse import create_route
from notaflow.ingress.focus_notes import note_paths, note_routes
from notaflow.ingress.openapi_parts import Description, embedded_schema

create_nfsen = create_route(NFSEN)
routes = note_routes(NFSEN, create_nfsen)

OPENAPI = Description(
    paths=note_paths(
        NFSEN,
        tag="Focus NFS-e Nacional",
        noun="NFS-e Nacional",
        schema="Nfsen",
        refire_id="refireNfsenHooks",
        xml_summary="XML da NFS-e Nacional autorizada ou do seu cancelamento",
    ),
    schemas={"Nfsen": embedded_schema("nfsen", "Nfsen")},
)
