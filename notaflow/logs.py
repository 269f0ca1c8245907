"""Structured logs: one JSON object per line, with the request's context and no secrets.

    with log_context(tenant="acme", ref="pedido123", trace_id=trace_id_of(traceparent)):
        log.info("emitting")   # {"time": …, "level": "INFO", …, "tenant": "acme", "ref": …}

The context lives in a `contextvars.ContextVar`, so each asyncio task (one per request, one per
record) sees its own fields and nested `log_context` blocks add to and then restore them.

Redaction happens in a filter on the handler, before any formatter sees the record: fields
named like credentials (authorization, token, password, secret, …) are masked wherever they
appear (extra fields, nested dicts, context), credentials inside the text (`Bearer …`,
`password=…`) are masked, and messages over 2 KB are cut: a log line never carries a whole
fiscal document.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "RedactionFilter",
    "configure_json_logging",
    "current_context",
    "deferred_log_context",
    "log_context",
    "redact",
    "redact_every_handler",
    "trace_id_of",
]

CONTEXT_FIELDS = ("tenant", "ref", "event_id", "trace_id")
MAX_MESSAGE_BYTES = 2048
MAX_EXCEPTION_BYTES = 16384
MASK = "***"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "notaflow_log_context", default=_EMPTY
)

# Key names that hold credentials. Matched as substrings of the lower-cased key, so
# `focus_token`, `smtp_password`, `signing_secret`, `X-Api-Key` are all caught.
_SECRET_KEYS = (
    "authorization",
    "token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "cookie",
    "credential",
)
# Credentials written into text: auth schemes, `key=value` / `key: value` / `"key": "value"`,
# and the password of a URL.
_SECRET_TEXT = (
    re.compile(r"(?i)\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"""(?ix)
        (["']?(?:authorization|token|password|passwd|secret|api[_-]?key|cookie)["']?
        \s*[:=]\s*)
        (?:"[^"]*"|'[^']*'|[^\s,;&}]+)
        """
    ),
    # Passwords in URLs: postgresql://user:pw@host/db
    re.compile(r"(://[^:/\s@]+:)[^@\s/]+@"),
    # Values a database error quotes: SQLAlchemy's `[parameters: ...]` (hidden at the engine,
    # masked here too for any other path) and PostgreSQL's `Key (col)=(value)` details.
    re.compile(
        r"(\[parameters: )[^\]]*(\])|(\bKey \([^)]*\)=\()[^\n]*?(\)( already| is not|$))", re.M
    ),
)

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (tenant, ref, event_id, trace_id, …) to every log line inside the block.
    A field given as None is removed for the block."""
    merged = {**_context.get(), **fields}
    token = _context.set({k: v for k, v in merged.items() if v is not None})
    try:
        yield
    finally:
        _context.reset(token)


class _Deferred(Mapping[str, Any]):
    """The fields of a `deferred_log_context` block, made when a log line first reads them."""

    __slots__ = ("_fields", "_make", "_outer")

    def __init__(self, outer: Mapping[str, Any], make: Callable[[], Mapping[str, Any]]) -> None:
        self._outer: Mapping[str, Any] | None = outer
        self._make: Callable[[], Mapping[str, Any]] | None = make
        self._fields: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._fields is None:
            assert self._outer is not None and self._make is not None
            merged = {**self._outer, **self._make()}
            self._fields = {k: v for k, v in merged.items() if v is not None}
            self._outer = self._make = None  # what they hold (a record) may go
        return self._fields

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class deferred_log_context:
    """`log_context(**make())`, `make` called only when a line inside the block is logged: a
    consumer's record sets the context of every line about it, and most records log none
    (its header decoding was 6 us a record, a deferral costs under 1)."""

    __slots__ = ("_make", "_token")

    def __init__(self, make: Callable[[], Mapping[str, Any]]) -> None:
        self._make = make

    def __enter__(self) -> None:
        self._token = _context.set(_Deferred(_context.get(), self._make))

    def __exit__(self, *exc: object) -> None:
        _context.reset(self._token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), or None."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    trace_id = parts[1].lower()
    if trace_id == "0" * 32 or any(c not in "0123456789abcdef" for c in trace_id):
        return None
    return trace_id


def is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(word in low for word in _SECRET_KEYS)


def redact_text(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """Mask credentials written into `text` and cut it to `limit` bytes of UTF-8."""
    text = _SECRET_TEXT[0].sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _SECRET_TEXT[1].sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _SECRET_TEXT[2].sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _SECRET_TEXT[3].sub(_mask_database_values, text)
    return _truncate(text, limit)


def _mask_database_values(m: re.Match[str]) -> str:
    if m.group(1):
        return f"{m.group(1)}{MASK}{m.group(2)}"
    return f"{m.group(3)}{MASK}{m.group(4)}"


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with credential-named keys masked and long strings cut, recursively."""
    if depth > 6:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): MASK if is_secret_key(str(k)) else redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_text(repr(value))


def _truncate(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}… [truncated, {len(data)} bytes]"


class RedactionFilter(logging.Filter):
    """Rewrites the record in place: the message is rendered, masked and cut; `extra=` fields
    are masked; exception text is rendered here (masked, capped) so no formatter can leak it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        for key in list(record.__dict__):
            if key in _RECORD_ATTRS:
                continue
            value = record.__dict__[key]
            record.__dict__[key] = MASK if is_secret_key(key) else redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, MAX_EXCEPTION_BYTES)
        record.exc_info = None  # rendered into exc_text, which is what formatters print
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, the context fields,
    `extra=` fields, and `exception` as a string."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        for key, value in _context.get().items():
            out[key] = MASK if is_secret_key(key) else redact(value)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_json_logging(level: str, service: str, stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one JSON-lines handler (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at INFO; warnings are what an operator acts on.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def redact_every_handler() -> None:
    """Put the redaction filter on every handler configured so far (the root's, and those
    uvicorn or a library installed on their own loggers), whatever their format: a record
    that propagates to a handler is filtered by that handler, not by its own logger."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactionFilter) for f in handler.filters):
                handler.addFilter(RedactionFilter())
