"""A stand-in for the Focus NFe `/v2/nfse` API, spoken over real HTTP, with in-memory state.

The decisions of the "prefeitura" are pure functions in `sandbox.focus_rules` (the Ambiente
Nacional's in `sandbox.focus_nacional_rules`); this package is the async shell, one module per
job: `app` (the server: auth, rate limit, outages, test controls), `notes` (the note API, one
implementation for both kinds), `kinds` (what differs between municipal and national notes),
`hooks` and `callbacks` (gatilhos and their delivery), `documents` (XML, espelho, PDF), `state`
(counters, clock, background tasks), `dialect` (Focus's errors and bodies), `config`.

Focus routes (HTTP Basic, token as user name, empty password; errors `{"codigo", "mensagem"}`):

    POST   /v2/nfse?ref=REF        202 processando_autorizacao; 422 em_processamento |
                                   nfe_autorizada; 400 requisicao_invalida; 415 for an XML body;
                                   500 for the first N POSTs of a ref asked to fail
    GET    /v2/nfse/REF            the seed's body for each status (`?completa=1` adds
                                   `requisicao_nota_fiscal`, the body received); 404
    DELETE /v2/nfse/REF            {"justificativa"} 15..255 -> 200 cancelado | erro_cancelamento
                                   (E523); 400 nfe_cancelada | nfe_nao_autorizada; 404
    POST   /v2/nfse/REF/email      {"emails": [..10]} -> 200, recorded only
    POST   /v2/nfse/REF/hook       re-fires the hooks of one note, answers the hooks fired
    POST   /v2/hooks               {"cnpj"|"cpf"?, "event", "url", "authorization"?,
                                   "authorization_header"?}; at most 5 per company and event
    GET    /v2/hooks, GET /v2/hooks/ID, DELETE /v2/hooks/ID

Public pages (no auth, like Focus): `GET /notas_fiscais_servico/{name}.xml` (the NFS-e XML;
`{name}-cancelamento.xml` the cancellation XML of a cancelled note),
`GET /nfse/{cnpj}/{numero}` (HTML espelho), `GET /nfse/{cnpj}/{numero}/danfse.pdf`.

Every authenticated answer carries `Rate-Limit-Limit`, `Rate-Limit-Remaining` and
`Rate-Limit-Reset` (seconds) for a fixed one-minute window per token; over the limit: 429
`limite_excedido` with `Retry-After`.

Hook delivery: one JSON POST per status change (autorizado, erro_autorizacao, cancelado) with
the GET body, the hook's `authorization` in its `authorization_header` (default
`Authorization`); a non-2xx answer or a network error is retried after each delay of
`callback_retry_delays`, then given up. A receiver that refused a connection is not dialled
again for `callback_refused_pause` seconds: attempts due meanwhile count as failed without a
connection (a stopped ingress would otherwise cost a connect per note and retry). When the
sandbox stops, callbacks still pending are given up at once rather than retried.

Test control (no auth):

    POST /_sandbox/scenario  {"ref", "status"?: "autorizado"|"erro_autorizacao", "erros"?: [..],
                              "delay"?: s, "http500"?: N, "drop_callback"?: bool}
                             pre-arranges the outcome of every later POST of that ref
                             (wins over `[sandbox:...]` markers, see focus_rules)
    GET  /_sandbox/stats     counts per ref (emissions accepted, authorizations, rejections,
                             cancellations, 500s) and callbacks sent/failed/given_up/dropped;
                             `?totals=1`: the sums, and the background tasks pending
    POST /_sandbox/clock     {"advance": s} moves the sandbox clock (cancel window, rate limit)
    POST /_sandbox/outage    {"mode": "http500"|"timeout"|"slow"|"off", "seconds"?: s,
                             "hang"?: s} for `seconds`, every authenticated call answers 500,
                             or hangs `hang` seconds and answers 504 unprocessed (an outage),
                             or (slow) works normally but answers `hang` seconds late
    GET  /_sandbox/requests  every POST /v2/nfse: ref, arrival (monotonic), duration, status,
                             the token it came with

The NFS-e Nacional (`/v2/nfsen`, hook event `nfsen`) answers the same API from the same
implementation (`kinds.NACIONAL`), with its public pages: the XML and cancellation XML under
`/notas_fiscais_servico_nacional/`, the DANFSe at `/nfsen/CHAVE/danfse.pdf`, the consultation
page `/ConsultaPublica/?tpc=1&chave=CHAVE`.
"""

from notaflow.sandbox.focus.app import FocusSandbox, create_focus_sandbox, serve_focus_sandbox
from notaflow.sandbox.focus.config import FocusSandboxConfig

__all__ = ["FocusSandbox", "FocusSandboxConfig", "create_focus_sandbox", "serve_focus_sandbox"]
