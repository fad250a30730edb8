"""Compaction (rewrite_data_files): same rows at every snapshot, one verified commit, safe next to writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import featurelake
from featurelake.errors import ConfigError, ConflictError, DataError, UsageError
from featurelake.lakehouse import lineage
from featurelake.maintenance import compaction
from tests.helpers import START, day
from tests.maintenance_helpers import (
    VIEW,
    current_id,
    fingerprint,
    live_data_files,
    local,
    rows,
    small_appends,
    stored,
    table,
    unreachable,
)


def shifted(data: pa.Table, offset: int) -> pa.Table:
    """The same feature rows for other users (keys stay unique)."""
    i = data.schema.get_field_index("user_id")
    return data.set_column(i, data.schema.field(i), pc.add(data.column("user_id"), offset))


@pytest.fixture
def small_files(fl: featurelake.Featurelake) -> featurelake.Featurelake:
    """Days 0-4 backfilled (one file per day), then appended again in slices of 17 rows: many small files."""
    fl.backfill(VIEW, day(0), day(5), run_id="base")
    small_appends(table(fl), shifted(fl.read(VIEW), 1000), 17)
    return fl


@pytest.fixture
def other(project_dir: Path, small_files: featurelake.Featurelake) -> Iterator[featurelake.Featurelake]:
    """A second handle on the same project: another writer."""
    with featurelake.open(project_dir) as handle:
        yield handle


def test_compaction_keeps_rows_identical_at_new_and_old_snapshots(
    small_files: featurelake.Featurelake,
) -> None:
    fl = small_files
    tbl = table(fl)
    old_id = current_id(tbl)
    before = rows(fl.read(VIEW))
    files_before = live_data_files(tbl)

    (report,) = fl.maintain(VIEW, compact=True)

    c = report.compaction
    assert c is not None and c.snapshot_id is not None
    tbl = table(fl)
    assert current_id(tbl) == c.snapshot_id
    assert rows(fl.read(VIEW)) == before
    assert rows(fl.read(VIEW, snapshot_id=old_id)) == before  # old snapshot still reads its old files
    files_after = live_data_files(tbl)
    assert len(files_after) == 5 < len(files_before) == c.data_files_before
    assert c.data_files_after == 5 and c.files_rewritten == len(files_before)
    assert sorted(g.partition for g in c.groups) == [f"event_ts_day={day(d)}" for d in range(5)]
    # One commit, recorded as compaction with the run's lineage.
    snap = tbl.metadata.snapshot_by_id(c.snapshot_id)
    assert snap is not None and snap.summary is not None
    props = snap.summary.additional_properties
    assert props[lineage.OPERATION] == "compaction"
    assert props[lineage.RUN_ID].startswith("maintain_") and props[lineage.PIPELINE_USER] == "test-user"
    assert props[lineage.CODE_VERSION] and props[lineage.VIEW] == VIEW
    assert snap.parent_snapshot_id == old_id
    assert fl.history(VIEW)[0].featurelake_operation == "compaction"
    # Nothing to do the second time.
    (again,) = fl.maintain(VIEW, compact=True)
    assert again.compaction is not None and again.compaction.snapshot_id is None
    assert current_id(table(fl)) == c.snapshot_id


def test_compaction_respects_the_target_size(small_files: featurelake.Featurelake) -> None:
    fl = small_files
    sizes = [f for f in table(fl).inspect.files().column("file_size_in_bytes").to_pylist()]
    target = 3 * max(sizes)  # room for about three files per output file
    before = fingerprint(fl.read(VIEW))
    (report,) = fl.maintain(VIEW, compact=True, target_file_size=target)
    c = report.compaction
    assert c is not None and c.groups
    assert all(g.input_bytes <= target for g in c.groups)
    assert all(len(g.inputs) >= 2 for g in c.groups)
    assert c.data_files_after > 5  # more than one file per partition at this small target
    assert fingerprint(fl.read(VIEW)) == before


def test_dry_run_plans_and_changes_nothing(small_files: featurelake.Featurelake) -> None:
    fl = small_files
    tbl = table(fl)
    location, files = tbl.metadata_location, stored(tbl)
    (report,) = fl.maintain(VIEW, dry_run=True, compact=True)
    c = report.compaction
    assert report.dry_run and c is not None and c.snapshot_id is None
    assert len(c.groups) == 5 and all(g.outputs == [] for g in c.groups)
    assert sum(g.rows for g in c.groups) == table(fl).scan().count()
    # Compaction only adds files: the old ones stay for older snapshots until expiry.
    assert report.files_after == report.files_before + 5 + 1  # and the commit's metadata file
    assert table(fl).metadata_location == location and stored(table(fl)) == files


def on_day(t: pa.Table, d: int) -> pa.Table:
    return t.filter(
        pc.equal(pc.cast(t.column("event_ts"), pa.date32()), pa.scalar(START.date() + timedelta(days=d)))
    )


def test_concurrent_append_is_not_lost(
    small_files: featurelake.Featurelake, other: featurelake.Featurelake
) -> None:
    fl = small_files
    extra = shifted(fl.read(VIEW).slice(0, 30), 5000)
    before = fingerprint(pa.concat_tables([fl.read(VIEW), extra]))
    appended: list[str] = []

    def append_once(msg: str) -> None:
        if "committing (attempt 1)" in msg:
            live = set(live_data_files(table(other)))
            table(other).append(extra)  # another writer lands between planning and commit
            appended.extend(set(live_data_files(table(other))) - live)

    (report,) = fl.maintain(VIEW, compact=True, progress=append_once)

    c = report.compaction
    assert appended and c is not None and c.snapshot_id is not None
    assert c.attempts == 2 and any("changed concurrently" in n for n in c.notes)
    assert fingerprint(fl.read(VIEW)) == before  # the append and every old row are there
    assert set(appended) <= set(live_data_files(table(fl)))  # in its own file, untouched


def test_partition_replaced_concurrently_is_not_resurrected(
    small_files: featurelake.Featurelake, other: featurelake.Featurelake
) -> None:
    fl = small_files
    replaced: list[int] = []

    def backfill_once(msg: str) -> None:
        if "committing (attempt 1)" in msg:
            # Day 1 is recomputed from the source: the appended (shifted) rows of day 1 disappear.
            replaced.append(other.backfill(VIEW, day(1), day(2), run_id="rewrite").snapshot_id)

    (report,) = fl.maintain(VIEW, compact=True, progress=backfill_once)

    c = report.compaction
    assert replaced and c is not None and c.snapshot_id is not None
    assert any("replaced concurrently" in n and f"event_ts_day={day(1)}" in n for n in c.notes)
    assert sorted(g.partition for g in c.groups) == [f"event_ts_day={day(d)}" for d in (0, 2, 3, 4)]
    day1 = on_day(fl.read(VIEW), 1)
    assert rows(day1) == rows(on_day(fl.read(VIEW, snapshot_id=replaced[0]), 1))
    assert pc.max(day1.column("user_id")).as_py() < 1000  # the replaced rows did not come back
    # The files rewritten for day 1 were deleted, not left behind.
    assert not [u for u in unreachable(table(fl)) if f"event_ts_day={day(1)}" in u]


def test_conflict_every_attempt_aborts_cleanly(
    small_files: featurelake.Featurelake, other: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl = small_files
    monkeypatch.setattr(fl.project.config.settings.catalog, "retries", 1)  # two attempts
    extra = shifted(fl.read(VIEW).slice(0, 5), 7000)
    files_before = stored(table(fl))

    def append_every_time(msg: str) -> None:
        if "committing" in msg:
            table(other).append(extra)

    with pytest.raises(ConflictError) as info:
        fl.maintain(VIEW, compact=True, progress=append_every_time)
    msg = str(info.value)
    assert "could not compact features.user_features" in msg and "nothing was committed" in msg
    tbl = table(fl)
    assert all(
        (s.summary is not None and s.summary.additional_properties.get(lineage.OPERATION) != "compaction")
        for s in tbl.metadata.snapshots
    )
    # The rewritten files were removed: new data files on disk are only the two appends.
    new_data = [f for f in set(stored(tbl)) - set(files_before) if f.endswith(".parquet")]
    assert len(new_data) == 2 and set(new_data) <= set(live_data_files(tbl))


def test_checksum_mismatch_commits_nothing(
    small_files: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl = small_files
    tbl = table(fl)
    location, files = tbl.metadata_location, stored(tbl)
    real_write = compaction.write_file

    def lossy_write(io, metadata, tasks):  # type: ignore[no-untyped-def]
        for task in tasks:
            batches = task.record_batches
            lossy = [*batches[:-1], batches[-1].slice(0, batches[-1].num_rows - 1)]
            yield from real_write(
                io, metadata, iter([type(task)(**{**task.__dict__, "record_batches": lossy})])
            )

    monkeypatch.setattr(compaction, "write_file", lossy_write)
    with pytest.raises(DataError) as info:
        fl.maintain(VIEW, compact=True)
    msg = str(info.value)
    assert "compaction of features.user_features event_ts_day=" in msg
    assert "does not hold the same rows" in msg and "nothing was committed" in msg
    assert table(fl).metadata_location == location
    assert stored(table(fl)) == files  # the bad file was deleted too


def test_checksum_is_order_independent_and_sees_values() -> None:
    t = pa.table({"k": [1, 2, 3], "v": [0.5, None, 2.0]})
    assert compaction.checksum(t) == compaction.checksum(t.take([2, 0, 1]))
    assert compaction.checksum(t) != compaction.checksum(t.set_column(1, "v", pa.array([0.5, None, 2.5])))
    dup = pa.concat_tables([t, t.slice(0, 1)])
    assert compaction.checksum(dup)[0] == 4 and compaction.checksum(dup) != compaction.checksum(t)


# --- the CLI ----------------------------------------------------------------------------------------


def cli(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_dry_run_json_and_report(small_files: featurelake.Featurelake, project_dir: Path) -> None:
    fl = small_files
    files = stored(table(fl))
    out = cli(project_dir, "maintain", VIEW, "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    (rep,) = json.loads(out.stdout)
    assert rep["table"] == "features.user_features" and rep["dry_run"] is True
    assert rep["compaction"]["files_rewritten"] > 5 and len(rep["compaction"]["groups"]) == 5
    assert rep["expiry"]["snapshots_expired"] == 0  # everything is younger than 7 days
    assert rep["orphans"]["orphans_removed"] == 0
    assert stored(table(fl)) == files

    done = cli(project_dir, "maintain", VIEW, "--compact")
    assert done.returncode == 0, done.stderr
    assert "compaction: rewrite" in done.stdout and "snapshot " in done.stdout
    assert "files under the table location:" in done.stdout
    assert len(live_data_files(table(fl))) == 5


def test_cli_refuses_unsafe_or_unclear_requests(
    small_files: featurelake.Featurelake, project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featurelake.cli.main import main

    files = stored(table(small_files))
    cases = [
        (["maintain"], "say what to maintain: a VIEW"),
        (["maintain", VIEW, "--all"], "either a VIEW or --all"),
        (["maintain", VIEW, "--orphan-min-age", "10m"], "--orphan-min-age 0:10:00 is under 1 hour"),
        (["maintain", VIEW, "--expire-older-than", "30m"], "--expire-older-than 0:30:00 is under 1 hour"),
        (["maintain", VIEW, "--retain-last", "0"], "--retain-last 0 would expire the current snapshot"),
        (["maintain", VIEW, "--expire-older-than", "7x"], "--expire-older-than '7x' is not a duration"),
        (["maintain", VIEW, "--target-file-size", "big"], "--target-file-size 'big' is not a size"),
        (["maintain", "nope"], "unknown feature view 'nope'"),
    ]
    for args, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["-C", str(project_dir), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, err)
    # The same through a real process: exit code 2 and one line.
    out = cli(project_dir, "maintain", VIEW, "--orphan-min-age", "10m")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "under 1 hour" in out.stderr
    assert stored(table(small_files)) == files


def test_bad_maintenance_config_names_the_key(
    small_files: featurelake.Featurelake, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad duration or size fails when the config loads (not in the middle of a run), naming the key."""
    files = stored(table(small_files))
    cfg = project_dir / "featurelake.yaml"
    original = cfg.read_text()
    cfg.write_text(original + "maintenance:\n  orphan_min_age: three days\n")
    with pytest.raises(ConfigError) as info:
        featurelake.open(project_dir)
    assert "'maintenance.orphan_min_age': 'three days' is not a duration" in str(info.value)
    cfg.write_text(original)
    monkeypatch.setenv("FEATURELAKE_MAINTENANCE__COMPACTION_TARGET_FILE_SIZE", "big")
    with pytest.raises(ConfigError) as info:
        featurelake.open(project_dir)
    msg = str(info.value)
    assert (
        "'maintenance.compaction_target_file_size' (from env FEATURELAKE_MAINTENANCE__COMPACTION_TARGET_FILE_SIZE)"
        in msg
    )
    assert "'big' is not a size" in msg
    assert stored(table(small_files)) == files


