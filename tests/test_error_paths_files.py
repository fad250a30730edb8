"""Project files under ``.featurelake/`` that are damaged (not SQLite any more): the online store, the model
registry, the catalog and the metrics state each say which file, that featurelake leaves it as it is, and the
way out; the way out works."""

from __future__ import annotations

from pathlib import Path

import pytest

import featurelake
from featurelake.errors import ConfigError, OnlineStoreUnavailableError
from tests.helpers import day, make_project

GARBAGE = b"not an sqlite file at all\n" * 200


def damage(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(GARBAGE)


def test_a_damaged_online_store_file_is_named_and_a_sync_rebuilds_it_once_moved_aside(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(5))
        fl.sync()
        expected = [r.values for r in fl.online.get("user_features", [1, 2, 3])]
    store = root / ".featurelake" / "online.db"
    damage(store)
    with featurelake.open(root) as fl:
        for attempt in (lambda: fl.online.get("user_features", [1]), fl.sync):
            with pytest.raises(OnlineStoreUnavailableError) as ei:
                attempt()
            msg = str(ei.value)
            assert f"online store {store} (sqlite) is unavailable: file is not a database" in msg, msg
            assert "move it aside (featurelake leaves it as it is) and run `featurelake sync`" in msg, msg
    assert store.read_bytes() == GARBAGE
    store.rename(store.with_suffix(".damaged"))
    with featurelake.open(root) as fl:
        fl.sync()
        assert [r.values for r in fl.online.get("user_features", [1, 2, 3])] == expected


def test_a_damaged_registry_file_is_named_and_left_as_it_is(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    registry = root / ".featurelake" / "registry.db"
    with featurelake.open(root) as fl:
        fl.apply()
        assert fl.models.list_models() == []  # the registry exists
    assert registry.exists()
    damage(registry)
    with featurelake.open(root) as fl, pytest.raises(ConfigError) as ei:
        fl.models.list_models()
    msg = str(ei.value)
    assert f"model registry sqlite:///{registry} cannot be read (file is not a database)" in msg, msg
    assert "restore it from a backup, or point registry.uri (FEATURELAKE_REGISTRY__URI)" in msg, msg
    assert registry.read_bytes() == GARBAGE


def test_a_damaged_catalog_file_is_named_at_once_and_left_as_it_is(tmp_path: Path) -> None:
    """Not retried as if the database were down: no retry mends a damaged file."""
    root = make_project(tmp_path / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
    catalog = root / ".featurelake" / "catalog.db"
    saved = catalog.read_bytes()
    damage(catalog)
    with featurelake.open(root) as fl:
        for attempt in (
            lambda: fl.history("user_features"),
            lambda: fl.backfill("user_features", day(3), day(4)),
        ):
            with pytest.raises(ConfigError) as ei:
                attempt()
            msg = str(ei.value)
            assert f"catalog sqlite:///{catalog} cannot be read while trying to" in msg, msg
            assert "(file is not a database)" in msg and "gave up after" not in msg, msg
            assert "restore it from a backup, or point catalog.uri (FEATURELAKE_CATALOG__URI)" in msg, msg
    assert catalog.read_bytes() == GARBAGE
    catalog.write_bytes(saved)  # restored: the project is whole again
    with featurelake.open(root) as fl:
        assert fl.read("user_features").num_rows > 0


def test_a_damaged_metrics_state_is_named_and_jobs_go_on(tmp_path: Path) -> None:
    from featurelake.monitoring.state import MetricsState

    root = make_project(tmp_path / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
    state = root / ".featurelake" / "metrics.db"
    damage(state)
    with pytest.raises(ConfigError) as ei:
        MetricsState(state).latest()
    msg = str(ei.value)
    assert f"metrics state {state} (monitoring.state) cannot be read (file is not a database)" in msg, msg
    assert "move it aside and a new one starts empty" in msg, msg
    with featurelake.open(root) as fl:  # monitoring never stops a job: the backfill publishes
        assert fl.backfill("user_features", day(3), day(4)).rows > 0
    assert state.read_bytes() == GARBAGE
