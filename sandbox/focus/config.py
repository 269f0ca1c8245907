"""How one Focus sandbox behaves: tokens, delays, callback policy, limits, its clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FocusSandboxConfig:
    """`tokens` empty accepts any non-empty token. `clock` gives epoch seconds; the sandbox
    clock is `clock()` plus what `/_sandbox/clock` advanced. `public_url` is the base of the
    `url`/`url_danfse` links (default: the URL the POST came to). `allow_hook_to` restricts hook
    URLs to these prefixes (empty: any http(s) URL)."""

    tokens: set[str] = field(default_factory=set)
    processing_delay: float = 0.2
    callback_timeout: float = 5.0
    callback_retry_delays: list[float] = field(default_factory=lambda: [0.5, 2.0, 5.0])
    callback_refused_pause: float = 1.0
    # Callbacks in flight at once; the rest wait their turn in O(1). They go out on the
    # consumers' lean keep-alive transport, not httpx's pool: httpcore walks every connection
    # and queued request for each request it assigns, and under `notaflow dev`'s load the
    # backlog of callbacks queued there took the sandbox's CPU (3.9 ms per note) until it
    # answered later than the consumers' timeout.
    callback_concurrency: int = 32
    rate_limit_per_minute: int = 100_000
    cancel_window: float = 24 * 3600.0
    clock: Callable[[], float] = time.time
    public_url: str | None = None
    allow_hook_to: tuple[str, ...] = ()
