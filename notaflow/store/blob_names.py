"""Names of the documents notaflow serves without credentials (the NFS-e XML, as at Focus).

Such a route has only the name as its secret, so the name is generated here, never taken from a
provider (whose names may be derived from public data: CNPJ, number) and never from a callback
(which could name another tenant's file): 128 random bits, one name per stored copy, the copy
kept with its tenant's id. Names handed out before this remain valid (their rows are kept).
"""

from __future__ import annotations

import secrets

PREFIXES = {"nfse": "/notas_fiscais_servico/", "nfsen": "/notas_fiscais_servico_nacional/"}


def document_path(kind: str) -> str:
    return f"{PREFIXES[kind]}{secrets.token_hex(16)}.xml"
