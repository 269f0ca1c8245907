from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from notaflow.launch.broker import EmbeddedBroker
from notaflow.settings import Settings
from testkit.broker import start_broker
from testkit.markers import implied_markers
from testkit.postgres import ThrowawayPostgres, pg_binaries

_counter = itertools.count()
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The markers that follow from a test's kind and fixtures (testkit.markers). A test slow
    for another reason carries `@pytest.mark.slow` itself."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        fixturenames = getattr(item, "fixturenames", ())
        for name in sorted(implied_markers(item.path, TESTS, fixturenames, params)):
            item.add_marker(name)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the session; tests isolate themselves by topic prefix."""
    b = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    if pg_binaries() is None:
        pytest.skip("PostgreSQL server binaries not installed (bin/test installs them as root)")
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'notaflow.db'}"
    pg: ThrowawayPostgres = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_counter)}_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics (prefix) and its own SQLite file."""
    return Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        kafka_publish_timeout=3.0,
        database_url=f"sqlite:///{tmp_path / 'notaflow.db'}",
        consumer_retry_base=0.05,
        consumer_retry_max=0.5,
        consumer_max_attempts=4,
        # Longer than httpx's keep-alive expiry (5 s), so a test's client drops an idle
        # connection before the ingress closes it: with both at 5 s, a request sent on a
        # connection idle for just under 5 s can meet the server's close (httpx.ReadError).
        ingress_keep_alive_timeout=15.0,
    )
