"""The Iceberg -> online store sync, on both backends: incremental, overwrite-aware, crash-safe, self-healing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.table.snapshots import Operation

import featurelake
from featurelake.errors import OnlineStoreUnavailableError, UsageError
from featurelake.lakehouse import wap
from featurelake.serving.sync import SyncProgress, tag_name
from tests.online_helpers import (
    VIEW,
    append,
    assert_matches_main,
    d,
    online_state,
    overwrite,
    overwrite_files,
    project,
    table,
)
from tests.redis_server import RedisServer, own_redis_fixture, redis_session_fixture, redis_url_fixture

# Imported for pytest, which finds them by their fixture names.
_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=BACKENDS)
def fl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    handle = project(tmp_path / "proj", request.param, url)
    try:
        yield handle
    finally:
        handle.close()


def tag_of(fl: featurelake.Featurelake) -> int | None:
    ref = table(fl).metadata.refs.get(tag_name(fl.online.store))
    return ref.snapshot_id if ref else None


def test_first_sync_is_a_full_load_of_the_latest_row_per_entity(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(1), 10), (1, d(3), 13), (2, d(2), 20)])
    append(fl, [(1, d(2), 12), (3, d(5), 30)])  # an older day of user 1 arriving later
    (r,) = fl.sync()
    assert (r.mode, r.reason) == ("full", "first sync")
    assert r.rows == 5 and r.keys == 3 and r.changed == 3 and r.files_read >= 2
    assert r.to_snapshot == wap.main_snapshot_id(table(fl))
    assert online_state(fl, [1, 2, 3])[1]["amount_avg_1d"] == 13.0
    assert_matches_main(fl)
    # The synced snapshot is tagged so expiry keeps it.
    assert tag_of(fl) == r.to_snapshot


def test_incremental_sync_reads_only_new_files_and_moves_watermark_and_tag(
    fl: featurelake.Featurelake,
) -> None:
    append(fl, [(1, d(1), 10), (2, d(1), 20)])
    first = fl.sync()[0]
    s2 = append(fl, [(2, d(2), 21), (4, d(2), 40)])
    (r,) = fl.sync()
    assert r.mode == "incremental" and r.reason is None
    assert (r.from_snapshot, r.to_snapshot) == (first.to_snapshot, s2)
    assert r.rows == 2 and r.keys == 2 and r.files_read == 1
    assert fl.online.store.get_watermark(VIEW).snapshot_id == s2  # type: ignore[union-attr]
    assert tag_of(fl) == s2
    assert_matches_main(fl)
    (again,) = fl.sync()
    assert again.mode == "up-to-date" and again.rows == 0


def test_corrected_backfill_overwrites_same_event_time(fl: featurelake.Featurelake) -> None:
    """A re-run of a day with corrected values (same event_ts, newer snapshot) must replace the online value."""
    append(fl, [(1, d(4), 10), (2, d(4), 20), (2, d(3), 19)])
    fl.sync()
    overwrite(
        fl,
        [(1, d(4), 11), (2, d(4), 22)],
        And(GreaterThanOrEqual("event_ts", d(4).isoformat()), LessThan("event_ts", d(5).isoformat())),  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
    )
    (r,) = fl.sync()
    assert r.mode == "incremental" and r.changed == 2
    state = online_state(fl, [1, 2])
    assert state[1]["amount_avg_1d"] == 11.0 and state[2]["amount_avg_1d"] == 22.0
    assert_matches_main(fl)


def test_overwrite_snapshots_are_synced_which_incremental_append_scan_skips(
    fl: featurelake.Featurelake,
) -> None:
    append(fl, [(1, d(6), 10), (2, d(6), 20), (3, d(5), 30)])
    (first,) = fl.sync()
    sid = overwrite_files(fl, [(1, d(6), 15), (2, d(6), 25), (5, d(6), 50)], day=6)
    snap = table(fl).metadata.snapshot_by_id(sid)
    assert snap is not None and snap.summary is not None and snap.summary.operation == Operation.OVERWRITE
    # The trap: PyIceberg's incremental append scan does not see these rows at all.
    skipped = table(fl).incremental_append_scan(from_snapshot_id_exclusive=first.to_snapshot).to_arrow()
    assert skipped.num_rows == 0
    (r,) = fl.sync()
    assert r.mode == "incremental" and r.rows == 3
    state = online_state(fl, [1, 2, 3, 5])
    assert [state[k]["amount_avg_1d"] for k in (1, 2, 3, 5)] == [15.0, 25.0, 30.0, 50.0]
    assert_matches_main(fl)


def test_replayed_old_history_never_overwrites_fresher_values(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(8), 80), (2, d(8), 81)])
    fl.sync()
    # A late backfill of older days, committed after: newer snapshot, older event times.
    append(fl, [(1, d(2), 999), (2, d(3), 999), (7, d(2), 70)])
    (r,) = fl.sync()
    assert r.keys == 3 and r.changed == 1  # only the new user 7
    state = online_state(fl, [1, 2, 7])
    assert state[1]["amount_avg_1d"] == 80.0 and state[2]["amount_avg_1d"] == 81.0
    assert state[7]["amount_avg_1d"] == 70.0
    assert_matches_main(fl)


def test_correction_that_removes_the_newest_row_falls_back_or_deletes(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(2), 12), (1, d(3), 13), (2, d(3), 23), (3, d(2), 32)])
    fl.sync()
    # Re-run of day 3 without users 1 and 2 (they had no transactions after all), plus a new user 4.
    day3 = And(GreaterThanOrEqual("event_ts", d(3).isoformat()), LessThan("event_ts", d(4).isoformat()))  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
    overwrite(fl, [(4, d(3), 43)], day3)
    (r,) = fl.sync()
    state = online_state(fl, [1, 2, 3, 4])
    assert state[1]["amount_avg_1d"] == 12.0  # back to its previous row
    assert 2 not in state and r.deleted == 1  # nothing left on main
    assert state[4]["amount_avg_1d"] == 43.0 and state[3]["amount_avg_1d"] == 32.0
    assert_matches_main(fl, extra_keys=[2])


def test_rewound_main_triggers_a_full_resync(fl: featurelake.Featurelake) -> None:
    s1 = append(fl, [(1, d(1), 10), (2, d(1), 20)])
    append(fl, [(1, d(2), 11), (9, d(2), 90)])
    fl.sync()
    table(fl).manage_snapshots().set_current_snapshot(snapshot_id=s1).commit()
    (r,) = fl.sync()
    assert r.mode == "full" and "rewound" in (r.reason or "")
    assert r.to_snapshot == s1 and r.deleted == 1
    state = online_state(fl, [1, 2, 9])
    assert state[1]["amount_avg_1d"] == 10.0 and 9 not in state
    assert_matches_main(fl, extra_keys=[9])


def test_expired_watermark_snapshot_triggers_a_full_resync(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(1), 10)])
    (first,) = fl.sync()
    append(fl, [(1, d(2), 11), (2, d(2), 20)])
    # The tag protects the watermark from expiry...
    tbl = table(fl)
    with pytest.raises(ValueError, match="protected"):
        tbl.maintenance.expire_snapshots().by_id(first.to_snapshot).commit()  # type: ignore[arg-type]
    # ...so expire it after removing the tag (as a maintenance run of an older version might have).
    tbl.manage_snapshots().remove_tag(tag_name(fl.online.store)).commit()
    table(fl).maintenance.expire_snapshots().by_id(first.to_snapshot).commit()  # type: ignore[arg-type]
    assert table(fl).metadata.snapshot_by_id(first.to_snapshot) is None  # type: ignore[arg-type]
    (r,) = fl.sync()
    assert r.mode == "full" and "expired" in (r.reason or "") and str(first.to_snapshot) in (r.reason or "")
    assert_matches_main(fl)
    assert tag_of(fl) == r.to_snapshot


def test_recreated_table_triggers_a_full_resync(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(1), 10), (5, d(1), 50)])
    fl.sync()
    fl.project.catalog.drop_table(fl.project.table_name(VIEW))
    fl.apply()
    append(fl, [(1, d(2), 12)])
    (r,) = fl.sync()
    assert r.mode == "full" and "recreated" in (r.reason or "") and r.deleted == 1
    assert_matches_main(fl, extra_keys=[5])


def test_full_flag_resyncs_and_repairs_a_tampered_store(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(1), 10), (2, d(1), 20)])
    fl.sync()
    from featurelake.serving.base import Records

    fl.online.store.write(
        VIEW, Records(["1", "66"], [10**16, 1], [99, 1], ['{"amount_avg_1d": -1}', "{}"]), force=True
    )
    (r,) = fl.sync(full=True)
    assert r.mode == "full" and r.reason == "full resync requested" and r.deleted == 1
    assert_matches_main(fl, extra_keys=[66])


def test_sync_of_unknown_view_changes_nothing(fl: featurelake.Featurelake) -> None:
    append(fl, [(1, d(1), 10)])
    with pytest.raises(UsageError, match=r"unknown feature view 'nope'.*user_features"):
        fl.sync("nope")
    assert fl.online.store.get_watermark(VIEW) is None
    assert fl.online.store.count(VIEW) == 0


def test_empty_main_syncs_nothing(fl: featurelake.Featurelake) -> None:
    (r,) = fl.sync()
    # apply commits an empty first snapshot: a full load of nothing.
    assert r.rows == 0 and r.keys == 0
    assert fl.online.store.count(VIEW) == 0


class _Boom(SyncProgress):
    def __init__(self, action: object) -> None:
        self.action = action
        self.written = 0

    def advance(self, view: str, n: int) -> None:
        self.written += n
        if self.written >= 4:
            self.action()  # type: ignore[operator]


CRASHING_SYNC = textwrap.dedent(
    """
    import os, signal, sys
    import featurelake
    from featurelake.serving.sync import SyncProgress

    class KillSelf(SyncProgress):
        written = 0
        def advance(self, view, n):
            self.written += n
            if self.written >= 4:  # some keys are in the store, the watermark is not
                os.kill(os.getpid(), signal.SIGKILL)

    featurelake.open(sys.argv[1]).sync(progress=KillSelf())
    """
)


@pytest.mark.slow
def test_killed_sync_process_resumes_with_nothing_lost(fl: featurelake.Featurelake) -> None:
    append(fl, [(u, d(1), u) for u in range(1, 11)])
    (first,) = fl.sync()
    target = append(fl, [(u, d(2), 100 + u) for u in range(1, 31)])
    env = {**os.environ, "FEATURELAKE_ONLINE_STORE__WRITE_CHUNK": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SYNC, str(fl.project.root)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()
    # Killed mid-batch: part of the keys were written, the watermark did not move.
    assert fl.online.store.get_watermark(VIEW).snapshot_id == first.to_snapshot  # type: ignore[union-attr]
    partial = online_state(fl, range(1, 31))
    assert 4 <= sum(1 for v in partial.values() if v["amount_avg_1d"] >= 100) < 30
    (r,) = fl.sync()
    assert r.mode == "incremental" and r.to_snapshot == target and r.keys == 30
    assert_matches_main(fl)


@pytest.mark.redis
def test_redis_dying_mid_sync_loses_nothing(tmp_path: Path, own_redis: RedisServer) -> None:
    fl = project(tmp_path / "proj", "redis", own_redis.url, extra="")
    try:
        append(fl, [(u, d(1), u) for u in range(1, 21)])
        (first,) = fl.sync()
        target = append(fl, [(u, d(3), 300 + u) for u in range(1, 41)])
        fl.project.config.settings.online_store.write_chunk = 2
        with pytest.raises(OnlineStoreUnavailableError) as info:
            fl.sync(progress=_Boom(own_redis.kill))
        assert "unreachable" in str(info.value) and own_redis.url.split("//")[1] in str(info.value)
        own_redis.start()  # the append-only file kept what was written before the crash
        assert fl.online.store.get_watermark(VIEW).snapshot_id == first.to_snapshot  # type: ignore[union-attr]
        (r,) = fl.sync()
        assert r.mode == "incremental" and r.to_snapshot == target
        assert_matches_main(fl)
        # A Redis that lost everything (no persistence) is simply a first sync again.
        with own_redis.client() as c:
            c.flushall()
        (r2,) = fl.sync()
        assert (r2.mode, r2.reason) == ("full", "first sync")
        assert_matches_main(fl)
    finally:
        fl.close()


@pytest.mark.redis
def test_sync_with_redis_down_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    fl = project(tmp_path / "proj", "redis", own_redis.url)
    try:
        append(fl, [(1, d(1), 10)])
        tags_before = dict(table(fl).metadata.refs)
        own_redis.kill()
        with pytest.raises(OnlineStoreUnavailableError, match="check that Redis is running"):
            fl.sync()
        assert dict(table(fl).metadata.refs) == tags_before  # no tag moved for a sync that did not happen
    finally:
        fl.close()


def test_synced_values_keep_their_types_and_event_time(tmp_path: Path) -> None:
    fl = project(tmp_path / "proj", "sqlite")
    try:
        append(fl, [(42, d(1, 5), 1.5)])
        fl.sync()
        (row,) = fl.online.get(VIEW, [42], now=d(2))
        assert row.status == "PRESENT" and row.event_ts == d(1, 5)
        assert row.values == {"txn_count_1d": 1, "amount_sum_1d": 1.5, "amount_avg_1d": 1.5}
        assert isinstance(row.values["txn_count_1d"], int)
    finally:
        fl.close()


def test_main_moved_by_a_tag_race_is_retried(fl: featurelake.Featurelake) -> None:
    """Another writer commits between our table load and the tag move: the tag still lands."""
    append(fl, [(1, d(1), 10)])
    from featurelake.serving import sync as sync_mod

    original = sync_mod._keep_alive
    calls: list[int] = []

    def racing(project: object, view: str, snapshot_id: int, *tags: str) -> str | None:
        if not calls:
            calls.append(1)
            append(fl, [(2, d(2), 20)])  # a concurrent commit
        return original(project, view, snapshot_id, *tags)  # type: ignore[arg-type]

    sync_mod._keep_alive = racing  # type: ignore[assignment]
    try:
        (r,) = fl.sync()
    finally:
        sync_mod._keep_alive = original
    assert tag_of(fl) == r.to_snapshot and r.notes == []
    (r2,) = fl.sync()
    assert r2.mode == "incremental" and r2.keys == 1
    assert_matches_main(fl)
