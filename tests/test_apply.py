"""apply: table layout, allowed evolutions (add, widen) and refused breaking changes."""

from __future__ import annotations

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
        assert result.action == "evolved" and [c.describe() for c in result.changes] == [
            "add column amount_max_1d double"
        ]
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
        assert [c.kind for c in result.changes] == ["widen"]
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
        with pytest.raises(SchemaError, match="cannot be evolved in place"):
            fl.apply(allow_breaking=True)
        assert fl.project.load_table("user_features").schema().find_field("user_id").field_type == LongType()


def test_dry_run_changes_nothing(project_dir: Path) -> None:
    with featurelake.open(project_dir) as fl:
        fl.apply(dry_run=True)
        assert fl.project.catalog.list_tables("features") == []
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
        assert planned.action == "planned" and not planned.changes
        (done,) = fl.apply()
        assert done.action == "evolved"
        (again,) = fl.apply(dry_run=True)
        assert again.action == "unchanged"
