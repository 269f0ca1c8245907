"""The markers the suite applies by rule (testkit.markers via tests/conftest.py): what makes
`-m "not slow"` a fast loop and `-m "not postgres"` a run without PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.markers import implied_markers

TESTS = Path("/repo/tests")


def test_every_e2e_and_fault_test_is_slow_and_nothing_else_is_by_path() -> None:
    fault = TESTS / "faults" / "runtime" / "test_crash.py"
    assert implied_markers(fault, TESTS, ["broker"], {}) == {"slow"}
    e2e = TESTS / "e2e" / "launch" / "test_dev.py"
    assert implied_markers(e2e, TESTS, [], {}) == {"slow"}
    for kind in ("unit", "integration"):
        assert implied_markers(TESTS / kind / "nfse" / "test_x.py", TESTS, [], {}) == set()
    # A folder named like a kind deeper down is not that kind.
    assert implied_markers(TESTS / "unit" / "faults" / "test_x.py", TESTS, [], {}) == set()


@pytest.mark.parametrize(
    ("fixturenames", "params", "expected"),
    [
        (["database_url", "tmp_path"], {"database_url": "postgres"}, {"postgres"}),
        (["database_url", "tmp_path"], {"database_url": "sqlite"}, set()),
        (["postgres"], {}, {"postgres"}),
        (["world"], {"world": "postgres"}, {"postgres"}),  # a module fixture of its own
        (["settings"], {"url": "postgresql://u@h/db"}, set()),  # a PostgreSQL URL is no server
        (["settings"], {"n": 3}, set()),
    ],
)
def test_postgres_follows_the_fixture_or_the_parameter(
    fixturenames: list[str], params: dict[str, object], expected: set[str]
) -> None:
    path = TESTS / "integration" / "store" / "test_store.py"
    assert implied_markers(path, TESTS, fixturenames, params) == expected


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_conftest_applies_them_at_collection(database: str, request: pytest.FixtureRequest) -> None:
    """This test's own "postgres" case is marked (it starts no cluster: the marker follows the
    parameter's value, which is what `database_url` gives)."""
    marked = request.node.get_closest_marker("postgres") is not None
    assert marked == (database == "postgres")
