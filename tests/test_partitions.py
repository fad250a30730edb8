"""``FeatureView(partition=...)``: the table's spec follows it, ``apply`` evolves it, backfills replace exactly
their window inside coarser partitions without multiplying files (local and Spark), compaction moves files of
an older spec into the current one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import ConfigError
from featurelake.lakehouse.schema import partition_of
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions, write_source
from tests.spark_support import assert_rows_close, engine_config, expected_features, sorted_rows

VIEW = "user_features"
#: 2023-12-01 .. 2024-02-08: three months, two years.
FIRST, DAYS = -31, 70
#: The re-run window crosses a month and a year boundary and is aligned to neither.
RERUN = (-11, 10)
FILES = {"day": DAYS, "month": 3, "year": 2, "none": 1}


def features(partition: str | None) -> str:
    if partition is None:
        return DEFAULT_FEATURES
    return DEFAULT_FEATURES.replace(
        "ttl=timedelta(days=7),", f"ttl=timedelta(days=7),\n    partition={partition!r},"
    )


def source(seed: int = 1) -> pa.Table:
    return transactions(
        days=DAYS, users=10, rows_per_day=20, start=datetime(2023, 12, 1, tzinfo=UTC), seed=seed
    )


def project(root: Path, partition: str | None, engine: str = "local") -> Path:
    return make_project(root, features=features(partition), config=engine_config(engine), data=source())


def live_files(fl: featurelake.Featurelake) -> int:
    return len(list(fl.project.load_table(VIEW).scan().plan_files()))


def set_features(proj: Path, partition: str | None) -> None:
    (proj / "features.py").write_text(features(partition))


@pytest.mark.parametrize("partition", ["day", "month", "year", "none"])
def test_the_table_is_partitioned_as_the_view_says(tmp_path: Path, partition: str) -> None:
    with featurelake.open(project(tmp_path / "p", partition)) as fl:
        (created,) = fl.apply()
        tbl = fl.project.load_table(VIEW)
        assert partition_of(tbl.spec(), tbl.schema(), "event_ts") == partition
        assert created.action == "created"
        want = "none" if partition == "none" else f"{partition}(event_ts)"
        assert f"partitioned by {want}" in created.changes[0].new  # type: ignore[operator]


def test_the_default_stays_day(tmp_path: Path) -> None:
    with featurelake.open(project(tmp_path / "p", None)) as fl:
        fl.apply()
        tbl = fl.project.load_table(VIEW)
        assert fl.project.view(VIEW).partition == "day"
        assert partition_of(tbl.spec(), tbl.schema(), "event_ts") == "day"


@pytest.mark.parametrize(
    ("engine", "partition"),
    [
        *[("local", p) for p in FILES],
        pytest.param("spark", "month", marks=pytest.mark.spark),
        pytest.param("spark", "none", marks=pytest.mark.spark),
    ],
)
def test_rebackfills_replace_their_window_and_never_multiply_files(
    tmp_path: Path, engine: str, partition: str, request: pytest.FixtureRequest
) -> None:
    if engine == "spark":
        request.getfixturevalue("spark")
    proj = project(tmp_path / "p", partition, engine)
    data = source()
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(FIRST), day(FIRST + DAYS), run_id="full")
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(data, FIRST, FIRST + DAYS))
        files = live_files(fl)
        if engine == "local":
            assert files == FILES[partition]
        # Late data arrives for the re-run window only: the window's features change, nothing else does.
        late = transactions(
            days=RERUN[1] - RERUN[0],
            users=10,
            rows_per_day=15,
            start=datetime(2023, 12, 21, tzinfo=UTC),
            seed=9,
        )
        write_source(proj, late, name="part-late.parquet")
        data = pa.concat_tables([data, late])
        for run in ("r1", "r2", "r3"):
            res = fl.backfill(VIEW, day(RERUN[0]), day(RERUN[1]), run_id=run)
            assert res.rows == len(expected_features(data, *RERUN))
            assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(data, FIRST, FIRST + DAYS))
            assert live_files(fl) == files, f"run {run} changed the live file count"
        assert fl.history(VIEW)[0].run_id == "r3"


def test_changing_the_partition_evolves_the_spec_and_compaction_moves_old_files(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", "day")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(FIRST), day(FIRST + DAYS), run_id="by-day")
        before = sorted_rows(fl.read(VIEW))
        day_snapshot = fl.history(VIEW)[0].snapshot_id
    set_features(proj, "month")
    with featurelake.open(proj) as fl:
        (plan,) = fl.apply(dry_run=True)
        assert plan.action == "planned"
        assert [(c.kind, c.old, c.new) for c in plan.changes] == [
            ("partition", "day(event_ts)", "month(event_ts)")
        ]
        assert not plan.changes[0].breaking and plan.blocked is None
        assert "partition by month(event_ts) (was day(event_ts))" in plan.describe()
        tbl = fl.project.load_table(VIEW)
        assert partition_of(tbl.spec(), tbl.schema(), "event_ts") == "day"  # the dry run changed nothing

        (done,) = fl.apply()
        assert done.action == "evolved"
        tbl = fl.project.load_table(VIEW)
        assert partition_of(tbl.spec(), tbl.schema(), "event_ts") == "month"
        assert fl.history(VIEW)[0].featurelake_operation == "evolve-schema"
        assert sorted_rows(fl.read(VIEW)) == before  # no data rewritten or lost
        assert sorted_rows(fl.read(VIEW, snapshot_id=day_snapshot)) == before
        (again,) = fl.apply()
        assert again.action == "unchanged"

        # A re-run of day-partitioned data under the month spec replaces its window exactly.
        fl.backfill(VIEW, day(RERUN[0]), day(RERUN[1]), run_id="by-month")
        assert sorted_rows(fl.read(VIEW)) == before
        specs = {t.file.spec_id for t in fl.project.load_table(VIEW).scan().plan_files()}
        assert len(specs) == 2  # old day files outside the window, month files inside it

        (report,) = fl.maintain(VIEW, compact=True)
        tbl = fl.project.load_table(VIEW)
        files = [t.file for t in tbl.scan().plan_files()]
        assert {f.spec_id for f in files} == {tbl.metadata.default_spec_id}
        assert len(files) == 3  # one per month
        assert sorted_rows(fl.read(VIEW)) == before
        assert report.compaction is not None
        assert any("older partition spec" in n for n in report.compaction.notes)


def test_compaction_splits_files_that_span_new_partitions(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", "none")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(FIRST), day(FIRST + DAYS), run_id="flat")
        before = sorted_rows(fl.read(VIEW))
        assert live_files(fl) == 1
    set_features(proj, "month")
    with featurelake.open(proj) as fl:
        fl.apply()
        (report,) = fl.maintain(VIEW, compact=True)
        tbl = fl.project.load_table(VIEW)
        files = [t.file for t in tbl.scan().plan_files()]
        assert len(files) == 3 and {f.spec_id for f in files} == {tbl.metadata.default_spec_id}
        assert sorted_rows(fl.read(VIEW)) == before
        assert report.compaction is not None and report.compaction.data_files_after == 3


def test_year_partitions_compact_a_years_small_files(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", "year")
    with featurelake.open(proj) as fl:
        fl.apply()
        for start in range(FIRST, FIRST + DAYS, 7):  # weekly backfills: a file per week per year
            fl.backfill(VIEW, day(start), day(min(start + 7, FIRST + DAYS)))
        before = sorted_rows(fl.read(VIEW))
        assert live_files(fl) > 2
        fl.maintain(VIEW, compact=True)
        assert live_files(fl) == 2
        assert sorted_rows(fl.read(VIEW)) == before


@pytest.mark.parametrize("bad", ["week", "Day", "", None])
def test_an_unknown_partition_is_refused_when_features_load(tmp_path: Path, bad: str | None) -> None:
    proj = make_project(
        tmp_path / "p", features=features("day").replace("partition='day'", f"partition={bad!r}")
    )
    with featurelake.open(proj) as fl:
        with pytest.raises(ConfigError) as info:
            fl.apply()
        assert "view 'user_features': partition must be one of 'day', 'month', 'year', 'none'" in str(
            info.value
        )
        assert not fl.project.catalog.table_exists(f"features.{VIEW}")  # nothing was created


def test_moving_to_none_rewrites_a_straddled_month_into_the_new_layout(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", "month")
    with featurelake.open(proj) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(20), run_id="m")
        before = sorted_rows(fl.read(VIEW))
    set_features(proj, "none")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(5), day(10), run_id="n")  # inside January's month file
        assert sorted_rows(fl.read(VIEW)) == before
        assert sorted_rows(fl.read(VIEW, snapshot_id=first.snapshot_id)) == before
        tbl = fl.project.load_table(VIEW)
        (only,) = [t.file for t in tbl.scan().plan_files()]  # January rewritten whole, unpartitioned
        assert only.spec_id == tbl.metadata.default_spec_id


@pytest.mark.spark
def test_spark_compaction_moves_files_of_an_older_spec(spark: object, tmp_path: Path) -> None:
    proj = project(tmp_path / "p", "day", "spark")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(FIRST), day(FIRST + DAYS), run_id="by-day")
        before = sorted_rows(fl.read(VIEW))
    set_features(proj, "month")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(RERUN[0]), day(RERUN[1]), run_id="by-month")  # Spark writes under month()
        assert_rows_close(sorted_rows(fl.read(VIEW)), before)
        fl.maintain(VIEW, compact=True)
        tbl = fl.project.load_table(VIEW)
        files = [t.file for t in tbl.scan().plan_files()]
        assert {f.spec_id for f in files} == {tbl.metadata.default_spec_id}
        # Iceberg's planner rewrites the old-spec files as one group (split by month on write), beside the
        # month files the re-run wrote; the next compaction merges those small neighbours.
        assert len(files) <= 5
        fl.maintain(VIEW, compact=True)
        assert live_files(fl) == 3
        assert_rows_close(sorted_rows(fl.read(VIEW)), before)
