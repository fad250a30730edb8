"""`featurelake consistency`: the online store against Iceberg main's latest row per key, on every backend.

Each test tampers with a real store (a SQLite file, a real redis-server) the way things go wrong in the
field (a value overwritten, a key lost, an older event written over a newer one, a key main never had) and
checks that each case is reported with its key, that the ratio reaches the metrics state and fires the
shipped ``online_inconsistent`` rule, and that a full resync repairs it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import featurelake
from featurelake import telemetry
from featurelake.errors import OnlineStoreUnavailableError, UsageError
from featurelake.features.keys import encode_key
from featurelake.jobs.consistency import METRIC, run_consistency
from featurelake.jobs.online_sync import run_sync
from featurelake.monitoring.recorder import state_of
from featurelake.serving.base import OnlineStore, Records
from featurelake.serving.consistency import ConsistencyReport
from featurelake.serving.redis import RedisStore
from featurelake.serving.scope import StoreScope
from featurelake.serving.server import create_app
from featurelake.serving.sqlite import SqliteStore
from tests import composite_helpers as composite
from tests.online_helpers import VIEW, append, project
from tests.redis_server import (
    RedisServer,
    free_port,
    own_redis_fixture,
    redis_session_fixture,
    redis_url_fixture,
)

# Imported for pytest, which finds them by their fixture names.
_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]

#: Midnight five days ago: every event from here on is inside the view's 7-day ttl.
BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
#: Older than the ttl: served as nulls whatever the store holds.
EXPIRED = BASE - timedelta(days=20)
USERS = range(1, 21)


def r(day: int) -> datetime:
    return BASE + timedelta(days=day)


def us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


@pytest.fixture(params=BACKENDS)
def fl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    handle = project(tmp_path / "proj", request.param, url)
    try:
        yield handle
    finally:
        handle.close()


def publish(fl: featurelake.Featurelake) -> None:
    """Three snapshots: 20 users, newer rows for 1-10, an older row of user 1 arriving late, an expired user."""
    append(fl, [(u, r(1), 10 + u) for u in USERS])
    append(fl, [(u, r(3), 30 + u) for u in range(1, 11)])
    append(fl, [(1, r(2), 99), (30, EXPIRED, 7)])


def recorded(fl: featurelake.Featurelake, store: str) -> float | None:
    """The ratio in the project's metrics state (what `featurelake monitor` and the Pushgateway read)."""
    for row in state_of(fl.project).latest():
        if row.metric == METRIC and dict(row.labels) == {"view": VIEW, "store": store}:
            return row.value
    return None


def keys_of(report: ConsistencyReport, verdict: str) -> list[object]:
    return [d.key for d in report.of(verdict)]


def payload(**values: float) -> str:
    return json.dumps(values)


def test_a_synced_store_is_consistent_and_a_later_publish_shows_as_stale(fl: featurelake.Featurelake) -> None:
    publish(fl)
    fl.sync()
    store = fl.online.store.type_name
    report = fl.consistency(VIEW)
    assert report.ok and report.inconsistent == 0 and report.mismatch_ratio == 0.0
    # User 1's late row of day 2 loses to its day-3 row, as in the sync; user 30 is older than the ttl.
    assert report.counts == {
        "consistent": 20,
        "mismatch": 0,
        "missing": 0,
        "stale": 0,
        "extra": 0,
        "ahead": 0,
        "expired": 1,
    }
    assert (report.iceberg_keys, report.online_keys, report.checked, report.compared) == (21, 21, 21, 20)
    assert report.diffs == [] and report.notes == []
    assert recorded(fl, store) == 0.0
    assert telemetry.REGISTRY.get_sample_value(METRIC, {"view": VIEW, "store": store}) == 0.0

    # Published, not synced yet: the check says why user 2 is stale and user 40 missing.
    append(fl, [(2, r(4), 1), (40, r(4), 2)])
    lagging = fl.consistency(VIEW)
    assert keys_of(lagging, "stale") == [2] and keys_of(lagging, "missing") == [40]
    assert any("ahead of the last sync" in n and f"featurelake sync {VIEW}" in n for n in lagging.notes)
    assert lagging.mismatch_ratio == pytest.approx(2 / 21)
    fl.sync()
    assert fl.consistency(VIEW).ok


