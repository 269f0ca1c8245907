"""The consumer runtime: the runner and the parts it drives (window, attempts, offsets, retries,
dead letters). Consumers declare their handlers with `notaflow.routing.Routes`."""

from notaflow.consumers.runtime.attempts import Stats
from notaflow.consumers.runtime.retries import RetryPolicy
from notaflow.consumers.runtime.runner import Runner

__all__ = ["RetryPolicy", "Runner", "Stats"]
