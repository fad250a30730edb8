"""Online store isolation, on both stores: namespaces and projects sharing one SQLite file or one Redis keep
their own keys, watermarks and tags; a recreated table is told apart from another namespace's table; a store
written by the layout before scopes is never served and is migrated by the first sync."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pyiceberg.expressions import AlwaysTrue

import featurelake
from featurelake.cli.main import cli
from featurelake.monitoring.collect import online_gauges
from featurelake.monitoring.recorder import Recorder
from featurelake.serving.base import OnlineStore, Records, Watermark
from featurelake.serving.redis import RedisStore
from featurelake.serving.scope import StoreScope, hide_password
from featurelake.serving.server import create_app
from featurelake.serving.sqlite import SqliteStore
from featurelake.serving.sync import legacy_tag_name, tag_name
from tests.online_helpers import VIEW, append, online_state, overwrite, project, table
from tests.redis_server import own_redis_fixture, redis_session_fixture, redis_url_fixture

# Imported for pytest, which finds them by their fixture names.
_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(hours: int) -> datetime:
    """Recent event times: within the view's 7-day ttl, so the HTTP server serves them as PRESENT."""
    return NOW - timedelta(hours=hours)


def values(fl: featurelake.Featurelake, keys: list[int]) -> dict[int, float]:
    """amount_avg_1d of every key the store holds for ``fl``'s scope (absent keys left out)."""
    return {k: r["amount_avg_1d"] for k, r in online_state(fl, keys).items()}


def stored_keys(fl: featurelake.Featurelake) -> list[str]:
    return sorted(fl.online.store.keys(VIEW))


def open_in_namespace(root: Path, namespace: str, monkeypatch: pytest.MonkeyPatch) -> featurelake.Featurelake:
    """The same project directory (same project name, catalog and online store) in another namespace, as
    ``FEATURELAKE_NAMESPACE=staging featurelake ...`` opens it."""
    with monkeypatch.context() as env:
        env.setenv("FEATURELAKE_NAMESPACE", namespace)
        fl = featurelake.open(root)
    fl.apply()
    return fl


