"""The error tree of notaflow: one root, every error of the product under it.

    NotaflowError               retriable = False unless a class says otherwise
    ├── InvalidDocument         a command or document breaks a schema or a fiscal rule
    ├── ConfigurationError      settings that cannot work
    │   └── TopicsNotCoPartitioned  (consumers.assignment) topics read together, unlike
    ├── SchemaBehind            the database is behind this release: `notaflow migrate`
    ├── BusUnavailable          Kafka did not acknowledge in time (retriable: answer 503)
    ├── StoreError              the database refused an operation
    │   ├── RefInUse            a document ref is taken (nfe_autorizada / em_processamento)
    │   ├── TooManyHooks        (store.hooks) the limit of hooks per company and event
    │   └── AccountExists       (store.accounts) the company has an account there already
    ├── AccountDisabled         (accounts) the company's provider account is disabled
    ├── InvalidAccount          (accounts) an account's fields cannot work
    ├── SecretUnreadable        (account_keys) no configured key opens a sealed secret
    ├── Permanent               the work can never succeed as it is (refusal, bad record)
    │   ├── CredentialRefused   the provider refused the company's token (401/403)
    │   ├── ForeignPath         (consumers.providers.urls) a provider's file off its host
    │   └── DestinationRefused  (consumers.providers.webhooks) a URL breaks the SSRF policy
    ├── Transient               retry later (5xx, timeout, refused); `retry_after` a hint
    │   ├── RateLimited         the provider's 429, `retry_after` its Retry-After
    │   ├── LeaseLost           (consumers.delivery_leases) a delivery's lock not kept: stopped
    │   └── Unsent              never left this process: retrying cannot repeat it
    │       └── Stopping        not sent because the process stops: no attempt spent
    ├── IngressError            a refused request: status, headers, the dialect's body
    │   ├── FocusError          (ingress.dialects) {"codigo", "mensagem", "erros"?}
    │   ├── HubsoftError        (ingress.dialects) {"status": "error", "msg"}
    │   │   └── FinanceiroError (ingress.dialects) ... and "errors": [...]
    │   └── WuroError           (ingress.dialects) {"error": {"code", "message"}}
    ├── BodyError               (ingress.body) a body the ingress cannot read, rendered
    │   ├── BodyTooLarge        by the route's dialect (ingress.dialects)
    │   └── BodyNotJson
    ├── WebhookVerificationError  (consumers.providers.webhooks) a signature check failed
    ├── DestinationError        (destinations; a ValueError too) breaks the SSRF policy
    ├── Unresolved              (destinations) a host with no address now
    ├── PayloadNotEncodable     (emites_wire; a ValueError too) the wire cannot carry it
    └── FrameError              (emites_wire; a ValueError too) the peer sent a non-frame
        ├── BadSize, LeadingZeros, FrameTooLarge, BadIdentifier, MissingSeparator
        └── BadPayload
            └── PayloadNotJSON, PayloadNotObject

Each class says whether retrying can help (`retriable`), so callers read one flag. Foreign errors
(httpx, sockets, smtplib) are translated once, at each provider adapter's boundary
(`consumers.providers.*`: `map_httpx_errors`, `map_socket_errors`, `map_smtp_error`). Classes in
parentheses live beside the code that raises them; `tests/unit/runtime/test_error_tree.py` fails
when an error of the product roots elsewhere or is missing from this picture.
"""

from __future__ import annotations

from typing import Any


class NotaflowError(Exception):
    retriable: bool = False


class InvalidDocument(NotaflowError):
    """`field` is the dotted path of the offending field ("" for the whole document); `message`
    is the Portuguese sentence shown to the client (Focus `mensagem`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ConfigurationError(NotaflowError):
    pass


class BusUnavailable(NotaflowError):
    retriable = True


class StoreError(NotaflowError):
    pass


class RefInUse(StoreError):
    """`status` is the status of the document that holds the ref."""

    def __init__(self, ref: str, status: str) -> None:
        super().__init__(f"ref {ref!r} in use ({status})")
        self.ref = ref
        self.status = status


class SchemaBehind(NotaflowError):
    """The database is not at this release's schema revision: run `notaflow migrate`."""


class Permanent(NotaflowError):
    retriable = False


class CredentialRefused(Permanent):
    """Focus answered 401/403: the token is wrong, revoked or not the company's. No retry can
    fix it; the note ends in a final error naming the credential, and an operator must act.
    `status` is the provider's HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Transient(NotaflowError):
    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Transient):
    pass


class Unsent(Transient):
    """For providers without idempotency keys (Emites-Client): only a request that surely
    never reached the provider may be sent again."""


class Stopping(Unsent):
    """The call never started because the consumer is stopping: the record stays uncommitted
    for the partition's next owner, and no attempt of its retry budget is spent."""


class IngressError(NotaflowError):
    """A refusal the ingress answers: `status_code`, `headers` and the body in the dialect of
    the route (`body()`). The classes of each dialect are in `ingress.dialects`, which also
    renders every error the routes do not raise themselves."""

    status_code = 500
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        raise NotImplementedError
