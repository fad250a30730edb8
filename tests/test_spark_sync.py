"""The online sync on Spark: Spark reads the changed rows, executors write Redis, the driver commits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

import featurelake
from featurelake.config import reveal
from featurelake.errors import OnlineStoreUnavailableError
from featurelake.serving.base import Records
from featurelake.serving.redis import RedisStore
from featurelake.serving.sync import SyncProgress, SyncResult, sync_view, tag_name
from tests.helpers import START, day, make_project, transactions
from tests.online_helpers import VIEW, append, assert_matches_main, config, d, online_state, overwrite, table
from tests.redis_server import (
    RedisServer,
    fresh_db,
    own_redis_fixture,
    redis_session_fixture,
    redis_url_fixture,
)

pytestmark = [pytest.mark.spark, pytest.mark.redis]
# Imported for pytest, which finds them by their fixture names.
_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
SPARK = 'engine:\n  type: spark\n  spark:\n    master: "local[2]"\n'


def spark_project(root: Path, backend: str, url: str | None = None) -> featurelake.Featurelake:
    """An applied project on the Spark engine (applied locally first: same tables, no Spark job)."""
    make_project(root, config=config(backend, url), data=transactions(days=6))
    with featurelake.open(root) as fl:
        fl.apply()
    (root / "featurelake.yaml").write_text(config(backend, url) + SPARK)
    return featurelake.open(root)


def dump(url: str) -> dict[bytes, bytes]:
    """Every feature key and its stored value (watermarks left out: they carry the sync time)."""
    with redis.Redis.from_url(url) as client:
        return {k: client.get(k) for k in client.scan_iter(match="fl:*") if b":#sync:" not in k}


def counts(r: SyncResult) -> tuple[Any, ...]:
    return (
        r.mode,
        r.reason,
        r.from_snapshot,
        r.to_snapshot,
        r.files_read,
        r.rows,
        r.keys,
        r.changed,
        r.deleted,
    )


@pytest.fixture
def spark_fl(spark: Any, redis_url: str, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    fl = spark_project(tmp_path / "proj", "redis", redis_url)
    try:
        yield fl
    finally:
        fl.close()


def test_spark_sync_writes_exactly_what_the_local_sync_writes(
    spark_fl: featurelake.Featurelake, redis_session: RedisServer
) -> None:
    fl = spark_fl
    spark_url = reveal(fl.project.config.settings.online_store.url)
    assert spark_url is not None
    local_url = fresh_db(redis_session, 3)
    local = RedisStore(local_url, fl.online.store.scope)

    def both(full: bool = False) -> SyncResult:
        (on_spark,) = fl.sync(full=full)  # engine.type spark + redis: the Spark path
        on_driver = sync_view(fl.project, local, fl.project.view(VIEW), full=full)
        assert dump(spark_url) == dump(local_url)
        assert counts(on_spark) == counts(on_driver)
        return on_spark

    try:
        append(fl, [(1, d(1), 10), (1, d(3), 13), (2, d(2), 20), (6, d(3), 60)])
        append(fl, [(1, d(2), 12), (3, d(5), 30)])
        first = both()
        assert first.mode == "full" and first.keys == 4 and first.rows == 6
        assert fl.project.__dict__["engine"].name == "spark"

        # Day 3 re-run without users 1 and 6 but with a new user 4; late history for user 2; a new user 5.
        day3 = And(GreaterThanOrEqual("event_ts", d(3).isoformat()), LessThan("event_ts", d(4).isoformat()))  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
        overwrite(fl, [(4, d(3), 43)], day3)
        append(fl, [(2, d(1), 999), (5, d(6), 50)])
        second = both()
        assert second.mode == "incremental" and second.deleted == 1
        state = online_state(fl, range(1, 8))
        assert state[1]["amount_avg_1d"] == 12.0 and 6 not in state  # fell back / gone
        assert state[2]["amount_avg_1d"] == 20.0  # older history never wins
        assert_matches_main(fl, extra_keys=[6])

        # A tampered store is repaired by a full resync, on both paths alike.
        junk = Records(["1", "66"], [10**16, 1], [99, 1], ['{"amount_avg_1d": -1}', "{}"])
        for store in (fl.online.store, local):
            store.write(VIEW, junk, force=True)
        third = both(full=True)
        assert third.reason == "full resync requested" and third.deleted == 1
        assert_matches_main(fl, extra_keys=[66])
    finally:
        local.close()


def test_incremental_sync_after_a_second_backfill_pushes_only_the_changed_rows(
    spark_fl: featurelake.Featurelake,
) -> None:
    fl = spark_fl
    fl.backfill(VIEW, day(0), day(4), run_id="first")
    (full,) = fl.sync()
    assert full.mode == "full" and full.rows == fl.read(VIEW).num_rows
    assert_matches_main(fl)

    fl.backfill(VIEW, day(3), day(6), run_id="second")  # replaces day 3, adds days 4 and 5
    (inc,) = fl.sync()
    main = fl.read(VIEW).to_pylist()
    recent = [r for r in main if r["event_ts"] >= START + timedelta(days=3)]
    assert inc.mode == "incremental" and inc.rows == len(recent) < len(main)
    assert 0 < inc.changed <= inc.keys
    assert fl.online.store.get_watermark(VIEW).snapshot_id == inc.to_snapshot  # type: ignore[union-attr]
    assert table(fl).metadata.refs[tag_name(fl.online.store)].snapshot_id == inc.to_snapshot
    assert_matches_main(fl)

    # Re-running an old day: newer snapshot, older event times. Its rows are pushed; newest wins per key.
    fl.backfill(VIEW, day(0), day(1), run_id="old")
    (old,) = fl.sync()
    main = fl.read(VIEW).to_pylist()
    newest: dict[int, datetime] = {}
    for r in main:
        newest[r["user_id"]] = max(newest.get(r["user_id"], r["event_ts"]), r["event_ts"])
    assert old.mode == "incremental" and old.rows == sum(1 for r in main if r["event_ts"] == START) > 0
    assert old.changed == sum(1 for t in newest.values() if t == START)  # only keys whose newest is day 0
    assert_matches_main(fl)


class _KillRedisWhenWriting(SyncProgress):
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def phase(self, view: str, text: str) -> None:
        if text.startswith("writing"):
            self.server.kill()  # after planning on the driver, before the executors connect


def test_redis_down_fails_the_spark_sync_clearly_and_keeps_the_watermark(
    spark: Any, tmp_path: Path, own_redis: RedisServer
) -> None:
    fl = spark_project(tmp_path / "proj", "redis", own_redis.url)
    try:
        append(fl, [(u, d(1), u) for u in range(1, 21)])
        (first,) = fl.sync()
        target = append(fl, [(u, d(3), 300 + u) for u in range(1, 41)])
        with pytest.raises(OnlineStoreUnavailableError) as info:
            fl.sync(progress=_KillRedisWhenWriting(own_redis))
        msg = str(info.value)
        assert "unreachable" in msg and own_redis.url.split("//")[1] in msg and "Spark executor" in msg
        assert "watermark of user_features was not advanced" in msg
        own_redis.start()  # the append-only file kept the first sync
        assert fl.online.store.get_watermark(VIEW).snapshot_id == first.to_snapshot  # type: ignore[union-attr]
        assert table(fl).metadata.refs[tag_name(fl.online.store)].snapshot_id == first.to_snapshot
        (r,) = fl.sync()
        assert r.mode == "incremental" and r.to_snapshot == target and r.keys == 40
        assert_matches_main(fl)
    finally:
        fl.close()


def test_sqlite_store_on_the_spark_engine_syncs_locally(tmp_path: Path) -> None:
    fl = spark_project(tmp_path / "proj", "sqlite")
    try:
        append(fl, [(1, d(1), 10), (2, d(2), 20)])
        (r,) = fl.sync()
        assert r.mode == "full" and r.keys == 2
        assert "engine" not in fl.project.__dict__  # no Spark session was needed
        assert_matches_main(fl)
    finally:
        fl.close()