def test_main_read_in_small_parts_gives_the_same_latest_rows(tmp_path: Path) -> None:
    """With online_store.sync_batch_rows: 1 every data file is its own part: the per-part latest rows merge
    by (event time, sequence number), so user 1's late-arriving older row still loses to its day-3 row."""
    fl = project(tmp_path / "proj", "sqlite", extra="online_store:\n  sync_batch_rows: 1\n")
    try:
        publish(fl)
        fl.sync()
        report = fl.consistency(VIEW)
        assert report.ok and report.counts["consistent"] == 20 and report.counts["expired"] == 1
        fl.online.store.write(VIEW, Records(["1"], [us(r(2))], [1 << 40], [payload(txn_count_1d=99, amount_sum_1d=99.0, amount_avg_1d=99.0)]), force=True)  # fmt: skip
        (stale,) = fl.consistency(VIEW).of("stale")
        assert (stale.key, stale.iceberg_event_ts, stale.online_event_ts) == (1, r(3), r(2))
    finally:
        fl.close()


def test_tampering_is_reported_key_by_key_fires_the_rule_and_a_full_resync_repairs_it(
    fl: featurelake.Featurelake,
) -> None:
    publish(fl)
    fl.sync()
    store: OnlineStore = fl.online.store
    backend = store.type_name
    # 3: a value overwritten (same event, another amount_sum_1d); 5: the key lost; 7: an older event written
    # over the newest; 404: a key main never had; 12: a newer event than main's (a push): not an error;
    # 30: the expired key lost, which no lookup can tell.
    store.write(VIEW, Records(["3"], [us(r(3))], [1 << 40], [payload(txn_count_1d=33, amount_sum_1d=-1.0, amount_avg_1d=33.0)]), force=True)  # fmt: skip
    store.delete(VIEW, ["5", "30"])
    store.write(VIEW, Records(["7"], [us(r(1))], [1], [payload(txn_count_1d=17, amount_sum_1d=17.0, amount_avg_1d=17.0)]), force=True)  # fmt: skip
    store.write(VIEW, Records(["404", "12"], [us(r(2)), us(r(4))], [1, 1], [payload(txn_count_1d=1, amount_sum_1d=1.0, amount_avg_1d=1.0)] * 2))  # fmt: skip

    report = fl.consistency(VIEW)
    assert not report.ok
    assert keys_of(report, "mismatch") == [3]
    assert report.of("mismatch")[0].differences == {"amount_sum_1d": (33.0, -1.0)}
    assert keys_of(report, "missing") == [5]
    (stale,) = report.of("stale")
    assert stale.key == 7 and (stale.iceberg_event_ts, stale.online_event_ts) == (r(3), r(1))
    assert keys_of(report, "extra") == [404]
    assert keys_of(report, "ahead") == [12]
    assert report.counts["expired"] == 1 and report.counts["consistent"] == 16
    assert report.mismatch_ratio == pytest.approx(4 / 21)  # 20 users + key 404 compared
    assert recorded(fl, backend) == pytest.approx(4 / 21)

    alerts = fl.monitor(notify=False)
    firing = [
        (rule.name, i.labels, i.value) for rule, i in alerts.firing if rule.name == "online_inconsistent"
    ]
    assert firing == [("online_inconsistent", {"view": VIEW, "store": backend}, pytest.approx(4 / 21))]

    fl.sync(full=True)
    repaired = fl.consistency(VIEW)
    assert repaired.ok and repaired.diffs == [] and recorded(fl, backend) == 0.0
    assert not [1 for rule, _ in fl.monitor(notify=False).firing if rule.name == "online_inconsistent"]


def _stores(tmp_path: Path, fl: featurelake.Featurelake, redis_url: str) -> list[OnlineStore]:
    scope = StoreScope.of(fl.project.config)
    return [SqliteStore(tmp_path / "online.db", scope), RedisStore(redis_url, scope)]