def test_all_covers_feature_and_prediction_tables(small_files: featurelake.Featurelake) -> None:
    fl = small_files
    cat = fl.project.catalog
    cat.create_namespace("predictions")
    preds = cat.create_table(
        "predictions.churn",
        schema=pa.schema([pa.field("user_id", pa.int64()), pa.field("score", pa.float64())]),
    )
    for i in range(3):
        preds.append(pa.table({"user_id": pa.array([i], pa.int64()), "score": [i / 10]}))
    reports = fl.maintain(all_tables=True, compact=True)
    by_table = {r.table: r for r in reports}
    # Every table of the feature namespace (featurelake's own logs too) and of predictions.
    idents = {".".join(i) for ns in ("features", "predictions") for i in cat.list_tables(ns)}
    assert set(by_table) == idents and {"features.user_features", "predictions.churn"} <= idents
    assert all(r.error is None for r in reports)
    for name in ("features.user_features", "predictions.churn"):
        compaction = by_table[name].compaction
        assert compaction is not None and compaction.snapshot_id
    assert len(live_data_files(cat.load_table("predictions.churn"))) == 1
    assert sorted(cat.load_table("predictions.churn").scan().to_arrow().column("user_id").to_pylist()) == [
        0,
        1,
        2,
    ]
    (one,) = fl.maintain("predictions.churn", compact=True)
    assert one.table == "predictions.churn"
    with pytest.raises(UsageError, match=r"table predictions\.nope does not exist"):
        fl.maintain("predictions.nope")


