"""The local engine's Arrow reader of Parquet sources reads what DuckDB's read_parquet reads, or steps aside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurelake.engines.local import read_parquet_window
from featurelake.lakehouse.window import Window

START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW = Window(START + timedelta(days=1), START + timedelta(days=3))


def part(day: int, rows: int = 5, *, tz: str | None = "UTC", extra: bool = False) -> pa.Table:
    ts = [START + timedelta(days=day, hours=h) for h in range(rows)]
    cols = {
        "user_id": pa.array(range(rows), pa.int64()),
        "ts": pa.array([t if tz else t.replace(tzinfo=None) for t in ts], pa.timestamp("us", tz=tz)),
        "amount": pa.array([1.5 * h if h % 3 else None for h in range(rows)]),
        "name": pa.array([f"u{h}" for h in range(rows)]),
    }
    if extra:
        cols["more"] = pa.array(range(rows))
    return pa.table(cols)


def files(tmp_path: Path, tables: list[pa.Table], subdir: str = "") -> list[str]:
    out = []
    for i, t in enumerate(tables):
        d = tmp_path / subdir if subdir else tmp_path
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, d / f"p{i}.parquet")
        out.append(str(d / f"p{i}.parquet"))
    return out


def duckdb_read(paths: list[str]) -> pa.Table:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con.read_parquet(paths).filter(WINDOW.sql_filter("ts")).to_arrow_table()


def test_reads_the_same_rows_and_types_as_duckdb(tmp_path: Path) -> None:
    paths = files(tmp_path, [part(d) for d in range(5)])
    ours = read_parquet_window(paths, "ts", WINDOW)
    assert ours is not None
    theirs = duckdb_read(paths)
    assert ours.schema.equals(theirs.schema)
    assert ours.sort_by([("ts", "ascending"), ("user_id", "ascending")]).equals(
        theirs.sort_by([("ts", "ascending"), ("user_id", "ascending")])
    )
    assert {(t - START).days for t in ours.column("ts").to_pylist()} == {1, 2}


@pytest.mark.parametrize("case", ["inside", "straddling", "null timestamp"])
def test_rows_the_statistics_place_in_the_window_are_read_like_duckdb(tmp_path: Path, case: str) -> None:
    """Files whose row groups lie inside the window are read unfiltered; one straddling it, or a null
    timestamp (no statistics prove it in the window), is filtered: the rows are DuckDB's either way."""
    tables = [part(1), part(2)]
    if case == "straddling":
        tables.append(part(2, rows=30))  # 2024-01-03 06:00 .. 2024-01-04 05:00: past the window's end
    elif case == "null timestamp":
        ts = pa.array([START + timedelta(days=2), None], pa.timestamp("us", tz="UTC"))
        tables.append(part(2, rows=2).set_column(1, "ts", ts))
    paths = files(tmp_path, tables)
    ours = read_parquet_window(paths, "ts", WINDOW)
    theirs = duckdb_read(paths)
    assert ours is not None and ours.num_rows == theirs.num_rows
    key = [("ts", "ascending"), ("user_id", "ascending")]
    assert ours.sort_by(key).equals(theirs.sort_by(key))
    if case != "inside":
        assert ours.num_rows < sum(t.num_rows for t in tables)


def test_a_rewritten_file_is_read_again_not_from_the_footer_cache(tmp_path: Path) -> None:
    (path,) = files(tmp_path, [part(1)])
    first = read_parquet_window([path], "ts", WINDOW)
    assert first is not None and first.num_rows == 5
    pq.write_table(part(2, rows=7), path)  # same path, new size and time
    again = read_parquet_window([path], "ts", WINDOW)
    assert again is not None and again.num_rows == 7


@pytest.mark.parametrize(
    ("tables", "subdir"),
    [
        ([part(1), part(2, extra=True)], ""),  # files disagree on the schema: DuckDB decides
        ([part(1, tz=None)], ""),  # a naive timestamp: DuckDB's casts apply
        ([part(1)], "day=2024-01-02"),  # hive-style directory: DuckDB adds the column
    ],
)
def test_steps_aside_where_duckdb_reads_differently(
    tmp_path: Path, tables: list[pa.Table], subdir: str
) -> None:
    assert read_parquet_window(files(tmp_path, tables, subdir), "ts", WINDOW) is None


def test_unknown_timestamp_column_steps_aside(tmp_path: Path) -> None:
    assert read_parquet_window(files(tmp_path, [part(1)]), "nope", WINDOW) is None


PASSTHROUGH_FEATURES = """
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id")
for name, query in [("plain", "select *  from SOURCE ;"), ("duck", "SELECT * FROM source WHERE true")]:
    globals()[name] = FeatureView(
        name=name, entity=user, source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
        query=query, timestamp_field="ts", fields={"amount": "double", "n": "long"},
    )
"""


def test_a_passthrough_view_skips_duckdb_and_writes_what_duckdb_would(tmp_path: Path) -> None:
    """``SELECT * FROM source`` takes the source's Arrow rows as they are (cast by conform: an int32 column
    into a long field); the same view through DuckDB (a WHERE true) publishes the same table."""
    from unittest import mock

    import featurelake
    from featurelake.engines import local
    from tests.helpers import make_project, transactions

    data = transactions(days=4)
    data = data.append_column("n", pa.array(range(data.num_rows), pa.int32()))
    root = make_project(tmp_path / "p", features=PASSTHROUGH_FEATURES, data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        views = {v: fl.project.view(v) for v in ("plain", "duck")}
        assert local.passthrough(views["plain"]) and not local.passthrough(views["duck"])
        engine = fl.project.engine
        assert isinstance(engine, local.LocalEngine)
        with mock.patch.object(engine, "_source", wraps=engine._source) as relations:
            fl.backfill("plain", START, START + timedelta(days=4))
            assert relations.call_count == 0  # no DuckDB relation computed the rows
            fl.backfill("duck", START, START + timedelta(days=4))
            assert relations.call_count > 0
        plain, duck_rows = fl.read("plain"), fl.read("duck")
    order = [("ts", "ascending"), ("user_id", "ascending"), ("n", "ascending")]
    assert plain.num_rows == data.num_rows and plain.schema.equals(duck_rows.schema)
    assert plain.sort_by(order).equals(duck_rows.sort_by(order))