@pytest.mark.redis
def test_composite_keys_are_reported_by_column(tmp_path: Path, redis_url: str) -> None:
    """One project whose view is keyed by (user_id, merchant_id), merchants holding ',', '%' and '=';
    both stores, each synced and tampered with."""
    root = composite.composite_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(composite.VIEW, composite.day(0), composite.day(6), run_id="cmp")
        recent = datetime.now(UTC) - timedelta(days=2)
        pairs = sorted(k for k, row in composite.latest_rows(fl).items() if row["event_ts"] > recent)
        lost, changed = next(p for p in pairs if "," in p[1]), next(p for p in pairs if "%" in p[1])
        for store in _stores(tmp_path, fl, redis_url):
            with store:
                run_sync(fl.project, [composite.VIEW], store=store)
                hit = store.read([(composite.VIEW, [encode_key(changed)])])[0][0]
                assert hit is not None
                store.delete(composite.VIEW, [encode_key(lost)])
                store.write(
                    composite.VIEW,
                    Records(
                        [encode_key(changed)], [hit[0]], [1 << 40], [payload(um_count_1d=0, um_amount_1d=0.0)]
                    ),
                    force=True,
                )
                report = run_consistency(fl.project, composite.VIEW, store=store, sample=0)
            name = store.type_name
            (missing,) = report.of("missing")
            assert missing.key == {"user_id": lost[0], "merchant_id": lost[1]}, name
            assert missing.text == f'user_id={lost[0]},merchant_id="{lost[1]}"', name
            (mismatch,) = report.of("mismatch")
            assert mismatch.key == {"user_id": changed[0], "merchant_id": changed[1]}, name
            assert set(mismatch.differences) == {"um_count_1d", "um_amount_1d"}, name
            assert report.store == name and report.inconsistent == 2 and report.sample == 0, name
            assert report.checked == report.iceberg_keys == len(composite.latest_rows(fl)), name


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI entry point in this process (exit code, stdout, stderr), as tests/test_predict.py runs it."""
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(["-C", str(root), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    """A SQLite-backed project, published and synced (the CLI opens it again by its directory)."""
    handle = project(tmp_path / "proj", "sqlite")
    try:
        publish(handle)
        handle.sync()
        yield handle
    finally:
        handle.close()


def test_sample_is_seeded_and_zero_means_every_key(synced: featurelake.Featurelake) -> None:
    # Every key lost (the watermark stays): each sampled key is reported, so the sample can be seen.
    store = synced.online.store
    store.delete(VIEW, list(store.keys(VIEW)))
    every = synced.consistency(VIEW, sample=0)
    assert keys_of(every, "missing") == list(USERS) and every.counts["expired"] == 1
    first = synced.consistency(VIEW, sample=5, seed=7)
    again = synced.consistency(VIEW, sample=5, seed=7)
    other = synced.consistency(VIEW, sample=5, seed=8)
    assert first.checked == 5 and (first.sample, first.seed, first.universe) == (5, 7, 21)
    assert [d.key for d in first.diffs] == [d.key for d in again.diffs]
    assert {d.key for d in first.diffs} <= set(USERS) | {30}
    assert [d.key for d in other.diffs] != [d.key for d in first.diffs]
    assert synced.consistency(VIEW, sample=1000).checked == 21  # more than there are: every key
    with pytest.raises(UsageError, match=r"sample must be 0 \(every key\) or a positive number"):
        synced.consistency(VIEW, sample=-1)


def test_cli_reports_keys_and_exits_1_when_they_differ(
    synced: featurelake.Featurelake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synced.project.root
    clean = cli(capsys, root, "consistency", VIEW)
    assert clean.returncode == 0, clean.stderr
    assert "20 consistent" in clean.stdout and "mismatch ratio 0" in clean.stdout

    synced.online.store.delete(VIEW, ["4"])
    text = cli(capsys, root, "consistency", VIEW, "--sample", "0")
    assert text.returncode == 1, text.stderr
    assert "missing keys of user_features (1)" in text.stdout and "│ 4 " in text.stdout
    assert "1 inconsistent key(s)" in text.stdout and f"featurelake sync {VIEW} --full" in text.stdout

    as_json = cli(capsys, root, "consistency", VIEW, "--json", "--sample", "3", "--seed", "2")
    assert as_json.returncode in (0, 1), as_json.stderr
    doc = json.loads(as_json.stdout)
    assert (doc["view"], doc["store"], doc["checked"], doc["sample"], doc["seed"]) == (
        VIEW,
        "sqlite",
        3,
        3,
        2,
    )
    assert set(doc["counts"]) == {"consistent", "mismatch", "missing", "stale", "extra", "ahead", "expired"}
    assert as_json.returncode == (1 if doc["missing"] else 0)

    full = json.loads(cli(capsys, root, "consistency", VIEW, "--json", "--sample", "0").stdout)
    assert [(m["key"], m["iceberg_event_ts"], m["online_event_ts"]) for m in full["missing"]] == [
        (4, r(3).isoformat(), None)
    ]
    assert full["mismatch_ratio"] == pytest.approx(1 / 20) and full["ok"] is False


def test_cli_now_judges_the_ttl_as_of_another_time(
    synced: featurelake.Featurelake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synced.project.root
    synced.online.store.delete(VIEW, ["4"])
    later = cli(capsys, root, "consistency", VIEW, "--json", "--now", (BASE + timedelta(days=30)).isoformat())
    assert later.returncode == 0, later.stderr  # a month on, every row is older than the 7-day ttl
    assert json.loads(later.stdout)["counts"]["expired"] == 21
    bad = cli(capsys, root, "consistency", VIEW, "--now", "next tuesday")
    assert bad.returncode == 2 and "--now" in bad.stderr


def test_bad_input_names_the_view_and_what_to_do(
    tmp_path: Path, synced: featurelake.Featurelake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synced.project.root
    unknown = cli(capsys, root, "consistency", "nope")
    assert unknown.returncode == 2
    assert "error: unknown feature view 'nope': features.py defines user_features" in unknown.stderr
    assert cli(capsys, root, "consistency", VIEW, "--sample", "-3").returncode == 2

    never = project(tmp_path / "never", "sqlite")
    try:
        append(never, [(1, r(1), 1)])
        with pytest.raises(UsageError, match=f"view {VIEW} was never synced to the online store .*sqlite"):
            never.consistency(VIEW)
        failed = cli(capsys, never.project.root, "consistency", VIEW)
        assert failed.returncode == 2 and f"run `featurelake sync {VIEW}` first" in failed.stderr
        # The failure is recorded like any job's, under the reason of its error class.
        assert any(
            row.metric == "featurelake_job_failure_total"
            and dict(row.labels) == {"job": "consistency", "view": VIEW, "reason": "usage"}
            for row in state_of(never.project).latest()
        )
    finally:
        never.close()


@pytest.mark.redis
def test_an_unreachable_store_names_the_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    fl = project(tmp_path / "proj", "redis", dead)
    try:
        append(fl, [(1, r(1), 1)])
        with pytest.raises(OnlineStoreUnavailableError) as caught:
            fl.consistency(VIEW)
        message = str(caught.value)
        assert message.startswith(f"cannot check the consistency of {VIEW}: online store {dead} (redis)")
        assert "check that Redis is running" in message and f"featurelake consistency {VIEW}" in message
        failed = cli(capsys, fl.project.root, "consistency", VIEW)
        assert failed.returncode == 1 and f"error: cannot check the consistency of {VIEW}" in failed.stderr
    finally:
        fl.close()


# --- the server's visibility lag ------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    scope = StoreScope("contract", "featurelake", "sqlite:////srv/catalog.db", "file:///srv/warehouse", "ns")
    s: OnlineStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "online.db", scope)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), scope)
    try:
        yield s
    finally:
        s.close()


def recs(*rows: tuple[str, int]) -> Records:
    return Records([k for k, _ in rows], [t for _, t in rows], [1] * len(rows), ["{}"] * len(rows))


def test_newest_event_is_one_read_raised_by_writes_and_never_lowered(
    store: OnlineStore, tmp_path: Path
) -> None:
    assert store.newest_event_ts("v") is None
    store.write("v", recs(("a", 100), ("b", 300), ("c", 200)))
    store.write("w", recs(("a", 900)))  # another view: its own marker
    assert (store.newest_event_ts("v"), store.newest_event_ts("w")) == (300, 900)
    store.write("v", recs(("b", 250)))  # refused (older than b's 300)
    store.write("v", recs(("a", 150)), force=True)
    store.delete("v", ["b"])  # the newest key gone: the marker is what was made visible, not what is left
    assert store.newest_event_ts("v") == 300
    store.write("v", recs(("d", 400)))
    assert store.newest_event_ts("v") == 400
    # Keys written before the marker existed: read once, then kept.
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute("DELETE FROM online_newest")
        conn.close()
    else:
        assert isinstance(store, RedisStore)
        store.client.delete(store._newest_key("v"))
    assert store.newest_event_ts("v") == 400
    # The default of a store that keeps no marker reads every key: the same answer.
    assert OnlineStore.newest_event_ts(store, "v") == 400


def lag_on_server(client: TestClient, view: str = VIEW) -> float | None:
    body = client.get("/metrics")
    assert body.status_code == 200
    for family in text_string_to_metric_families(body.text):
        if family.name == "featurelake_online_visibility_lag_seconds":
            for sample in family.samples:
                if sample.labels == {"view": view}:
                    return float(sample.value)
    return None


def test_server_exposes_the_lag_from_the_newest_event_to_now(fl: featurelake.Featurelake) -> None:
    with TestClient(create_app(fl.project)) as client:
        assert lag_on_server(client) is None  # nothing written yet: no series, rather than a made-up one
        publish(fl)
        fl.sync()
        lag = lag_on_server(client)
        newest = r(3).timestamp()  # user 1-10's day-3 rows are the newest events
        assert lag is not None and abs(lag - (time.time() - newest)) < 30
        # An event written a second ago (a push, a stream) is visible a second later.
        fl.online.store.write(VIEW, recs(("1", us(datetime.now(UTC) - timedelta(seconds=1)))))
        fresh = lag_on_server(client)
        assert fresh is not None and 1 <= fresh < 30


@pytest.mark.redis
def test_lag_keeps_growing_while_the_store_is_unreachable(tmp_path: Path, own_redis: RedisServer) -> None:
    fl = project(tmp_path / "proj", "redis", own_redis.url)
    try:
        append(fl, [(1, r(1), 1)])
        fl.sync()
        with TestClient(create_app(fl.project)) as client:
            before = lag_on_server(client)
            own_redis.kill()
            time.sleep(0.05)
            after = lag_on_server(client)  # /metrics still answers, with the last newest event known
            assert before is not None and after is not None and after >= before
            own_redis.start()
            again = lag_on_server(client)
            assert again is not None and again >= after
    finally:
        fl.close()


def test_a_float32_stored_in_other_digits_of_the_same_value_is_consistent() -> None:
    """Earlier versions stored a float32 in its shortest float32 digits (1.1, 57696450.0); the sync now writes
    its exact value (1.100000023841858, 57696448.0). Same float32: consistent. Another float32, or a double
    whose digits differ: a mismatch."""
    from featurelake.serving.consistency import _Expected, _judge

    now = us(r(4))
    want = _Expected(us(r(1)), '{"f": 1.100000023841858, "g": 57696448.0, "d": 1.100000023841858}')

    def judged(stored: str) -> tuple[str, dict[str, Any]]:
        return _judge(want, (us(r(1)), stored), None, now, ["f", "g", "d"], frozenset({"f", "g"}))

    assert judged('{"f": 1.1, "g": 57696450.0, "d": 1.100000023841858}') == ("consistent", {})
    assert judged('{"f": 1.1000001, "g": 57696448.0, "d": 1.100000023841858}') == (
        "mismatch",
        {"f": (1.100000023841858, 1.1000001)},
    )
    assert judged('{"f": 1.1, "g": 57696450.0, "d": 1.1}') == ("mismatch", {"d": (1.100000023841858, 1.1)})
    assert judged('{"f": "NaN", "g": null, "d": 1.100000023841858}') == (
        "mismatch",
        {"f": (1.100000023841858, "NaN"), "g": (57696448.0, None)},
    )
