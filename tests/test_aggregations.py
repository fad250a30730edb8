"""Declarative window aggregations: definitions, the compiled SQL against a brute-force reference on DuckDB
and on Spark (hypothesis), and backfills of aggregation views end to end, errors included.

The reference reads the semantics straight from ``features/aggregations.py``: at each step ``t`` inside the
backfill window, an entity has a row when its longest window ``(t - W, t]`` holds a row or, for the closing
row, the previous step's did; each aggregation is computed over the entity's rows with
``t - window < ts <= t``. It sees every event; the compiled SQL only sees the rows a backfill reads
(``source_start``), so a wrong derived lookback fails here too.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featurelake
from featurelake import Aggregation, Entity, FeatureView, Source
from featurelake.engines.aggregate_sql import compile_aggregations
from featurelake.errors import ConfigError, DataError, SchemaError
from featurelake.features.aggregations import EPOCH, source_start
from tests.helpers import START, day, make_project, transactions
from tests.spark_support import engine_project

H = timedelta(hours=1)
D = timedelta(days=1)
T0 = datetime(2024, 3, 1, tzinfo=UTC)  # events span T0 .. T0 + 5 days
WINDOW = (T0 + 2 * D, T0 + 4 * D)  # the backfill window the tests compute
USER = Entity("user", join_key="user_id")
SRC = Source.parquet("data/*.parquet", timestamp_field="ts")


def agg_view(aggs: list[Aggregation], step: timedelta, **kwargs: Any) -> FeatureView:
    return FeatureView(name="v", entity=USER, source=SRC, aggregations=aggs, step=step, **kwargs)


# --- definitions ------------------------------------------------------------------------------------------


def test_default_names_and_inferred_fields() -> None:
    view = agg_view(
        [
            Aggregation("amount", "sum", window=7 * D),
            Aggregation("*", "count", window=D),
            Aggregation("amount", "mean", window=30 * D),
            Aggregation("merchant", "approx_count_distinct", window=12 * H),
            Aggregation("amount", "stddev", window=90 * timedelta(minutes=1), name="amount_sd"),
        ],
        step=D,
    )
    assert view.fields == {
        "amount_sum_7d": "double",
        "count_1d": "long",
        "amount_mean_30d": "double",
        "merchant_approx_count_distinct_12h": "long",
        "amount_sd": "double",
    }
    assert view.columns == ["user_id", "event_ts", *view.fields]
    assert view.query == ""


def test_fields_override_an_output_type() -> None:
    view = agg_view(
        [Aggregation("merchant", "last", window=D), Aggregation("amount", "max", window=D)],
        step=D,
        fields={"merchant_last_1d": "string"},
    )
    assert view.fields == {"merchant_last_1d": "string", "amount_max_1d": "double"}


def test_aggregation_is_exported_beside_entity() -> None:
    assert "Aggregation" in featurelake.__all__
    assert featurelake.Aggregation is Aggregation


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Aggregation("amount", "avg", window=D), "unknown function 'avg'; use one of sum, count"),
        (lambda: Aggregation("*", "sum", window=D), "'*' only counts rows"),
        (lambda: Aggregation("amount", "sum", window=timedelta(0)), "window must be a positive timedelta"),
        (lambda: Aggregation("amount", "sum", window=7), "window must be a positive timedelta"),  # type: ignore[arg-type]  # deliberately wrong type: must be refused
        (
            lambda: Aggregation("amount", "sum", window=timedelta(milliseconds=1500)),
            "whole number of seconds",
        ),
        (lambda: Aggregation("amount x", "sum", window=D), "is not a valid name"),
        (lambda: Aggregation("amount", "sum", window=D, name="7d"), "is not a valid name"),
    ],
)
def test_bad_aggregation_is_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": None}, "view 'v': aggregations need step="),
        ({"step": timedelta(0)}, "aggregations need step="),
        ({"step": timedelta(milliseconds=10)}, "aggregations need step="),
        (
            {"aggregations": [Aggregation("amount", "sum", D), Aggregation("amount", "sum", D)]},
            "two aggregations are both named 'amount_sum_1d'",
        ),
        ({"aggregations": ["amount"]}, "aggregations must be a list of Aggregation"),
        ({"fields": {"other": "double"}}, "fields declares other, which no aggregation produces"),
        ({"fields": {"amount_sum_1d": "nope"}}, "field 'amount_sum_1d': unknown type 'nope'"),
        ({"lookback": timedelta(days=-1)}, "lookback must be a timedelta >= 0"),
        ({"aggregations": [], "query": "", "step": None}, "view 'v' has no query"),
        ({"aggregations": [], "query": "SELECT 1", "fields": {"x": "long"}}, "step is only used with"),
    ],
)
def test_bad_aggregation_view_is_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"aggregations": [Aggregation("amount", "sum", window=D)], "step": D}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        FeatureView(name="v", entity=USER, source=SRC, **args)


def test_source_start_covers_the_longest_window_and_the_closing_step() -> None:
    view = agg_view([Aggregation("amount", "sum", 7 * D), Aggregation("amount", "max", 3 * H)], step=D)
    start = datetime(2024, 3, 10, tzinfo=UTC)
    assert source_start(view, start) == start - 8 * D
    with_lookback = agg_view([Aggregation("amount", "sum", 7 * D)], step=D, lookback=2 * D)
    assert source_start(with_lookback, start) == start - 10 * D
    # a step that does not divide a day: the read starts on a tile boundary, so no tile is cut
    weekly = agg_view([Aggregation("amount", "sum", 14 * D)], step=7 * D)
    got = source_start(weekly, start)
    assert got <= start - 21 * D and (got - EPOCH) % (7 * D) == timedelta(0)


# --- the compiled SQL against a brute-force reference -----------------------------------------------------

FUNCTIONS_ON = {
    "amount": ["sum", "count", "mean", "min", "max", "stddev", "last", "approx_count_distinct"],
    "merchant": ["count", "min", "max", "last", "approx_count_distinct"],
    "*": ["count"],
}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[FeatureView, pa.Table]:
    step = draw(st.sampled_from([H, 6 * H, D, 2 * D]))
    windows = st.sampled_from([H, 3 * H, 6 * H, D, 2 * D, 3 * D])
    specs = draw(
        st.lists(
            st.sampled_from(sorted((c, f) for c, fs in FUNCTIONS_ON.items() for f in fs)).flatmap(
                lambda cf: windows.map(lambda w: (cf[0], cf[1], w))
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda s: (s[0], s[1], s[2]),
        )
    )
    aggs = [Aggregation(c, f, window=w) for c, f, w in specs]
    strings = {a.output: "string" for a in aggs if a.column == "merchant" and a.function != "count"}
    strings = {k: v for k, v in strings.items() if "approx_count_distinct" not in k}
    view = agg_view(aggs, step=step, fields=strings)
    # Events on whole hours hit tile and step boundaries exactly; the others fall between.
    minute = st.one_of(st.integers(0, 5 * 24).map(lambda h: h * 60), st.integers(0, 5 * 24 * 60))
    amount = st.one_of(st.none(), st.integers(-200, 200).map(lambda q: q / 4))
    rows = draw(
        st.lists(
            st.tuples(st.integers(1, 3), minute, amount, st.sampled_from([None, "a", "b", "c", "d"])),
            max_size=60,
        )
    )
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([T0 + timedelta(minutes=r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r[2] for r in rows], pa.float64()),
            "merchant": pa.array([r[3] for r in rows], pa.string()),
        }
    )
    return view, table


def _value(agg: Aggregation, rows: list[dict[str, Any]]) -> Any:
    if agg.column == "*":
        return len(rows)
    present = [r for r in rows if r[agg.column] is not None]
    values = [r[agg.column] for r in present]
    fn = agg.function
    if fn == "count":
        return len(values)
    if fn == "approx_count_distinct":
        return len(set(values))
    if not values:
        return None
    if fn == "sum":
        return math.fsum(values)
    if fn == "mean":
        return math.fsum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "stddev":
        return statistics.stdev(values) if len(values) >= 2 else None
    assert fn == "last"
    return max(present, key=lambda r: (r["ts"], r[agg.column]))[agg.column]


def reference(view: FeatureView, events: pa.Table, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The view's rows for ``[start, end)`` from the documented definition, by brute force."""
    assert view.step is not None
    longest = max(a.window for a in view.aggregations)
    t = EPOCH + -(-(start - EPOCH) // view.step) * view.step  # the first step at or after start
    steps = []
    while t < end:
        steps.append(t)
        t += view.step
    by_user: dict[int, list[dict[str, Any]]] = {}
    for r in events.to_pylist():
        by_user.setdefault(r["user_id"], []).append(r)
    out = []
    for user, rows in by_user.items():
        for t in steps:

            def within(lo: datetime, hi: datetime, rows: list[dict[str, Any]] = rows) -> list[dict[str, Any]]:
                return [r for r in rows if lo < r["ts"] <= hi]

            holds = bool(within(t - longest, t))
            closing = not holds and bool(within(t - view.step - longest, t - view.step))
            if holds or closing:
                row = {"user_id": user, "event_ts": t}
                for a in view.aggregations:
                    row[a.output] = _value(a, within(t - a.window, t))
                out.append(row)
    return sorted(out, key=lambda r: (r["user_id"], r["event_ts"]))


def read_rows(events: pa.Table, view: FeatureView) -> pa.Table:
    """The source rows a backfill of WINDOW reads: ``[source_start, end)``."""
    lo, hi = source_start(view, WINDOW[0]), WINDOW[1]
    keep = [lo <= t < hi for t in events.column("ts").to_pylist()]
    return events.filter(pa.array(keep, pa.bool_()))


def assert_matches(got: pa.Table, want: list[dict[str, Any]], view: FeatureView) -> None:
    rows = sorted(got.to_pylist(), key=lambda r: (r["user_id"], r["event_ts"]))
    assert [(r["user_id"], r["event_ts"]) for r in rows] == [(r["user_id"], r["event_ts"]) for r in want]
    for g, w in zip(rows, want, strict=True):
        for name in view.fields:
            if isinstance(w[name], float):
                assert g[name] == pytest.approx(w[name], rel=1e-9, abs=1e-9), (name, g, w)
            else:
                assert g[name] == w[name], (name, g, w)


def run_duckdb(view: FeatureView, rows: pa.Table) -> pa.Table:
    from featurelake import duck

    with duck.cursor() as con:
        rel = con.from_arrow(rows)
        columns = dict(zip(rel.columns, map(str, rel.types), strict=True))
        sql = compile_aggregations(
            view, "prepared", columns, dialect="duckdb", start=WINDOW[0], end=WINDOW[1]
        )
        result = rel.query("prepared", sql)
        assert result is not None
        return result.to_arrow_table()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_duckdb_aggregations_match_the_brute_force_reference(scenario: tuple[FeatureView, pa.Table]) -> None:
    view, events = scenario
    got = run_duckdb(view, read_rows(events, view))
    assert_matches(got, reference(view, events, *WINDOW), view)


@pytest.mark.spark
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_spark_aggregations_match_the_brute_force_reference(
    spark: Any, scenario: tuple[FeatureView, pa.Table]
) -> None:
    from featurelake.engines.spark import arrow_batches, duckdb_types

    view, events = scenario
    rows = read_rows(events, view)
    df = spark.createDataFrame(
        rows.to_pylist(), schema="user_id long, ts timestamp, amount double, merchant string"
    )
    types = duckdb_types(df.schema)
    sql = compile_aggregations(
        view, "__agg_rows", {c: types[c] for c in df.columns}, dialect="spark", start=WINDOW[0], end=WINDOW[1]
    )
    df.createOrReplaceTempView("__agg_rows")
    batches = arrow_batches(spark.sql(sql))
    got = pa.Table.from_batches(batches) if batches else pa.table({"user_id": [], "event_ts": []})
    want = reference(view, events, *WINDOW)
    if not want:
        assert got.num_rows == 0
        return
    assert_matches(got, want, view)


def test_edges_pinned() -> None:
    """Rows exactly at t count, rows exactly at t - window do not; the closing row; ties in last."""
    view = agg_view(
        [
            Aggregation("amount", "sum", window=D),
            Aggregation("amount", "last", window=2 * D),
            Aggregation("*", "count", window=2 * D),
        ],
        step=D,
    )
    t = WINDOW[0]
    events = pa.table(
        {
            "user_id": pa.array([1, 1, 1, 2], pa.int64()),
            "ts": pa.array([t - D, t, t, t + D], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([100.0, 2.0, 3.0, 7.0]),
            "merchant": pa.array(["a", "b", "c", "d"]),
        }
    )
    got = sorted(run_duckdb(view, events).to_pylist(), key=lambda r: (r["user_id"], r["event_ts"]))
    assert got == [
        # (t - 1d, t]: the rows at t count, the one at t - 1d does not; last: tie at t -> the larger value
        {"user_id": 1, "event_ts": t, "amount_sum_1d": 5.0, "amount_last_2d": 3.0, "count_2d": 3},
        {"user_id": 1, "event_ts": t + D, "amount_sum_1d": None, "amount_last_2d": 3.0, "count_2d": 2},
        {"user_id": 2, "event_ts": t + D, "amount_sum_1d": 7.0, "amount_last_2d": 7.0, "count_2d": 1},
    ]
    # user 1's rows leave the 2-day window after t + 1d: its closing row is at t + 2d, outside WINDOW
    assert reference(view, events, *WINDOW) == got


# --- views with aggregations, end to end ------------------------------------------------------------------

AGG_FEATURES = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")

user_windows = FeatureView(
    name="user_windows",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    aggregations=[
        Aggregation("amount", "sum", window=timedelta(days=7)),
        Aggregation("amount", "mean", window=timedelta(days=2)),
        Aggregation("*", "count", window=timedelta(days=1)),
    ],
    step=timedelta(days=1),
    checks=[checks.between("count_1d", 0, 10_000)],
    ttl=timedelta(days=2),
)
"""


@pytest.mark.parametrize("engine", ["local", pytest.param("spark", marks=pytest.mark.spark)])
def test_backfill_of_an_aggregation_view_matches_the_reference(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    if engine == "spark":
        request.getfixturevalue("spark")
    data = transactions(days=10, users=15, rows_per_day=40)
    root = engine_project(tmp_path / "p", engine, features=AGG_FEATURES, data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        schema = fl.project.load_table("user_windows").schema()
        assert [f.name for f in schema.fields] == [
            "user_id",
            "event_ts",
            "amount_sum_7d",
            "amount_mean_2d",
            "count_1d",
        ]
        result = fl.backfill("user_windows", day(6), day(9))
        got = fl.read("user_windows")
        view = fl.project.view("user_windows")
    want = reference(view, data, START + 6 * D, START + 9 * D)
    assert result.rows == len(want) == got.num_rows
    assert_matches(got, want, view)


def test_a_query_prepares_the_rows_aggregations_read(tmp_path: Path) -> None:
    features = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

big_spend = FeatureView(
    name="big_spend",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, ts, amount * 2 AS doubled FROM source WHERE amount > 20",
    aggregations=[Aggregation("doubled", "sum", window=timedelta(days=3))],
    step=timedelta(days=1),
)
"""
    data = transactions(days=8, users=10, rows_per_day=30)
    root = make_project(tmp_path / "p", features=features, data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("big_spend", day(4), day(7))
        got = fl.read("big_spend")
        view = fl.project.view("big_spend")
    prepared = [
        {"user_id": r["user_id"], "ts": r["ts"], "doubled": r["amount"] * 2}
        for r in data.to_pylist()
        if r["amount"] is not None and r["amount"] > 20
    ]
    want = reference(view, pa.Table.from_pylist(prepared), START + 4 * D, START + 7 * D)
    assert_matches(got, want, view)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            'aggregations=[Aggregation("price", "sum", window=timedelta(days=1))]',
            "view 'v': aggregation 'price_sum_1d' \\(sum of price\\): the rows to aggregate \\(the source\\) "
            "have no column 'price'",
        ),
        (
            'aggregations=[Aggregation("note", "sum", window=timedelta(days=1))]',
            "aggregation 'note_sum_1d' \\(sum of note\\): note is VARCHAR, not a number",
        ),
        (
            'aggregations=[Aggregation("note", "last", window=timedelta(days=1))]',
            "note is VARCHAR but the field is declared double; declare the output's type",
        ),
        (
            'query="SELECT user_id, amount FROM source", '
            'aggregations=[Aggregation("amount", "sum", window=timedelta(days=1))]',
            "the rows to aggregate \\(the query's output\\) have no column 'ts'",
        ),
        (
            "query=\"SELECT user_id, strftime(ts, '%Y') AS ts, amount FROM source\", "
            'aggregations=[Aggregation("amount", "sum", window=timedelta(days=1))]',
            "ts of the rows to aggregate is VARCHAR, not a timestamp",
        ),
    ],
)
def test_aggregations_over_unusable_rows_are_refused_at_apply(
    tmp_path: Path, features: str, message: str
) -> None:
    data = transactions(days=2)
    data = data.append_column("note", pa.array(["x"] * data.num_rows))
    text = f"""
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

v = FeatureView(
    name="v",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    {features},
    step=timedelta(days=1),
)
"""
    with featurelake.open(make_project(tmp_path / "p", features=text, data=data)) as fl:
        with pytest.raises(SchemaError, match=message):
            fl.apply()
        assert not fl.project.catalog.table_exists("features.v")  # nothing was created


