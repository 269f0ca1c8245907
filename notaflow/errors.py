"""The error tree of the notaflow core.

    NotaflowError
    ├── InvalidDocument      a command or document breaks a schema or a fiscal rule (permanent)
    ├── ConfigurationError   settings that cannot work
    ├── BusUnavailable       Kafka did not acknowledge in time (retriable: callers answer 503)
    └── StoreError           the database refused an operation
        └── RefInUse         a document ref is taken (Focus: nfe_autorizada / em_processamento)

Each class says whether retrying can help (`retriable`), so callers read one flag.
"""

from __future__ import annotations


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