@pytest.fixture(params=BACKENDS)
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[featurelake.Featurelake, featurelake.Featurelake]]:
    """Production (namespace ``features``) and staging (``staging``) of ONE project sharing one store."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    prod = project(tmp_path / "proj", request.param, url)
    staging = open_in_namespace(tmp_path / "proj", "staging", monkeypatch)
    try:
        yield prod, staging
    finally:
        staging.close()
        prod.close()


# --- the stores themselves -------------------------------------------------------------------------------


def _scope(namespace: str, project: str = "p") -> StoreScope:
    return StoreScope(project, "featurelake", "sqlite:////srv/catalog.db", "file:///srv/wh", namespace)


@pytest.fixture(params=BACKENDS)
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[OnlineStore, OnlineStore]]:
    """One SQLite file or one Redis database, opened for two namespaces of one project."""
    stores: list[OnlineStore]
    if request.param == "sqlite":
        stores = [SqliteStore(tmp_path / "online.db", _scope(ns)) for ns in ("prod", "staging")]
    else:
        url = request.getfixturevalue("redis_url")
        stores = [RedisStore(url, _scope(ns)) for ns in ("prod", "staging")]
    try:
        yield stores[0], stores[1]
    finally:
        for s in stores:
            s.close()


def test_stores_of_two_scopes_share_nothing(two_stores: tuple[OnlineStore, OnlineStore]) -> None:
    a, b = two_stores
    a.write("v", Records(["1", "2"], [10, 10], [1, 1], ['{"x":"a1"}', '{"x":"a2"}']))
    # Newer by the write rule, but another scope: must not replace a's record.
    assert b.write("v", Records(["1", "3"], [99, 99], [9, 9], ['{"x":"b1"}', '{"x":"b3"}'])) == 2
    assert [h and h[0] for h in a.read([("v", ["1", "2", "3"])])[0]] == [10, 10, None]
    assert [h and h[0] for h in b.read([("v", ["1", "2", "3"])])[0]] == [99, None, 99]
    assert sorted(a.keys("v")) == ["1", "2"] and sorted(b.keys("v")) == ["1", "3"]
    assert a.count("v") == 2 and b.count("v") == 2
    assert b.delete("v", ["1", "2"]) == 1  # b has no key 2; a's keys 1 and 2 stay
    assert sorted(a.keys("v")) == ["1", "2"] and sorted(b.keys("v")) == ["3"]
    mark = Watermark(
        snapshot_id=1, sequence_number=1, table_uuid="u-a", synced_at="2024-01-01T00:00:00+00:00"
    )
    a.set_watermark("v", mark)
    assert a.get_watermark("v") == mark and b.get_watermark("v") is None
    assert not a.has_legacy("v") and a.drop_legacy("v") == 0


def test_scope_identity_hides_passwords_and_follows_every_part(tmp_path: Path) -> None:
    from featurelake.config import ProjectConfig

    (tmp_path / "featurelake.yaml").write_text("project: p\n")
    base = ProjectConfig.load(tmp_path)
    scope = StoreScope.of(base)
    assert scope.catalog_uri == f"sqlite:///{tmp_path}/.featurelake/catalog.db"
    assert scope.warehouse == f"file://{tmp_path}/.featurelake/warehouse"
    assert scope.token == f"p.features.{scope.digest}" and ":" not in scope.token
    with_secret = StoreScope(
        "p", "featurelake", "postgresql+psycopg://u:***@db/cat", "s3://bucket/wh", "features"
    )
    assert hide_password("postgresql+psycopg://u:s3cret@db/cat") == with_secret.catalog_uri
    variants = [
        StoreScope("q", scope.catalog, scope.catalog_uri, scope.warehouse, scope.namespace),
        StoreScope("p", "other", scope.catalog_uri, scope.warehouse, scope.namespace),
        StoreScope("p", scope.catalog, "sqlite:////elsewhere.db", scope.warehouse, scope.namespace),
        StoreScope("p", scope.catalog, scope.catalog_uri, "s3://b/wh", scope.namespace),
        StoreScope("p", scope.catalog, scope.catalog_uri, scope.warehouse, "staging"),
    ]
    assert len({scope.digest, *(v.digest for v in variants)}) == 6


# --- two namespaces of one project -----------------------------------------------------------------------


def test_namespaces_sharing_one_store_sync_and_serve_their_own_values(
    pair: tuple[featurelake.Featurelake, featurelake.Featurelake],
) -> None:
    prod, staging = pair
    append(prod, [(1, ago(30), 10), (2, ago(30), 20)])
    append(staging, [(1, ago(20), 99), (3, ago(20), 30)])

    (p,) = prod.sync()
    (s,) = staging.sync()
    # Staging's table is not production's table recreated: it has never been synced in its own scope.
    assert (p.mode, p.reason) == ("full", "first sync") and (s.mode, s.reason) == ("full", "first sync")
    # A full sync deletes the keys main lacks: staging has no user 2, production's user 2 is not staging's.
    assert s.deleted == 0
    assert values(prod, [1, 2, 3]) == {1: 10.0, 2: 20.0}
    assert values(staging, [1, 2, 3]) == {1: 99.0, 3: 30.0}
    assert stored_keys(prod) == ["1", "2"] and stored_keys(staging) == ["1", "3"]

    # Watermarks: each bound to its own table.
    marks = [fl.online.store.get_watermark(VIEW) for fl in (prod, staging)]
    assert [m and (m.snapshot_id, m.table_uuid) for m in marks] == [
        (p.to_snapshot, str(table(prod).metadata.table_uuid)),
        (s.to_snapshot, str(table(staging).metadata.table_uuid)),
    ]

    # An explicit full resync of staging, after staging dropped user 3: deletes staging's key only.
    overwrite(staging, [(1, ago(10), 98)], AlwaysTrue())
    (again,) = staging.sync(full=True)
    assert again.deleted == 1 and stored_keys(staging) == ["1"]
    assert values(prod, [1, 2, 3]) == {1: 10.0, 2: 20.0} and stored_keys(prod) == ["1", "2"]

    # Incremental syncs stay in their lane too.
    append(prod, [(2, ago(5), 21)])
    (inc,) = prod.sync()
    assert inc.mode == "incremental" and inc.keys == 1
    (idle,) = staging.sync()
    assert idle.mode == "up-to-date"
    assert values(staging, [1, 2, 3]) == {1: 98.0}

    # Keep-alive tags: each table's at its own synced snapshot.
    assert table(prod).metadata.refs[tag_name(prod.online.store)].snapshot_id == inc.to_snapshot
    assert table(staging).metadata.refs[tag_name(staging.online.store)].snapshot_id == again.to_snapshot

    # Monitoring's key counts come from each scope.
    for fl, want in ((prod, 2), (staging, 1)):
        rec = Recorder("test")
        assert online_gauges(fl.project, rec, views=[VIEW]) == 1
        keys = [u.value for u in rec.updates if u.sample == "featurelake_online_store_keys"]
        assert keys == [want]


def test_http_server_of_one_namespace_serves_only_its_own_values(
    pair: tuple[featurelake.Featurelake, featurelake.Featurelake],
) -> None:
    prod, staging = pair
    append(prod, [(1, ago(30), 10), (2, ago(30), 20)])
    prod.sync()
    append(staging, [(1, ago(20), 99), (3, ago(20), 30)])
    staging.sync()
    body = {"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1, 2, 3]}}
    served: dict[str, Any] = {}
    for name, fl in (("prod", prod), ("staging", staging)):
        with TestClient(create_app(fl.project)) as client:
            r = client.post("/get-online-features", json=body)
        assert r.status_code == 200, r.text
        column = r.json()["results"][1]
        served[name] = (column["values"], column["statuses"])
    assert served["prod"] == ([10.0, 20.0, None], ["PRESENT", "PRESENT", "NOT_FOUND"])
    assert served["staging"] == ([99.0, None, 30.0], ["PRESENT", "NOT_FOUND", "PRESENT"])


def test_recreated_table_is_told_apart_from_another_namespace(
    pair: tuple[featurelake.Featurelake, featurelake.Featurelake],
) -> None:
    prod, staging = pair
    append(prod, [(1, ago(30), 10), (5, ago(30), 50)])
    prod.sync()
    append(staging, [(1, ago(20), 99)])
    (first,) = staging.sync()
    assert first.reason == "first sync"
    old_uuid = str(table(prod).metadata.table_uuid)

    prod.project.catalog.drop_table(prod.project.table_name(VIEW))
    prod.apply()
    append(prod, [(1, ago(10), 12)])
    new_uuid = str(table(prod).metadata.table_uuid)
    (r,) = prod.sync()
    assert r.mode == "full" and r.deleted == 1
    assert r.reason == (
        f"table features.{VIEW} was dropped and recreated since the last sync "
        f"(table UUID {old_uuid}, now {new_uuid})"
    )
    assert values(prod, [1, 5]) == {1: 12.0}
    # Staging saw none of it.
    (idle,) = staging.sync()
    assert idle.mode == "up-to-date" and values(staging, [1, 5]) == {1: 99.0}


# --- two projects ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_projects_sharing_one_store_keep_their_keys(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two checkouts of a project (same name, same namespace, each its own catalog) on one store."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    extra = f"online_store:\n  path: {tmp_path / 'shared-online.db'}\n" if backend == "sqlite" else ""
    a = project(tmp_path / "a", backend, url, extra)
    b = project(tmp_path / "b", backend, url, extra)
    try:
        assert a.online.store.location == b.online.store.location
        append(a, [(1, ago(30), 10), (2, ago(30), 20)])
        append(b, [(1, ago(20), 77), (4, ago(20), 40)])
        (ra,) = a.sync()
        (rb,) = b.sync()
        assert (ra.reason, rb.reason) == ("first sync", "first sync") and rb.deleted == 0
        assert values(a, [1, 2, 4]) == {1: 10.0, 2: 20.0}
        assert values(b, [1, 2, 4]) == {1: 77.0, 4: 40.0}
        (full,) = b.sync(full=True)
        assert full.deleted == 0 and stored_keys(a) == ["1", "2"] and stored_keys(b) == ["1", "4"]
    finally:
        a.close()
        b.close()


def test_projects_with_different_names_get_different_keep_alive_tags(tmp_path: Path) -> None:
    """Two projects syncing one table into stores of one type each keep their own watermark's snapshot."""
    store = SqliteStore(tmp_path / "online.db", _scope("features", project="online-test"))
    other = SqliteStore(tmp_path / "online.db", _scope("features", project="staging team"))
    assert tag_name(store) == "online-sync-sqlite-online-test"
    assert tag_name(other).startswith("online-sync-sqlite-staging_team-")
    assert legacy_tag_name(store) == legacy_tag_name(other) == "online-sync-sqlite"


