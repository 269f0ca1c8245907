"""Which markers follow from what a test is, so `-m "not slow"` and `-m "not postgres"` select
by fact rather than by memory. Pure: tests/conftest.py applies it at collection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SLOW_KINDS = ("e2e", "faults")


def implied_markers(
    path: Path, tests_root: Path, fixturenames: Iterable[str], params: Mapping[str, Any]
) -> set[str]:
    """`slow` for every test under tests/e2e/ and tests/faults/: they start the production
    processes (a fault test also waits a fault out), 3 to 130 s a module, 1,100 of the suite's
    1,350 test-seconds when measured. `postgres` for every test that takes the session's
    `postgres` fixture or is the `"postgres"` case of a parameter (`database_url`, or a fixture
    of its own that asks for the cluster by that name)."""
    found: set[str] = set()
    if any((tests_root / kind) in path.parents for kind in SLOW_KINDS):
        found.add("slow")
    if "postgres" in fixturenames or any(
        isinstance(v, str) and v == "postgres" for v in params.values()
    ):
        found.add("postgres")
    return found
