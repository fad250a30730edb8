"""Bad project files and sources no other test fed in: a featurelake.yaml that is not a mapping, a catalog URI
SQLAlchemy cannot use, a source without its timestamp column, a corrupt Parquet file among the source files, a
missing source table, a query DuckDB refuses and a join key of a float type.

Each is a featurelake error naming the file, view or column and the fix; main and the user's files stay as
they were.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import featurelake
from featurelake import duck
from featurelake.errors import ConfigError, SchemaError
from featurelake.lakehouse import wap
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions, write_source

VIEW = "user_features"
BASE_CONFIG = "project: test\nnamespace: features\n"


def says(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    return msg


def features_with(old: str, new: str) -> str:
    assert old in DEFAULT_FEATURES, old
    return DEFAULT_FEATURES.replace(old, new)


def refused_at_apply(root: Path, error: type[Exception]) -> BaseException:
    """``apply`` on ``root`` fails with ``error`` and creates no table; features.py is untouched."""
    written = (root / "features.py").read_bytes()
    with featurelake.open(root) as h:
        with pytest.raises(error) as ei:
            h.apply()
        assert not h.project.catalog.table_exists(f"features.{VIEW}")
    assert (root / "features.py").read_bytes() == written
    return ei.value


# --- featurelake.yaml ------------------------------------------------------------------------------------
def test_config_that_is_a_list_is_refused(tmp_path: Path) -> None:
    text = "- project: test\n- namespace: features\n"
    root = make_project(tmp_path / "p", config=text)
    with pytest.raises(ConfigError) as ei:
        featurelake.open(root)
    says(ei.value, "featurelake.yaml", "must hold a mapping of keys", "project, namespace")
    assert (root / "featurelake.yaml").read_text() == text


def test_unusable_catalog_uri_names_the_setting_and_the_forms(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", config=BASE_CONFIG + "catalog:\n  uri: nosuchdialect://host/db\n")
    with featurelake.open(root) as h, pytest.raises(ConfigError) as ei:
        h.apply()
    says(
        ei.value,
        "catalog.uri",
        "nosuchdialect://host/db",
        "is not usable",
        "sqlite:///",
        "postgresql+psycopg://",
    )


# --- sources -----------------------------------------------------------------------------------------------
def test_parquet_source_without_its_timestamp_column(tmp_path: Path) -> None:
    feats = features_with('timestamp_field="ts")', 'timestamp_field="when")')
    root = make_project(tmp_path / "p", features=feats)
    err = refused_at_apply(root, ConfigError)
    says(
        err,
        "view 'user_features'",
        "no timestamp field 'when'",
        "user_id, ts, amount",
        "set timestamp_field=",
    )


def _text_timestamps(data: pa.Table) -> pa.Table:
    ts = data.column("ts")
    return data.set_column(data.schema.get_field_index("ts"), "ts", pc.strftime(ts, "%Y-%m-%d %H:%M:%S"))


def test_parquet_source_whose_timestamp_column_holds_text(tmp_path: Path) -> None:
    # The window's filter would compare text with timestamps: refused by name before any query runs, at
    # apply and at a backfill over files rewritten since, as for a source on object storage.
    data = transactions()
    root = make_project(tmp_path / "p", data=_text_timestamps(data))
    says(
        refused_at_apply(root, ConfigError),
        "view 'user_features'",
        "source timestamp field 'ts' is VARCHAR",
        "not a timestamp or date",
        "write it as a timestamp in the source files",
    )
    # Applied over good files, backfilled once; then the files are replaced by text timestamps.
    source = write_source(root, data)
    with featurelake.open(root) as h:
        h.apply()
        h.backfill(VIEW, day(0), day(5))
        before = h.project.load_table(VIEW).current_snapshot()
        written = write_source(root, _text_timestamps(data)).read_bytes()
        with pytest.raises(ConfigError) as ei:
            h.backfill(VIEW, day(5), day(10))
        says(ei.value, "source timestamp field 'ts' is VARCHAR", "timestamp_field")
        after = h.project.load_table(VIEW).current_snapshot()
        assert before is not None and after is not None and after.snapshot_id == before.snapshot_id
    assert source.read_bytes() == written


def test_missing_source_table(tmp_path: Path) -> None:
    feats = features_with(
        'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
        'Source.table("raw.transactions", timestamp_field="ts")',
    )
    root = make_project(tmp_path / "p", features=feats)
    err = refused_at_apply(root, ConfigError)
    says(err, "view 'user_features'", "source table 'raw.transactions'", "cannot be loaded")


ROW_BY_ROW = """
events = FeatureView(
    name="events", entity=user, source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, ts AS event_ts, amount FROM source",
    fields={"amount": "double"},
)
"""


@pytest.mark.parametrize(
    ("view", "name", "batch_rows"),
    [
        (VIEW, "part-9.parquet", 0),  # not the first file: DuckDB meets it running the query
        (VIEW, "aaa.parquet", 0),  # the first file: DuckDB reads its footer to bind the source
        ("events", "zzz.parquet", 100),  # a row-by-row view streams its source in chunks of 100 rows
    ],
)
def test_a_file_that_is_not_parquet_among_the_source_files_is_named_and_changes_nothing(
    tmp_path: Path, view: str, name: str, batch_rows: int
) -> None:
    config = f"{BASE_CONFIG}backfill:\n  batch_days: 1\n  batch_min_rows: 0\n  batch_rows: {batch_rows}\n"
    root = make_project(tmp_path / "p", features=DEFAULT_FEATURES + ROW_BY_ROW, config=config)
    with featurelake.open(root) as h:
        h.apply()
        h.backfill(view, day(0), day(5), run_id="base")
        before = wap.main_snapshot_id(h.project.load_table(view)), h.read(view).num_rows
    junk = root / "data" / "transactions" / name
    junk.write_bytes(b"this is not parquet at all\n" * 10)
    with featurelake.open(root) as h:
        with pytest.raises(ConfigError) as ei:
            h.backfill(view, day(3), day(7), run_id="junk")
        says(
            ei.value,
            f"view {view!r}: source file {junk} cannot be read as Parquet",
            "No magic bytes",
            "replace or remove it, or narrow the Source.parquet glob in features.py",
        )
        tbl = h.project.load_table(view)
        assert wap.branch_name("junk") not in tbl.metadata.refs
        assert (wap.main_snapshot_id(tbl), h.read(view).num_rows) == before
    assert junk.read_bytes() == b"this is not parquet at all\n" * 10, "the user's file was modified"


# --- the query's output ------------------------------------------------------------------------------------
def test_query_duckdb_cannot_bind_names_the_view(tmp_path: Path) -> None:
    feats = features_with("sum(amount) AS amount_sum_1d", "sum(amount_typo) AS amount_sum_1d")
    root = make_project(tmp_path / "p", features=feats)
    err = refused_at_apply(root, SchemaError)
    says(err, "view 'user_features'", "the query failed in DuckDB", "amount_typo")


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("CREATE TABLE copy AS SELECT * FROM source", "it is not a SELECT"),
        ("SET threads = 1", "it is not a SELECT"),
        ("SELECT 1 AS user_id; SELECT 2", "it holds 2 statements"),
    ],
)
def test_a_query_that_is_not_one_select_is_refused_before_it_runs(
    tmp_path: Path, statement: str, problem: str
) -> None:
    old = DEFAULT_FEATURES[DEFAULT_FEATURES.index('query="""') : DEFAULT_FEATURES.index('""",') + 4]
    root = make_project(tmp_path / "p", features=DEFAULT_FEATURES.replace(old, f'query="{statement}",'))
    err = refused_at_apply(root, SchemaError)
    says(err, f"view 'user_features': the query must be one SELECT over source: {problem}")
    with duck.cursor() as con:  # and it did not run: no table in the process's DuckDB
        tables = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'copy'").fetchall()
    assert tables == [(0,)]


def test_float_join_key_says_to_cast_it(tmp_path: Path) -> None:
    feats = features_with(
        "SELECT user_id, date_trunc", "SELECT CAST(user_id AS DOUBLE) AS user_id, date_trunc"
    )
    root = make_project(tmp_path / "p", features=feats)
    err = refused_at_apply(root, SchemaError)
    says(err, "view 'user_features'", "join key user_id is double", "cast it in the query", "dtype=")
