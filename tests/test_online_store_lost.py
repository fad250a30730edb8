"""A synced online store that comes back empty fires ``online_store_empty`` in the next ``monitor`` run.

The sync watermark lives in the store, so a store that lost its data also lost the proof that it was ever
synced; the collector then asks the catalog (the sync's keep-alive tag ``online-sync-<store>-<project>``).
Each way of losing the data is reproduced for real: a ``redis-server`` without persistence restarted on the
same port, ``FLUSHALL``, and the SQLite file deleted. In every case the alert names each synced view, the next
sync resolves it, and the store then holds every key again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import featurelake
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import label_key
from featurelake.serving.sync import tag_name
from tests.helpers import DEFAULT_FEATURES, day, make_project
from tests.redis_server import RedisServer

VIEWS = ("user_features", "user_totals")
# A second view of the same source, so "each affected view" is more than one.
FEATURES = (
    DEFAULT_FEATURES
    + """
user_totals = FeatureView(
    name="user_totals",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, date_trunc('day', ts) AS event_ts, sum(amount) AS total FROM source GROUP BY ALL",
    fields={"total": "double"},
)
"""
)


def _project(root: Path, store: str) -> featurelake.Featurelake:
    config = "project: lost\nmonitoring:\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"
    config += f"online_store:\n{store}"
    fl = featurelake.open(make_project(root, features=FEATURES, config=config))
    fl.apply()
    for view in VIEWS:
        fl.backfill(view, day(0), day(4))
    return fl


def _keys_gauge(fl: featurelake.Featurelake, view: str) -> float | None:
    values = state_of(fl.project).values_at("featurelake_online_store_keys", time.time() + 86400)
    return values.get(label_key({"view": view}))


def _synced_keys(fl: featurelake.Featurelake) -> dict[str, int]:
    results = fl.sync()
    assert [r.view for r in results] == list(VIEWS)
    counts = {view: fl.online.store.count(view) for view in VIEWS}
    assert all(n > 0 for n in counts.values()), counts
    assert counts == {r.view: r.keys for r in results}
    return counts


def _lose_and_recover(fl: featurelake.Featurelake, lose: object) -> None:
    counts = _synced_keys(fl)
    assert fl.monitor().firing == []  # synced and full: quiet
    for view in VIEWS:
        assert _keys_gauge(fl, view) == counts[view]

    lose()  # type: ignore[operator]

    result = fl.monitor()
    firing = sorted((rule.name, inst.labels["view"]) for rule, inst in result.firing)
    assert firing == [("online_store_empty", view) for view in VIEWS]
    assert {e.alert for e in result.events} == {"online_store_empty"}
    for _rule, inst in result.firing:
        view = inst.labels["view"]
        assert inst.value == 0 and f"featurelake sync {view}" in inst.summary
        assert _keys_gauge(fl, view) == 0  # not the key count of the last sync
    # The catalog still records the synced snapshot the alert relies on.
    tag = tag_name(fl.online.store)
    for view in VIEWS:
        assert tag in fl.project.load_table(view).metadata.refs

    # The next sync rebuilds everything (the lost watermark makes it a full one) and resolves the alerts.
    results = fl.sync()
    assert {r.view: r.mode for r in results} == {view: "full" for view in VIEWS}
    assert {view: fl.online.store.count(view) for view in VIEWS} == counts
    after = fl.monitor()
    assert after.firing == []
    assert sorted((e.alert, e.status, e.labels["view"]) for e in after.events) == [
        ("online_store_empty", "resolved", view) for view in VIEWS
    ]


@pytest.mark.redis
def test_redis_restarted_without_persistence_fires_online_store_empty(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()  # --save '' --appendonly no
    try:
        with _project(tmp_path / "p", f"  type: redis\n  url: {server.url}\n") as fl:
            _lose_and_recover(fl, server.restart)  # SIGKILL, then the same port, empty
    finally:
        server.kill()


@pytest.mark.redis
def test_redis_flushall_fires_online_store_empty(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        with _project(tmp_path / "p", f"  type: redis\n  url: {server.url}\n") as fl:

            def flushall() -> None:
                with server.client() as c:
                    assert c.flushall()
                    assert c.dbsize() == 0

            _lose_and_recover(fl, flushall)
    finally:
        server.kill()


def test_deleted_sqlite_file_fires_online_store_empty_without_recreating_it(tmp_path: Path) -> None:
    with _project(tmp_path / "p", "  type: sqlite\n  path: .featurelake/online.db\n") as fl:
        path = fl.project.config.path(".featurelake/online.db")

        def delete() -> None:
            fl.online.store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        _synced_keys(fl)
        delete()
        fl.monitor()
        assert not path.exists()  # monitoring measured the loss without creating an empty store
        _lose_and_recover(fl, delete)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_never_synced_store_stays_quiet(tmp_path: Path, store: str) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start() if store == "redis" else None
    try:
        cfg = f"  type: redis\n  url: {server.url}\n" if server else "  type: sqlite\n"
        with _project(tmp_path / "p", cfg) as fl:
            assert fl.monitor().firing == []
            for view in VIEWS:
                assert _keys_gauge(fl, view) is None
    finally:
        if server is not None:
            server.kill()