# --- stores written by the layout before scopes -----------------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE online_values (view TEXT NOT NULL, key TEXT NOT NULL, event_ts INTEGER NOT NULL,
    seq INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (view, key)) WITHOUT ROWID;
CREATE TABLE sync_watermarks (view TEXT PRIMARY KEY, watermark TEXT NOT NULL);
"""


def _old_row(hours: int, amount: float) -> tuple[int, str]:
    ts = int(ago(hours).timestamp() * 1_000_000)
    payload = {"txn_count_1d": int(amount), "amount_sum_1d": amount, "amount_avg_1d": amount}
    return ts, json.dumps(payload)


def write_old_layout(fl: featurelake.Featurelake, backend: str, url: str | None) -> None:
    """What featurelake 0.1.0 left behind: keys 1 and 9 of the view, a watermark, a key of another view (and,
    on Redis, another project's old key), and the old per-store-type tag."""
    mark = {"snapshot_id": 1, "sequence_number": 1, "table_uuid": "old", "synced_at": "2024-01-01T00:00:00"}
    one, nine = _old_row(1, 555.0), _old_row(1, 999.0)
    if backend == "sqlite":
        with sqlite3.connect(fl.project.config.path(".featurelake/online.db")) as conn:
            conn.executescript(_OLD_SCHEMA)
            conn.executemany(
                "INSERT INTO online_values VALUES (?, ?, ?, 1, ?)",
                [(VIEW, "1", *one), (VIEW, "9", *nine), ("other_view", "1", *one)],
            )
            conn.execute("INSERT INTO sync_watermarks VALUES (?, ?)", (VIEW, json.dumps(mark)))
        conn.close()
    else:
        with redis.Redis.from_url(url or "") as client:
            client.set(f"fl:online-test:{VIEW}:1", f"{one[0]}|1|{one[1]}")
            client.set(f"fl:online-test:{VIEW}:9", f"{nine[0]}|1|{nine[1]}")
            client.set("fl:online-test:other_view:1", f"{one[0]}|1|{one[1]}")
            client.set(f"fl:online-test:#sync:{VIEW}", json.dumps(mark))
            client.set(f"fl:someone-else:{VIEW}:1", f"{one[0]}|1|{one[1]}")
    tbl = table(fl)
    tbl.manage_snapshots().create_tag(tbl.metadata.current_snapshot_id, f"online-sync-{backend}").commit()  # type: ignore[arg-type]


def old_layout_left(fl: featurelake.Featurelake, backend: str, url: str | None) -> set[str]:
    if backend == "sqlite":
        with sqlite3.connect(fl.project.config.path(".featurelake/online.db")) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            rows = set()
            if "online_values" in tables:
                rows |= {f"{v}:{k}" for v, k in conn.execute("SELECT view, key FROM online_values")}
            if "sync_watermarks" in tables:
                rows |= {f"#sync:{v}" for (v,) in conn.execute("SELECT view FROM sync_watermarks")}
        conn.close()
        return rows
    with redis.Redis.from_url(url or "") as client:
        return {
            k.decode()
            for k in client.scan_iter(match="fl:*")
            if k.decode().split(":")[1] in ("online-test", "someone-else")
        }


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_of_the_previous_layout_is_never_served_and_the_first_sync_migrates_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    fl = project(tmp_path / "proj", backend, url)
    try:
        append(fl, [(1, ago(2), 10)])
        write_old_layout(fl, backend, url)
        before = old_layout_left(fl, backend, url)

        # Never served: the old value 555 of user 1 could be another namespace's.
        rows = fl.online.get(VIEW, [1, 9])
        assert [r.status for r in rows] == ["NOT_FOUND", "NOT_FOUND"]
        notice = fl.online.layout_notice(VIEW)
        assert notice is not None and f"featurelake sync {VIEW} --full" in notice
        assert fl.online.store.location in notice and "earlier featurelake" in notice
        lookup = {"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1]}}
        with (
            caplog.at_level(logging.WARNING, logger="featurelake.server"),
            TestClient(create_app(fl.project)) as client,
        ):
            r = client.post("/get-online-features", json=lookup)
        assert r.json()["results"][1]["statuses"] == ["NOT_FOUND"]
        assert any(f"featurelake sync {VIEW} --full" in m for m in caplog.messages)
        got = CliRunner().invoke(cli, ["-C", str(fl.project.root), "get", VIEW, "1"])
        assert got.exit_code == 0, got.output
        assert "NOT_FOUND" in got.stdout and "555" not in got.stdout
        assert "warning:" in got.stderr and f"featurelake sync {VIEW} --full" in " ".join(got.stderr.split())
        assert old_layout_left(fl, backend, url) == before  # looking changed nothing

        (res,) = fl.sync()
        assert res.mode == "full" and "earlier featurelake" in (res.reason or "")
        assert any(n.startswith(f"removed 2 keys of {VIEW}") for n in res.notes), res.notes
        assert values(fl, [1, 9]) == {1: 10.0}
        # The view's old keys and watermark are gone; another view's and another project's stay.
        if backend == "sqlite":
            assert old_layout_left(fl, backend, url) == {"other_view:1"}
        else:
            assert old_layout_left(fl, backend, url) == {
                "fl:online-test:other_view:1",
                f"fl:someone-else:{VIEW}:1",
            }
        refs = table(fl).metadata.refs
        assert legacy_tag_name(fl.online.store) not in refs
        assert refs[tag_name(fl.online.store)].snapshot_id == res.to_snapshot
        with featurelake.open(fl.project.root) as fresh:
            assert fresh.online.layout_notice(VIEW) is None
            assert [r.status for r in fresh.online.get(VIEW, [1, 9])] == ["PRESENT", "NOT_FOUND"]
        (again,) = fl.sync()
        assert again.mode == "up-to-date" and again.notes == []
    finally:
        fl.close()


def test_old_sqlite_tables_are_dropped_once_every_view_migrated(tmp_path: Path) -> None:
    fl = project(tmp_path / "proj", "sqlite")
    try:
        append(fl, [(1, ago(2), 10)])
        write_old_layout(fl, "sqlite", None)
        with sqlite3.connect(fl.project.config.path(".featurelake/online.db")) as conn:
            conn.execute("DELETE FROM online_values WHERE view = 'other_view'")
        conn.close()
        fl.sync()
        assert old_layout_left(fl, "sqlite", None) == set()
        with sqlite3.connect(fl.project.config.path(".featurelake/online.db")) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.close()
        assert tables == {"online_rows", "online_watermarks", "online_newest", "online_scopes"}
    finally:
        fl.close()


@pytest.mark.redis
def test_redis_project_named_like_a_scope_token_never_touches_other_scopes(redis_url: str) -> None:
    """Old-layout keys of a project named ``x.y.<16 hex>`` would look like another scope's keys: left alone."""
    owner = RedisStore(redis_url, _scope("features", project="p"))
    odd = RedisStore(redis_url, _scope("features", project=owner.scope.token))
    try:
        owner.write("v", Records(["1"], [1], [1], ['{"x":1}']))
        mark = Watermark(
            snapshot_id=1, sequence_number=1, table_uuid="u", synced_at="2024-01-01T00:00:00+00:00"
        )
        owner.set_watermark("v", mark)
        assert not odd.has_legacy("v") and odd.drop_legacy("v") == 0
        assert list(owner.keys("v")) == ["1"] and owner.get_watermark("v") == mark
    finally:
        owner.close()
        odd.close()