def test_paths_in_reports_are_real_files(small_files: featurelake.Featurelake) -> None:
    (report,) = small_files.maintain(VIEW, compact=True)
    assert report.compaction is not None
    for g in report.compaction.groups:
        assert all(local(o).is_file() for o in g.outputs)
        assert all(local(i).is_file() for i in g.inputs)  # kept for old snapshots until expiry


APPENDER = """
import sys, time
import pyarrow as pa
import featurelake
from tests.maintenance_helpers import appended_batch

project, n = sys.argv[1], int(sys.argv[2])
with featurelake.open(project) as fl:
    for i in range(n):
        fl.project.load_table("user_features").append(appended_batch(i))
        print(i, flush=True)
        time.sleep(0.15)
"""


@pytest.mark.slow
def test_compaction_next_to_an_appending_process(
    small_files: featurelake.Featurelake, project_dir: Path, tmp_path: Path
) -> None:
    from tests.maintenance_helpers import appended_batch

    fl = small_files
    n = 8
    expected = fingerprint(pa.concat_tables([fl.read(VIEW), *(appended_batch(i) for i in range(n))]))
    script = tmp_path / "appender.py"
    script.write_text(APPENDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(project_dir), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    commits, conflicts = 0, 0
    try:
        while proc.poll() is None:
            try:
                (r,) = fl.maintain(VIEW, compact=True)
                commits += bool(r.compaction and r.compaction.snapshot_id)
            except ConflictError:
                conflicts += 1  # a clean abort: nothing committed, checked below
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == [str(i) for i in range(n)]
    (last,) = fl.maintain(VIEW, compact=True)
    assert commits + bool(last.compaction and last.compaction.snapshot_id) >= 1
    assert fingerprint(fl.read(VIEW)) == expected  # every append landed, nothing duplicated or lost
    assert len(live_data_files(table(fl))) == 5


def test_all_carries_on_past_a_failing_table_and_exits_1(
    small_files: featurelake.Featurelake,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from featurelake.cli.main import main
    from featurelake.maintenance import orphans
    from featurelake.maintenance.files import StoredFile

    cat = small_files.project.catalog
    cat.create_namespace("predictions")
    preds = cat.create_table("predictions.churn", schema=pa.schema([pa.field("score", pa.float64())]))
    for i in range(3):
        preds.append(pa.table({"score": [i / 10]}))
    files = stored(table(small_files))
    real_list = orphans.list_files

    def broken_for_features(io: object, location: str) -> list[StoredFile]:
        listed = real_list(io, location)  # type: ignore[arg-type]
        if location.endswith("/user_features"):  # as if another mount named these files differently
            return [StoredFile(f.uri.replace("/proj/", "/other/proj/"), f.size, f.modified) for f in listed]
        return listed

    monkeypatch.setattr(orphans, "list_files", broken_for_features)
    with pytest.raises(SystemExit) as exit_info:
        main(["-C", str(project_dir), "maintain", "--all", "--remove-orphans"])
    out = capsys.readouterr()
    assert exit_info.value.code == 1
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "maintenance of features.user_features: orphan removal" in errors[0]
    assert "nothing was deleted" in errors[0]
    assert "predictions.churn\n  files under the table location" in out.out  # the others still ran
    assert stored(table(small_files)) == files
