"""The embedded Tansu broker, started on a free loopback port (the tests' session broker and
each benchmark's own)."""

from __future__ import annotations

from pathlib import Path

from notaflow.launch.broker import EmbeddedBroker, free_port


def start_broker(log_file: Path) -> EmbeddedBroker:
    """A started broker writing its log to `log_file`; the caller stops it."""
    broker = EmbeddedBroker(free_port(), log_file=log_file)
    broker.start()
    return broker
