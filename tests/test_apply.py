"""apply: table layout, allowed evolutions (add, widen) and refused breaking changes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, LongType, TimestamptzType

import featurelake
from featurelake.errors import SchemaError
from featurelake.lakehouse import lineage, wap
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions


def rewrite(proj: Path, old: str, new: str) -> None:
    src = (proj / "features.py").read_text()
    assert old in src
    (proj / "features.py").write_text(src.replace(old, new))


def test_apply_creates_day_partitioned_timestamptz_table(fl: featurelake.Featurelake) -> None:
    tbl = fl.project.load_table("user_features")
    assert tbl.name() == ("features", "user_features")
    schema = tbl.schema()
    assert [f.name for f in schema.fields] == [
        "user_id",
        "event_ts",
        "txn_count_1d",
        "amount_sum_1d",
        "amount_avg_1d",
    ]
    assert schema.find_field("user_id").required and schema.find_field("user_id").field_type == LongType()
    assert schema.find_field("event_ts").field_type == TimestamptzType()
    assert schema.find_field("amount_avg_1d").field_type == DoubleType()
    (part,) = tbl.spec().fields
    assert isinstance(part.transform, DayTransform)
    assert part.source_id == schema.find_field("event_ts").field_id
    assert tbl.properties["featurelake.join-key"] == "user_id"
    assert tbl.properties["featurelake.ttl-seconds"] == str(7 * 86400)
    # The empty first snapshot on main carries lineage too.
    (snap,) = tbl.metadata.snapshots
    assert snap.summary is not None
    assert snap.summary.additional_properties[lineage.OPERATION] == "create"
    assert snap.summary.additional_properties[lineage.PIPELINE_USER] == "test-user"


def test_apply_is_idempotent(fl: featurelake.Featurelake) -> None:
    before = wap.main_snapshot_id(fl.project.load_table("user_features"))
    (result,) = fl.apply()
    assert result.action == "unchanged" and not result.changes
    assert wap.main_snapshot_id(fl.project.load_table("user_features")) == before


def test_adding_a_field_evolves_without_rewrite(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
        files_before = {f.file.file_path for f in fl.project.load_table("user_features").scan().plan_files()}
    rewrite(
        project_dir,
        "avg(amount) AS amount_avg_1d",
        "avg(amount) AS amount_avg_1d, max(amount) AS amount_max_1d",
    )
    rewrite(
        project_dir, '"amount_avg_1d": "double"}', '"amount_avg_1d": "double", "amount_max_1d": "double"}'
    )
    with featurelake.open(project_dir) as fl:
        (result,) = fl.apply()
        assert result.action == "evolved"
        assert [c.describe() for c in result.changes if c.kind != "property"] == [
            "add column amount_max_1d double"
        ]
        assert [c.column for c in result.changes if c.kind == "property"] == ["featurelake.query-sha256"]
        tbl = fl.project.load_table("user_features")
        assert {f.file.file_path for f in tbl.scan().plan_files()} == files_before  # no data rewritten
        old = fl.read("user_features")
        assert old.column("amount_max_1d").null_count == old.num_rows
        fl.backfill("user_features", day(3), day(5))
        new = fl.read("user_features")
        assert new.column("amount_max_1d").null_count == old.num_rows  # only the new window has values
        assert fl.history("user_features")[1].featurelake_operation == "evolve-schema"


def test_widening_int_to_long_is_allowed(tmp_path: Path) -> None:
    proj = make_project(
        tmp_path / "w", features=DEFAULT_FEATURES.replace('"txn_count_1d": "long"', '"txn_count_1d": "int"')
    )
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(2))
        assert fl.read("user_features").schema.field("txn_count_1d").type == pa.int32()
    rewrite(proj, '"txn_count_1d": "int"', '"txn_count_1d": "long"')
    with featurelake.open(proj) as fl:
        (result,) = fl.apply()
        assert [c.kind for c in result.changes] == ["widen"]  # the query is the same: no property change
        assert fl.read("user_features").schema.field("txn_count_1d").type == pa.int64()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"amount_sum_1d": "double", ', "", "drop column amount_sum_1d"),
        ('"txn_count_1d": "long"', '"txn_count_1d": "int"', "change type of txn_count_1d long -> int"),
        (
            '"amount_avg_1d": "double"',
            '"amount_avg_1d": "string"',
            "change type of amount_avg_1d double -> string",
        ),
    ],
)
def test_breaking_changes_are_refused_unless_allowed(
    project_dir: Path, old: str, new: str, expected: str
) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(2))
        schema_before = fl.project.load_table("user_features").schema()
        rows_before = fl.read("user_features").num_rows
    rewrite(project_dir, old, new)
    if "drop" in expected:  # the query must stop producing the dropped column too
        rewrite(project_dir, "sum(amount) AS amount_sum_1d, ", "")
    if "string" in expected:
        rewrite(project_dir, "avg(amount) AS amount_avg_1d", "CAST(avg(amount) AS VARCHAR) AS amount_avg_1d")
    with featurelake.open(project_dir) as fl:
        with pytest.raises(SchemaError, match="--allow-breaking") as info:
            fl.apply()
        assert expected in str(info.value)
        tbl = fl.project.load_table("user_features")
        assert tbl.schema() == schema_before
        assert fl.read("user_features").num_rows == rows_before
        (result,) = fl.apply(allow_breaking=True)
        assert result.action == "evolved" and expected in result.describe()


def test_key_type_change_is_always_refused(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
    rewrite(project_dir, "SELECT user_id,", "SELECT CAST(user_id AS VARCHAR) AS user_id,")
    with featurelake.open(project_dir) as fl:
        (plan,) = fl.apply(dry_run=True, allow_breaking=True)  # the plan says it, without raising
        assert "BREAKING: change key/timestamp column user_id: long -> string" in plan.describe()
        assert plan.blocked is not None and "cannot be evolved in place" in plan.blocked
        with pytest.raises(SchemaError, match="cannot be evolved in place"):
            fl.apply(allow_breaking=True)
        assert fl.project.load_table("user_features").schema().find_field("user_id").field_type == LongType()


def test_dry_run_changes_nothing(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        (planned,) = fl.apply(dry_run=True)
        assert planned.action == "planned" and [c.kind for c in planned.changes] == ["create"]
        assert "partitioned by day(event_ts)" in planned.describe()
        assert not fl.project.catalog.namespace_exists("features")  # not even the namespace
        fl.apply()
    rewrite(project_dir, '"amount_avg_1d": "double"}', '"amount_avg_1d": "double", "n2": "long"}')
    rewrite(project_dir, "avg(amount) AS amount_avg_1d", "avg(amount) AS amount_avg_1d, count(*) AS n2")
    with featurelake.open(project_dir) as fl:
        (result,) = fl.apply(dry_run=True)
        assert result.action == "planned"
        assert "n2" not in fl.project.load_table("user_features").schema().column_names


def test_source_table_reads_an_iceberg_table(tmp_path: Path) -> None:
    features = DEFAULT_FEATURES.replace(
        'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
        'Source.table("raw.transactions", timestamp_field="ts")',
    )
    proj = make_project(tmp_path / "t", features=features, data=transactions().slice(0, 0))
    with featurelake.open(proj) as fl:
        raw = transactions()
        catalog = fl.project.catalog
        catalog.create_namespace("raw")
        tbl = catalog.create_table("raw.transactions", schema=raw.schema)
        tbl.append(raw)
        fl.apply()
        result = fl.backfill("user_features", day(0), day(4))
        data = fl.read("user_features")
    assert data.num_rows == result.rows > 0
    assert data.schema.field("user_id").type == pa.int64()


def test_dry_run_reports_a_query_only_change(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
    rewrite(project_dir, "FROM source GROUP BY ALL", "FROM source WHERE amount >= 0 GROUP BY ALL")
    with featurelake.open(project_dir) as fl:
        (planned,) = fl.apply(dry_run=True)
        assert planned.action == "planned"
        assert [(c.kind, c.column) for c in planned.changes] == [("property", "featurelake.query-sha256")]
        (done,) = fl.apply()
        assert done.action == "evolved"
        (again,) = fl.apply(dry_run=True)
        assert again.action == "unchanged"


# --- renames, property removals and the full plan ------------------------------------------------------

RENAMED = (
    DEFAULT_FEATURES.replace(
        "from featurelake import Entity, FeatureView, Source, checks",
        "from featurelake import Entity, FeatureView, Field, Source, checks",
    )
    .replace('"amount_avg_1d": "double"}', '"avg_amount_1d": Field("double", renamed_from="amount_avg_1d")}')
    .replace("avg(amount) AS amount_avg_1d", "avg(amount) AS avg_amount_1d")
    .replace('checks.null_rate("amount_avg_1d"', 'checks.null_rate("avg_amount_1d"')
)


def test_a_rename_keeps_the_values_and_old_snapshots_keep_the_old_name(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
        first = fl.backfill("user_features", day(0), day(3))
        values = fl.read("user_features").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
        field_id = fl.project.load_table("user_features").schema().find_field("amount_avg_1d").field_id
    (project_dir / "features.py").write_text(RENAMED)
    with featurelake.open(project_dir) as fl:
        (plan,) = fl.apply(dry_run=True)
        assert "rename column amount_avg_1d -> avg_amount_1d (values kept)" in plan.describe()
        assert "drop" not in plan.describe() and plan.blocked is None
        (done,) = fl.apply()  # no --allow-breaking needed: nothing is lost
        assert [c.kind for c in done.changes] == ["rename", "property"]
        tbl = fl.project.load_table("user_features")
        assert tbl.schema().find_field("avg_amount_1d").field_id == field_id
        now = fl.read("user_features").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
        assert now.column("avg_amount_1d").equals(values.column("amount_avg_1d"))
        assert "amount_avg_1d" not in now.column_names
        old = fl.read("user_features", snapshot_id=first.snapshot_id)
        assert "amount_avg_1d" in old.column_names and "avg_amount_1d" not in old.column_names
        fl.backfill("user_features", day(3), day(5))  # writes, audits and reads under the new name
        assert fl.read("user_features").column("avg_amount_1d").null_count == 0
        (again,) = fl.apply()  # renamed_from may stay in features.py: the rename is done
        assert again.action == "unchanged"


def test_a_rename_from_a_missing_column_is_refused_and_changes_nothing(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply()
        schema_before = fl.project.load_table("user_features").schema()
    (project_dir / "features.py").write_text(
        RENAMED.replace('renamed_from="amount_avg_1d"', 'renamed_from="avg_amt"')
    )
    with featurelake.open(project_dir) as fl:
        for dry_run in (True, False):
            with pytest.raises(SchemaError) as info:
                fl.apply(dry_run=dry_run)
            message = str(info.value)
            assert "features.user_features" in message and "'avg_amount_1d'" in message
            assert "renamed_from='avg_amt'" in message and "fix renamed_from" in message
        assert fl.project.load_table("user_features").schema() == schema_before


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ('{"b": Field("double", renamed_from="a"), "a": "double"}', "is also declared as a field"),
        (
            '{"b": Field("double", renamed_from="a"), "c": Field("double", renamed_from="a")}',
            "renamed only once",
        ),
        ('{"b": Field("double", renamed_from="user_id")}', "join key or timestamp, which cannot be renamed"),
        ('{"b": Field("double", renamed_from="b")}', "names the field itself"),
        ('{"b": Field("double", renamed_from="not a name")}', "is not a valid name"),
        ('{"b": Field("nope", renamed_from="a")}', "unknown type 'nope'"),
    ],
)
def test_bad_renames_are_refused_when_features_load(tmp_path: Path, fields: str, needle: str) -> None:
    features = (
        DEFAULT_FEATURES.replace("Entity, FeatureView, Source", "Entity, FeatureView, Field, Source")
        .replace(
            'fields={"txn_count_1d": "long", "amount_sum_1d": "double", "amount_avg_1d": "double"}',
            f"fields={fields}",
        )
        .replace(
            'checks=[checks.null_rate("amount_avg_1d", max=0.10), checks.between("txn_count_1d", 0, 10_000)],',
            "",
        )
    )
    proj = make_project(tmp_path / "p", features=features)
    with featurelake.open(proj) as fl:
        with pytest.raises(featurelake.ConfigError) as info:
            fl.apply()
        assert needle in str(info.value) and "user_features" in str(info.value)
        assert not fl.project.catalog.table_exists("features.user_features")


def test_field_is_exported_and_is_its_type_name() -> None:
    from featurelake import Field

    f = Field("double", renamed_from="old")
    assert f == "double" and f.renamed_from == "old" and "Field" in featurelake.__all__
    assert repr(f) == "Field('double', renamed_from='old')" and Field("long").renamed_from is None
    with pytest.raises(featurelake.ConfigError, match="type name"):
        Field(DoubleType())  # type: ignore[arg-type]


def test_removing_the_ttl_removes_the_property(tmp_path: Path) -> None:
    proj = make_project(
        tmp_path / "p", features=DEFAULT_FEATURES.replace("ttl=timedelta(days=7)", "ttl=timedelta(days=45)")
    )
    with featurelake.open(proj) as fl:
        fl.apply()
        assert fl.project.load_table("user_features").properties["featurelake.ttl-seconds"] == str(45 * 86400)
    rewrite(proj, "ttl=timedelta(days=45)", "ttl=None")
    with featurelake.open(proj) as fl:
        (plan,) = fl.apply(dry_run=True)
        assert plan.action == "planned"
        assert [c.describe() for c in plan.changes] == [
            "remove property featurelake.ttl-seconds (was 3888000)"
        ]
        assert "featurelake.ttl-seconds" in fl.project.load_table("user_features").properties
        (done,) = fl.apply()
        assert done.action == "evolved"
        assert "featurelake.ttl-seconds" not in fl.project.load_table("user_features").properties
        assert fl.project.load_table("user_features").properties["featurelake.view"] == "user_features"
        (again,) = fl.apply()
        assert again.action == "unchanged"


def test_dry_run_prints_every_change_marks_breaking_ones_and_exits_0(project_dir: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "featurelake", "-C", str(project_dir), *args],
            capture_output=True,
            text=True,
        )

    assert cli("apply").returncode == 0
    changed = (
        RENAMED.replace('"txn_count_1d": "long", "amount_sum_1d": "double", ', '"txn_count_1d": "long", ')
        .replace("sum(amount) AS amount_sum_1d, ", "max(amount) AS amount_max_1d, ")
        .replace('"txn_count_1d": "long", ', '"txn_count_1d": "long", "amount_max_1d": "double", ')
        .replace("ttl=timedelta(days=7),", 'ttl=None,\n    partition="month",')
    )
    (project_dir / "features.py").write_text(changed)
    before = featurelake.open(project_dir)
    try:
        tbl = before.project.load_table("user_features")
        state = (tbl.schema(), tbl.spec(), dict(tbl.properties), tbl.metadata.current_snapshot_id)
    finally:
        before.close()
    dry = cli("apply", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "features.user_features: planned"
    for needle in (
        "  - add column amount_max_1d double",
        "  - rename column amount_avg_1d -> avg_amount_1d (values kept)",
        "  - BREAKING: drop column amount_sum_1d (double)",
        "  - partition by month(event_ts) (was day(event_ts))",
        "  - remove property featurelake.ttl-seconds (was 604800)",
        "  - set property featurelake.query-sha256 ",
        "  apply would refuse: refusing breaking schema change(s): drop column amount_sum_1d (double).",
    ):
        assert any(line.startswith(needle) for line in lines), (needle, dry.stdout)
    as_json = json.loads(cli("apply", "--dry-run", "--json").stdout)
    assert {(p["kind"], p["breaking"]) for p in as_json[0]["plan"]} >= {("drop", True), ("rename", False)}
    refused = cli("apply")
    assert refused.returncode == 2 and "--allow-breaking" in refused.stderr
    with featurelake.open(project_dir) as fl:
        tbl = fl.project.load_table("user_features")
        assert (tbl.schema(), tbl.spec(), dict(tbl.properties), tbl.metadata.current_snapshot_id) == state
    done = cli("apply", "--allow-breaking")
    assert done.returncode == 0 and done.stdout.startswith("features.user_features: evolved"), done.stderr


def test_after_a_rename_the_next_sync_is_full_so_online_values_keep_their_new_name(tmp_path: Path) -> None:
    no_ttl = DEFAULT_FEATURES.replace("ttl=timedelta(days=7)", "ttl=None")
    proj = make_project(tmp_path / "p", features=no_ttl)
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
        fl.sync()
        (before,) = fl.online.get("user_features", [1])
    (proj / "features.py").write_text(RENAMED.replace("ttl=timedelta(days=7)", "ttl=None"))
    with featurelake.open(proj) as fl:
        fl.apply()
        (synced,) = fl.sync()
        assert synced.mode == "full" and "amount_avg_1d -> avg_amount_1d" in (synced.reason or "")
        (after,) = fl.online.get("user_features", [1])
        assert after.values["avg_amount_1d"] == before.values["amount_avg_1d"] is not None
        (again,) = fl.sync()
        assert again.mode == "up-to-date"


@pytest.mark.spark
def test_spark_backfills_and_reads_a_renamed_feature(spark: object, tmp_path: Path) -> None:
    from tests.spark_support import engine_config

    proj = make_project(tmp_path / "p", config=engine_config("spark"))
    with featurelake.open(proj) as fl:
        fl.apply()
        first = fl.backfill("user_features", day(0), day(3))
    (proj / "features.py").write_text(RENAMED)
    with featurelake.open(proj) as fl:
        (done,) = fl.apply()
        assert [c.kind for c in done.changes] == ["rename", "property"]
        fl.backfill("user_features", day(2), day(5))  # Spark writes the renamed column
        now = fl.read("user_features")
        assert "avg_amount_1d" in now.column_names and now.column("avg_amount_1d").null_count == 0
        old = fl.read("user_features", snapshot_id=first.snapshot_id)
        assert "amount_avg_1d" in old.column_names and old.num_rows == first.rows
