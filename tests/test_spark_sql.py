"""DuckDB -> Spark SQL: every construct the SDK documents gives the same rows on both engines.

Each query runs in DuckDB and, translated by ``featurelake.engines.spark_sql``, in Spark, over the same
Parquet file; the results must match row for row. Translation errors and PyIceberg row filters are
checked without Spark.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, IsNull, Not, Or, StartsWith
from pyiceberg.schema import Schema
from pyiceberg.types import DateType, DecimalType, LongType, NestedField, StringType, TimestamptzType

from featurelake.engines.spark_sql import (
    SqlTranslationError,
    iceberg_filter_sql,
    to_spark_expression,
    to_spark_sql,
)
from featurelake.lakehouse.window import Window

START = datetime(2024, 1, 27, tzinfo=UTC)  # spans a month end, a week start and a daylight-saving-free month


def source_table() -> pa.Table:
    rng = np.random.default_rng(7)
    n = 240
    secs = np.sort(rng.integers(0, 9 * 86_400, n))
    ts = [START + timedelta(seconds=int(s)) for s in secs]
    amount = np.round(rng.lognormal(2.0, 0.7, n), 2)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(1, 6, n), pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "n": pa.array([t.replace(tzinfo=None) - timedelta(hours=5) for t in ts], pa.timestamp("us")),
            "amount": pa.array(amount, pa.float64(), mask=rng.random(n) < 0.1),
            "qty": pa.array(rng.integers(-3, 20, n), pa.int32()),
            "cat": pa.array(rng.choice(["a", "b", "c"], n)),
        }
    )


# (id, DuckDB query over `source`, columns whose comma-joined parts are order-free)
QUERIES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "sdk-example",
        """SELECT user_id, date_trunc('day', ts) AS event_ts,
                  count(*) AS txn_count_1d, sum(amount) AS amount_sum_1d, avg(amount) AS amount_avg_1d
           FROM source GROUP BY ALL""",
        (),
    ),
    (
        "date-trunc-units",
        """SELECT date_trunc('hour', ts) h, date_trunc('week', ts) w, date_trunc('month', ts) m,
                  date_trunc('year', ts) y, date_trunc('minute', ts) mi, date_trunc('day', n) naive_day
           FROM source""",
        (),
    ),
    (
        "aggregates",
        """SELECT cat, count(*) c, count(amount) ca, count(DISTINCT user_id) du, min(amount) lo, max(amount) hi,
                  sum(qty) sq, avg(qty) aq, stddev_samp(amount) sd, var_pop(amount) vp, median(amount) med,
                  quantile_cont(amount, 0.9) p90, quantile_disc(amount, 0.5) pd, count_if(amount > 10) big,
                  count(*) FILTER (WHERE qty < 0) neg, sum(amount) FILTER (WHERE cat = 'a') fa,
                  bool_or(qty > 18) any18, bool_and(qty > -10) all_m10, arg_max(user_id, ts) last_user,
                  min(ts) first_ts, max(n) last_naive
           FROM source GROUP BY cat""",
        (),
    ),
    (
        "group-by-all-having-order",
        """SELECT user_id, cat, sum(qty) AS total FROM source GROUP BY ALL HAVING sum(qty) > 30
           ORDER BY total DESC, user_id, cat""",
        (),
    ),
    (
        "casts",
        """SELECT CAST(amount AS DECIMAL(12, 2)) d, amount::INTEGER i, qty::BIGINT b, CAST(qty AS DOUBLE) f,
                  CAST(user_id AS VARCHAR) s, ts::DATE dt, CAST(n AS TIMESTAMPTZ) aware,
                  CAST(ts AS TIMESTAMP) naive, CAST('12' AS INTEGER) + qty lit,
                  CAST(date_trunc('day', ts) AS TIMESTAMPTZ) AS event_ts
           FROM source""",
        (),
    ),
    (
        "intervals",
        """SELECT ts - INTERVAL 7 DAY a, ts + INTERVAL '36 hours' b, date_trunc('day', ts) + INTERVAL 1 DAY c,
                  n - INTERVAL '90 minutes' d, ts - INTERVAL '2 weeks' e
           FROM source WHERE ts >= TIMESTAMPTZ '2024-01-30 00:00:00+00' AND ts < TIMESTAMP '2024-02-02 06:00:00'""",
        (),
    ),
    (
        "time-zones",
        """SELECT timezone('UTC', n) utc, timezone('America/New_York', n) ny, timezone('Asia/Tokyo', ts) tokyo_wall
           FROM source""",
        (),
    ),
    (
        "time-bucket",
        """SELECT time_bucket(INTERVAL '6 hours', ts) b6h, time_bucket(INTERVAL '7 days', ts) b7d,
                  time_bucket(INTERVAL 1 DAY, n) b1d_naive, time_bucket(INTERVAL '15 minutes', ts) b15
           FROM source""",
        (),
    ),
    (
        "date-arithmetic",
        """SELECT epoch(ts) e, date_diff('day', TIMESTAMPTZ '2024-01-27 23:00:00+00', ts) dd,
                  date_diff('hour', TIMESTAMPTZ '2024-01-27 23:30:00+00', ts) dh,
                  date_diff('month', TIMESTAMPTZ '2023-12-31 00:00:00+00', ts) dm,
                  extract(hour FROM ts) hr, extract(day FROM ts) d, extract(month FROM ts) mo,
                  extract(year FROM ts) yr, dayofweek(ts) dow, extract(dow FROM ts) dow2, hour(ts) h2,
                  isodow(ts) iso, extract(isodow FROM ts) iso2, date_part('dow', ts) dow3, weekday(ts) dow4,
                  extract(second FROM ts) sec, extract(epoch FROM ts) ep, extract(week FROM ts) wk
           FROM source""",
        (),
    ),
    (
        "expressions",
        """SELECT CASE WHEN amount > 10 THEN 'big' WHEN amount IS NULL THEN 'none' ELSE 'small' END AS size,
                  coalesce(amount, 0) AS filled, qty // 4 AS q4, qty % 4 AS m4, qty / 4 AS d4,
                  round(amount, 1) AS r1, round(amount) AS r0, round(CAST(amount AS DECIMAL(10, 3)), 1) AS rd,
                  CAST(amount * 7 AS BIGINT) AS ib, CAST(CAST(amount AS DECIMAL(8, 2)) AS INTEGER) AS id,
                  CAST(qty > 5 AS INTEGER) AS flag, abs(qty) AS a, greatest(qty, 0) AS g, least(qty, 5) AS l,
                  amount IS NOT NULL AND qty BETWEEN 0 AND 10 AS ok, nullif(qty, 0) AS nz,
                  lower(cat) || '-' || upper(cat) AS tag, length(cat) AS len, cat LIKE 'a%' AS starts_a,
                  cat IN ('a', 'b') AS ab, concat(cat, CAST(user_id AS VARCHAR)) AS cu
           FROM source""",
        (),
    ),
    (
        "window-functions",
        """SELECT user_id, ts,
                  avg(amount) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) a3,
                  sum(qty) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND CURRENT ROW) s1d,
                  row_number() OVER (PARTITION BY user_id ORDER BY ts) rn,
                  lag(qty) OVER (PARTITION BY user_id ORDER BY ts) prev,
                  count(*) OVER (PARTITION BY cat) per_cat
           FROM source""",
        (),
    ),
    (
        "qualify-latest",
        """SELECT user_id, ts AS event_ts, amount FROM source
           QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY ts DESC) = 1""",
        (),
    ),
    (
        "cte-subquery-join",
        """WITH daily AS (
               SELECT user_id, date_trunc('day', ts) AS day, sum(qty) AS q FROM source GROUP BY ALL
           ), totals AS (SELECT user_id, sum(q) AS total FROM daily GROUP BY user_id)
           SELECT d.user_id, d.day, d.q, t.total, d.q / t.total AS share
           FROM daily d JOIN totals t ON d.user_id = t.user_id
           WHERE d.q > (SELECT avg(q) FROM daily)""",
        (),
    ),
    (
        "string-agg",
        "SELECT user_id, string_agg(DISTINCT cat, ',') AS cats, count(*) AS c FROM source GROUP BY user_id",
        ("cats",),
    ),
]


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sql") / "source.parquet"
    pq.write_table(source_table(), path)
    return path


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def _rows(table: pa.Table, unordered: tuple[str, ...]) -> list[tuple[Any, ...]]:
    out = []
    for row in table.to_pylist():
        for col in unordered:
            row[col] = ",".join(sorted(row[col].split(","))) if row[col] is not None else None
        out.append(tuple(_normalise(row[c]) for c in table.column_names))
    return out


@pytest.mark.spark
@pytest.mark.parametrize(("qid", "query", "unordered"), QUERIES, ids=[q[0] for q in QUERIES])
def test_same_rows_on_duckdb_and_spark(
    spark: Any, parquet: Path, qid: str, query: str, unordered: tuple[str, ...]
) -> None:
    from featurelake.engines.spark import arrow_batches, duckdb_types

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.read_parquet(str(parquet)).create_view("source")
    want_tbl = con.sql(query).to_arrow_table()
    con.close()

    session = spark.newSession()
    src = session.read.parquet(str(parquet))
    src.createOrReplaceTempView("source")
    got_df = session.sql(to_spark_sql(query, source_types=duckdb_types(src.schema)))
    got_tbl = pa.Table.from_batches(arrow_batches(got_df))
    assert got_tbl.column_names == want_tbl.column_names
    # Same kind of value in every column: timezone-aware stays aware, naive stays naive.
    for name in want_tbl.column_names:
        w, g = want_tbl.schema.field(name).type, got_tbl.schema.field(name).type
        if pa.types.is_timestamp(w):
            assert pa.types.is_timestamp(g) and (w.tz is None) == (g.tz is None), (name, w, g)
    got, want = _rows(got_tbl, unordered), _rows(want_tbl, unordered)
    if qid != "group-by-all-having-order":  # the only query whose ORDER BY decides the row order
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert len(got) == len(want) > 0
    assert got == want


def test_group_by_all_and_quoting_survive_translation() -> None:
    sql = to_spark_sql(
        "SELECT \"user_id\", date_trunc('day', ts) AS event_ts, count(*) AS n FROM source GROUP BY ALL"
    )
    assert "GROUP BY ALL" in sql and "`user_id`" in sql and "DATE_TRUNC('DAY', ts)" in sql


def test_naive_columns_keep_naive_semantics() -> None:
    types = {"n": "TIMESTAMP", "ts": "TIMESTAMPTZ"}
    assert "TIMESTAMP_NTZ" in to_spark_sql("SELECT date_trunc('day', n) FROM source", source_types=types)
    assert "TIMESTAMP_NTZ" not in to_spark_sql("SELECT date_trunc('day', ts) FROM source", source_types=types)


@pytest.mark.spark
def test_round_of_a_double_rounds_its_binary_value_like_duckdb(spark: Any, tmp_path: Path) -> None:
    from featurelake.engines.spark import arrow_batches

    """Spark's ROUND rounds a double's decimal string (1.005 -> 1.01); DuckDB its binary value (-> 1.0)."""
    values = [1.005, 0.285, 2.675, 0.145, -1.005, -2.675, 2.5, -2.5, 0.125, 2.15, 1234.5678, 7.0, 1e300]
    query = "SELECT x, round(x, 2) AS r2, round(x, -2) AS rm2, round(x) AS r0 FROM source"
    table = pa.table({"x": pa.array(values, pa.float64())})
    con = duckdb.connect()
    con.register("source", table)
    want = sorted(con.sql(query).fetchall())
    con.close()
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    session = spark.newSession()
    session.read.parquet(str(path)).createOrReplaceTempView("source")
    got_df = session.sql(to_spark_sql(query, source_types={"x": "DOUBLE"}))
    got = sorted(tuple(r.values()) for r in pa.Table.from_batches(arrow_batches(got_df)).to_pylist())
    assert got == want


def test_check_aggregates_translate() -> None:
    assert to_spark_expression('count(DISTINCT row("a", "b"))') == "COUNT(DISTINCT STRUCT(`a`, `b`))"
    assert to_spark_expression('count(*) FILTER (WHERE "x" < 0 OR "x" > 1)') == (
        "COUNT(*) FILTER(WHERE `x` < 0 OR `x` > 1)"
    )
    assert "ISNAN(`x`)" in to_spark_expression('min("x") FILTER (WHERE isfinite("x"))')


@pytest.mark.parametrize(
    ("sql", "needles"),
    [
        ("SELECT 1; SELECT 2", ["exactly one SQL statement", "2"]),
        ("SELECT time_bucket(INTERVAL '1 month', ts) FROM source", ["time_bucket", "month", "date_trunc"]),
        ("SELECT time_bucket(w, ts) FROM source", ["time_bucket", "literal INTERVAL"]),
        ("SELECT date_diff('week', a, b) FROM source", ["date_diff", "week", "day"]),
        ("SELECT FROM WHERE (", ["not valid DuckDB SQL"]),
    ],
    ids=["two-statements", "month-bucket", "non-literal-bucket", "week-diff", "garbage"],
)
def test_untranslatable_sql_says_what_and_how(sql: str, needles: list[str]) -> None:
    with pytest.raises(SqlTranslationError) as info:
        to_spark_sql(sql)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


SCHEMA = Schema(
    NestedField(1, "user_id", LongType(), required=True),
    NestedField(2, "event_ts", TimestamptzType(), required=True),
    NestedField(3, "name", StringType()),
    NestedField(4, "d", DateType()),
    NestedField(5, "price", DecimalType(10, 2)),
)


def test_iceberg_filters_become_spark_predicates() -> None:
    window = Window.parse("2024-01-01", "2024-01-03").iceberg_filter("event_ts")
    assert iceberg_filter_sql(window, SCHEMA) == (
        "(`event_ts` >= TIMESTAMP_MICROS(1704067200000000) AND `event_ts` < TIMESTAMP_MICROS(1704240000000000))"
    )
    expr = Or(In("user_id", {3, 1, 2}), And(Not(IsNull("name")), EqualTo("name", "o'k")))  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
    assert (
        iceberg_filter_sql(expr, SCHEMA)
        == "(`user_id` IN (1, 2, 3) OR ((NOT `name` IS NULL) AND `name` = 'o\\'k'))"
    )
    assert iceberg_filter_sql(And(EqualTo("d", "2024-01-02"), StartsWith("name", "ab")), SCHEMA) == (  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
        "(`d` = DATE_FROM_UNIX_DATE(19724) AND startswith(`name`, 'ab'))"
    )
    assert iceberg_filter_sql(GreaterThanOrEqual("price", "1.50"), SCHEMA) == (  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
        "`price` >= CAST('1.50' AS DECIMAL(10, 2))"
    )


def test_iceberg_filter_on_unknown_column_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        iceberg_filter_sql(EqualTo("nope", 1), SCHEMA)  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
