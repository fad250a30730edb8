"""Fixtures: throwaway projects on the embedded default, and real PostgreSQL databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import featurelake
from tests.helpers import make_project

pytest_plugins = ["tests.spark_support"]  # the session-wide `spark` fixture (local[2])

PG_ADMIN_URL = os.environ.get(
    "FEATURELAKE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# A test that reaches an external program through one of these fixtures must carry that program's marker, so
# that `-m "not <marker>"` really leaves it out (tests/test_audit_html.py, test_monitoring_*.py mark the tests that
# run chromium, promtool, prometheus and prometheus-pushgateway by hand).
_FIXTURE_MARKERS = {
    "pg_url": "postgres",
    "spark": "spark",
    "redis_session": "redis",
    "redis_url": "redis",
    "own_redis": "redis",
    "redis_server": "redis",
    "nats_server": "nats",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = sorted(
        f"{item.nodeid} (uses {fixture}): add @pytest.mark.{marker}"
        for item in items
        for fixture, marker in _FIXTURE_MARKERS.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    )
    if missing:
        raise pytest.UsageError(
            "tests that need an external program lack its marker:\n  " + "\n  ".join(missing)
        )


@pytest.fixture(autouse=True)
def _stable_lineage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
    for key in list(os.environ):
        if key.startswith("FEATURELAKE_") and key not in (
            "FEATURELAKE_PIPELINE_USER",
            "FEATURELAKE_TEST_PG_URL",
        ):
            monkeypatch.delenv(key)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project with 10 days of transactions (2024-01-01 .. 2024-01-10), not yet applied."""
    return make_project(tmp_path / "proj")


@pytest.fixture
def fl(project_dir: Path) -> Iterator[featurelake.Featurelake]:
    """The project in ``project_dir``, opened and applied."""
    with featurelake.open(project_dir) as handle:
        handle.apply()
        yield handle


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the real server (dropped afterwards)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"fl_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, must be loud
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is not usable ({exc}): `make test` installs and starts one "
            "(scripts/setup-system.sh), or set FEATURELAKE_TEST_PG_URL; to leave these tests out: "
            "pytest -m 'not postgres'"
        )
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