def test_last_of_a_text_column_declared_string(tmp_path: Path) -> None:
    data = transactions(days=4, users=5, rows_per_day=20)
    data = data.append_column("merchant", pa.array([f"m{i % 7}" for i in range(data.num_rows)]))
    text = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

v = FeatureView(
    name="v",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    aggregations=[Aggregation("merchant", "last", window=timedelta(days=2)),
                  Aggregation("merchant", "approx_count_distinct", window=timedelta(days=2))],
    step=timedelta(days=1),
    fields={"merchant_last_2d": "string"},
)
"""
    with featurelake.open(make_project(tmp_path / "p", features=text, data=data)) as fl:
        fl.apply()
        fl.backfill("v", day(2), day(4))
        got = fl.read("v")
        view = fl.project.view("v")
    assert got.schema.field("merchant_last_2d").type in (pa.string(), pa.large_string())
    assert_matches(got, reference(view, data, START + 2 * D, START + 4 * D), view)


def test_null_join_keys_are_refused_naming_the_view(tmp_path: Path) -> None:
    data = transactions(days=3, users=5, rows_per_day=10)
    keys = data.column("user_id").to_pylist()
    keys[3] = None
    data = data.set_column(0, "user_id", pa.array(keys, pa.int64()))
    text = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

v = FeatureView(
    name="v",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    aggregations=[Aggregation("amount", "sum", window=timedelta(days=1))],
    step=timedelta(days=1),
)
"""
    with featurelake.open(make_project(tmp_path / "p", features=text, data=data)) as fl:
        fl.apply()
        before = fl.history("v")
        with pytest.raises(DataError, match=r"view 'v': \d+ rows have a null user_id"):
            fl.backfill("v", day(0), day(3))
        assert [s.snapshot_id for s in fl.history("v")] == [s.snapshot_id for s in before]
