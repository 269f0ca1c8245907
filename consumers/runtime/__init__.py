"""The consumer runtime: the runner and the parts it drives (window, offsets, retries, dead
letters). Consumers declare their handlers with `notaflow.routing.Routes`."""

from notaflow.consumers.runtime.retries import RetryPolicy
from notaflow.consumers.runtime.runner import Runner, Stats

__all__ = ["RetryPolicy", "Runner", "Stats"]
