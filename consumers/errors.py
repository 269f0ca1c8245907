"""The error tree of the consumers.

    ConsumerError
    ├── PermanentFailure        the work can never succeed as it is (bad record, provider refusal)
    └── TransientFailure        retry later (provider 5xx, timeout, connection refused, 429)
        ├── RateLimited         carries the provider's `retry_after` seconds
        └── Unsent              the request never left this process: retrying cannot repeat it
            └── Stopping        not sent because the process is shutting down: no attempt spent

Foreign errors (httpx, sockets) are mapped once, at the provider adapter boundary.
"""

from __future__ import annotations


class ConsumerError(Exception):
    retriable: bool = False


class PermanentFailure(ConsumerError):
    retriable = False


class TransientFailure(ConsumerError):
    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientFailure):
    pass


class Unsent(TransientFailure):
    """For providers without idempotency keys (Emites-Client): only a request that surely
    never reached the provider may be sent again."""


class Stopping(Unsent):
    """The call never started because the consumer is stopping: the record stays uncommitted
    for the partition's next owner, and no attempt of its retry budget is spent."""
