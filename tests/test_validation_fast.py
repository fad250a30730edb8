"""The Arrow fast path of the audit (validation.fast) answers every aggregate exactly as DuckDB does."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurelake.validation.core import Agg
from featurelake.validation.fast import ArrowAggregates, count_not_in, distinct_rows, reduce_column
from featurelake.validation.stats import sample_positions


def duck(frame: pa.Table, exprs: list[str]) -> list[Any]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("frame", frame)
        row = con.execute(f"SELECT {', '.join(exprs)} FROM frame").fetchone()
        assert row is not None
        return list(row)
    finally:
        con.close()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


def aggregates(columns: list[str]) -> list[str]:
    out: list[str] = [Agg("count(*)", "count_all")]
    for c in columns:
        out += [Agg.of(op, c) for op in ("count", "min", "max", "sum")]
    return out


class Recorder:
    """The SQL fallback, recording what it was asked."""

    def __init__(self, frame: pa.Table) -> None:
        self.frame, self.asked = frame, []  # type: ignore[var-annotated]

    def __call__(self, exprs: list[str]) -> list[Any]:
        self.asked.extend(exprs)
        return duck(self.frame, exprs) if exprs else []


def check_against_duckdb(frame: pa.Table, exprs: list[str]) -> Recorder:
    sql = Recorder(frame)
    got = ArrowAggregates(frame, sql)(exprs)
    want = duck(frame, exprs)
    for e, g, w in zip(exprs, got, want, strict=True):
        assert same(g, w), f"{e}: fast {g!r} ({type(g).__name__}) != DuckDB {w!r} ({type(w).__name__})"
    return sql


def chunked(values: list[Any], type_: pa.DataType, cut: int) -> pa.ChunkedArray:
    arr = pa.array(values, type_)
    if 0 < cut < len(arr):
        return pa.chunked_array([arr.slice(0, cut), arr.slice(cut)], type_)
    return pa.chunked_array([arr], type_)


FLOATS = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.0, -0.0]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(FLOATS, max_size=40), st.integers(0, 40))
def test_float_reductions_match_duckdb(values: list[float | None], cut: int) -> None:
    frame = pa.table({"x": chunked(values, pa.float64(), cut)})
    check_against_duckdb(frame, aggregates(["x"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), max_size=40), st.integers(0, 40))
def test_integer_reductions_match_duckdb(values: list[int | None], cut: int) -> None:
    frame = pa.table(
        {
            "i64": chunked(values, pa.int64(), cut),
            "i32": chunked([None if v is None else v % 2**20 for v in values], pa.int32(), cut),
        }
    )
    check_against_duckdb(frame, aggregates(["i64", "i32"]))


def test_null_slots_holding_the_extremes_do_not_leak() -> None:
    # pa.array(mask=...) keeps the masked values in the buffer: here the buffer's extremes are all nulls.
    values = np.array([5.0, -1e300, 7.0, 1e300, 6.0, float("nan")])
    frame = pa.table({"x": pa.array(values, mask=np.array([False, True, False, True, False, True]))})
    sql = check_against_duckdb(frame, aggregates(["x"]))
    assert sql.asked == []  # answered from the buffers despite the garbage
    assert ArrowAggregates(frame, sql)([Agg.of("min", "x"), Agg.of("max", "x")]) == [5.0, 7.0]


def test_integer_null_slots_do_not_leak_into_sums() -> None:
    values = np.array([3, 2**62, -4, 2**62, 9], dtype=np.int64)
    frame = pa.table({"i": pa.array(values, mask=np.array([False, True, False, True, False]))})
    sql = check_against_duckdb(frame, aggregates(["i"]))
    assert sql.asked == []


def test_nan_and_unsupported_types_go_to_sql() -> None:
    frame = pa.table(
        {
            "f": pa.array([1.0, float("nan"), 2.0]),
            "s": pa.array(["b", "a", None]),
            "d": pa.array([1, 2, 3], pa.decimal128(10, 2)),
            "b": pa.array([True, False, None]),
        }
    )
    exprs: list[str] = [
        Agg.of("min", "f"),
        Agg.of("max", "f"),
        Agg.of("min", "s"),
        Agg.of("sum", "d"),
        Agg.of("max", "b"),
    ]
    sql = check_against_duckdb(frame, exprs + [Agg.of("count", c) for c in frame.column_names])
    assert sorted(sql.asked) == sorted(exprs)  # counts never need SQL


def test_all_null_and_empty_columns() -> None:
    frame = pa.table(
        {"x": pa.array([None, None], pa.float64()), "t": pa.array([None, None], pa.timestamp("us", tz="UTC"))}
    )
    check_against_duckdb(frame, [*aggregates(["x"]), Agg.of("max", "t"), Agg.of("min", "t")])
    empty = frame.slice(0, 0)
    check_against_duckdb(empty, [*aggregates(["x"]), Agg.of("max", "t")])


def test_timestamps_come_back_as_duckdb_datetimes() -> None:
    base = datetime(2024, 3, 1, 12, tzinfo=UTC)
    ts = [base + timedelta(minutes=i) for i in (5, 1, 9)]
    frame = pa.table(
        {
            "tz": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "naive": pa.array([t.replace(tzinfo=None) for t in ts], pa.timestamp("us")),
        }
    )
    check_against_duckdb(frame, [Agg.of(op, c) for c in ("tz", "naive") for op in ("min", "max")])
    assert reduce_column(frame.column("tz"), {"sum"}) is None  # DuckDB has no sum of timestamps


def test_integer_sum_that_could_overflow_goes_to_sql() -> None:
    big = 2**62
    frame = pa.table({"i": pa.array([big, big, big], pa.int64())})
    sql = check_against_duckdb(frame, [Agg.of("sum", "i")])
    assert sql.asked == [Agg.of("sum", "i")]
    assert duck(frame, ['sum("i")']) == [3 * big]


@pytest.mark.parametrize(
    ("values", "allowed", "outside"),
    [
        ([1, 2, 3, None, 2], (1, 2, 3), 0),  # every integer between min and max is allowed: no lookup
        ([1, 2, 9, None, 7], (1, 2, 3), 2),
        ([0, 5, 10], tuple(range(0, 11, 5)), 0),  # a gappy set needs the lookup
        ([0, 4, 10], tuple(range(0, 11, 5)), 1),
    ],
)
def test_count_not_in_integers(values: list[int | None], allowed: tuple[int, ...], outside: int) -> None:
    assert count_not_in(pa.chunked_array([pa.array(values, pa.int64())]), allowed) == outside


def test_count_not_in_strings_and_floats_match_sql() -> None:
    frame = pa.table(
        {"s": pa.array(["a", "b", None, "z", "a"]), "f": pa.array([1.0, 2.5, float("nan"), None, 3.0])}
    )
    for col, allowed in (("s", ("a", "b")), ("f", (1, 2.5))):
        lits = ", ".join(repr(v) for v in allowed)
        expr = Agg(
            f'count(*) FILTER (WHERE "{col}" IS NOT NULL AND "{col}" NOT IN ({lits}))',
            "count_not_in",
            col,
            allowed,
        )
        sql = check_against_duckdb(frame, [expr])
        assert sql.asked == []


def test_count_not_in_with_a_type_it_cannot_cast_goes_to_sql() -> None:
    assert count_not_in(pa.chunked_array([pa.array([1, 2])]), ("x",)) is None


def test_distinct_rows_proven_by_order_either_way() -> None:
    users = pa.array([1, 2, 3, 1, 2, 3], pa.int64())
    days = pa.array([0, 0, 0, 1, 1, 1], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    frame = pa.table({"user": users, "ts": days})
    assert distinct_rows(frame, ("user", "ts")) == 6  # sorted by (ts, user): the reversed key order
    assert distinct_rows(frame.take([0, 3, 1, 4, 2, 5]), ("user", "ts")) == 6  # sorted by (user, ts)


def test_distinct_rows_not_proven_falls_back_to_the_exact_count() -> None:
    frame = pa.table({"user": pa.array([3, 1, 2, 1], pa.int64()), "ts": pa.array([0, 0, 0, 0], pa.int64())})
    assert distinct_rows(frame, ("user", "ts")) is None  # unsorted: cannot tell
    expr = Agg('count(DISTINCT hash("user", "ts"))', "distinct_rows", None, "user", "ts")
    sql = Recorder(frame)
    assert ArrowAggregates(frame, sql)([expr]) == [3]  # the duplicate (1, 0) is found by DuckDB
    assert sql.asked == [expr]
    with_null = pa.table({"user": pa.array([1, None], pa.int64()), "ts": pa.array([0, 1], pa.int64())})
    assert distinct_rows(with_null, ("user", "ts")) is None


def test_plain_sql_expressions_still_run() -> None:
    frame = pa.table({"a": [1, 2, 3], "b": [3, 2, 1]})
    check_against_duckdb(frame, ["count(*) FILTER (WHERE a > b)", Agg.of("max", "a"), "count(*)"])


@pytest.mark.parametrize(("rows", "n"), [(1_000, 999), (100_000, 20_000), (20_033, 1_000), (50, 10)])
def test_sample_positions_are_distinct_sorted_and_spread(rows: int, n: int) -> None:
    idx = sample_positions(rows, n, seed=7)
    assert idx.size <= n and idx.size >= n - 32
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < rows
    # Every tenth of the rows holds about a tenth of the sample (give or take one run of rows).
    share = np.bincount(idx * 10 // rows, minlength=10) / idx.size
    assert np.all(np.abs(share - 0.1) <= min(32, n) / idx.size + 0.01)


def test_sample_positions_give_every_row_the_same_chance() -> None:
    rows, n = 1_000, 96  # strata of ~333 rows, runs of 32
    hits = np.zeros(rows)
    for seed in range(3_000):
        hits[sample_positions(rows, n, seed)] += 1
    expected = 3_000 * n / rows
    assert np.abs(hits / expected - 1).max() < 0.3  # no row (not even a stratum edge) is favoured


SQL_FRAME = pa.table(
    {
        "a": pa.array([1, 2, None, 4, -5, 2**40], pa.int64()),
        "b": pa.array([1.5, None, 3.0, -4.25, 0.0, 7.0]),
        "s": pa.array(["x", "y", None, "x", "z", "y"]),
        "flag": pa.array([True, False, None, True, True, False]),
        "nan": pa.array([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0]),
        "ts": pa.array([0, 1, 2, 3, 4, 5], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    }
)


@pytest.mark.parametrize(
    ("expr", "arrow"),
    [
        ("a <= b + 1000", True),
        ("b IS NULL OR b > -1000", True),
        ("NOT (a = 2 AND b <> 1.5)", True),
        ("a BETWEEN -5 AND 3", True),
        ("a * 2 - b >= -a", True),
        ("s = 'x' OR s IS NOT NULL", True),
        ("flag", True),
        ("flag AND a > 0", True),
        ("s < 'y'", True),
        ("nan < 10", False),  # NaN: SQL orders it above every number, IEEE does not
        ("a / 2 > 0", False),  # division: DuckDB divides integers as doubles
        ("abs(a) < 100", False),  # functions
        ("ts > TIMESTAMPTZ '1970-01-01'", False),
        ("a * 9223372036854775807 > 0", False),  # overflow: DuckDB raises, Arrow's checked op too
    ],
)
def test_sql_predicates_match_duckdb(expr: str, arrow: bool) -> None:
    from featurelake.validation.sql_arrow import count_false

    got = count_false(SQL_FRAME, expr)
    assert (got is not None) == arrow
    if got is not None:
        assert [got] == duck(SQL_FRAME, [f"count(*) FILTER (WHERE NOT ({expr}))"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), min_size=1, max_size=30),
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=30),
    st.sampled_from(["x < y", "x + 3 >= y", "NOT (x <> 2 OR y IS NULL)", "x BETWEEN y AND 10", "-x > y * 2"]),
)
def test_sql_predicates_match_duckdb_on_random_data(
    xs: list[int | None], ys: list[float | None], expr: str
) -> None:
    from featurelake.validation.sql_arrow import count_false

    n = min(len(xs), len(ys))
    frame = pa.table({"x": pa.array(xs[:n], pa.int64()), "y": pa.array(ys[:n], pa.float64())})
    assert [count_false(frame, expr)] == duck(frame, [f"count(*) FILTER (WHERE NOT ({expr}))"])


def test_distinct_rows_checks_the_seams_between_batches() -> None:
    def batches(*parts: list[tuple[int, int]]) -> pa.Table:
        return pa.Table.from_batches(
            [
                pa.record_batch(
                    {
                        "user": pa.array([u for u, _ in p], pa.int64()),
                        "ts": pa.array([t for _, t in p], pa.int64()),
                    }
                )
                for p in parts
            ]
        )

    assert distinct_rows(batches([(1, 0), (2, 0)], [(3, 0), (1, 1)]), ("user", "ts")) == 4
    assert (
        distinct_rows(batches([(1, 0), (2, 0)], [(2, 0), (3, 0)]), ("user", "ts")) is None
    )  # repeated at the seam
    assert (
        distinct_rows(batches([(1, 0), (3, 0)], [(2, 0), (4, 0)]), ("user", "ts")) is None
    )  # unordered seam


def _audit_in_child(conn: object) -> None:
    from featurelake.validation.audit import evaluate
    from featurelake.validation.checks import between, row_count

    frame = pa.table({"x": pa.array([1.0, 2.0, None])})
    rows, results = evaluate(frame, [row_count(1), between("x", 0, 3)])
    conn.send((rows, [r.passed for r in results]))  # type: ignore[attr-defined]


def test_an_audit_in_a_forked_child_gets_its_own_threads() -> None:
    import multiprocessing

    from featurelake.validation.audit import evaluate
    from featurelake.validation.checks import between

    # The parent's pools exist (and have threads) before the fork, as in a prefork worker.
    evaluate(pa.table({"x": pa.array([1.0, 2.0])}), [between("x", 0, 3)])
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_audit_in_child, args=(child,))
    proc.start()
    # Liveness, not speed: a child reusing the parent's (threadless) pool would wait forever.
    finished = parent.poll(120)
    if not finished:
        proc.kill()
    assert finished, "the audit in the forked child never finished"
    assert parent.recv() == (3, [True, True])
    proc.join(30)
    assert proc.exitcode == 0


def test_min_max_read_past_nulls_only_when_no_null_slot_could_be_an_extreme() -> None:
    # Arrow keeps whatever a null slot's value buffer holds: build chunks whose null slots hold values
    # beyond, at, and inside the valid extremes, and at an offset (a slice); DuckDB's answer either way.
    values = np.array([5.0, -7.0, 3.0, 100.0, 2.0, -50.0, 4.0, 1.0, 0.5, 6.0, np.nan, 2.5])
    for nulls in ([3, 5], [1], [3, 10], [0, 9], [2, 4, 6]):
        mask = np.zeros(values.size, dtype=bool)
        mask[nulls] = True
        chunk = pa.array(values, pa.float64(), mask=mask)
        for frame in (pa.table({"x": chunk}), pa.table({"x": chunk}).slice(1, 10)):
            if not np.isnan(values[[i for i in range(values.size) if not mask[i]]]).any():
                check_against_duckdb(frame, [Agg.of("min", "x"), Agg.of("max", "x")])
            check_against_duckdb(frame, [Agg.of("min", "x")])
    from featurelake.validation.fast import _extremes_past_nulls

    inside = pa.array(values[:10], pa.float64(), mask=np.arange(10) == 2)  # null slot holds 3.0
    assert _extremes_past_nulls(inside, {"min", "max"}) == (-50.0, 100.0, None)
    beyond = pa.array(values[:10], pa.float64(), mask=np.arange(10) == 3)  # null slot holds the max
    assert _extremes_past_nulls(beyond, {"min", "max"}) is None
    assert _extremes_past_nulls(beyond, {"min"}) == (-50.0, None, None)
    assert reduce_column(pa.chunked_array([beyond]), {"min", "max"}) == {"min": -50.0, "max": 6.0}
    ints = pa.array([9, 1, -3, 4, 1000, 2], pa.int64(), mask=np.array([0, 0, 0, 0, 1, 0], dtype=bool))
    check_against_duckdb(pa.table({"i": ints}), [Agg.of("min", "i"), Agg.of("max", "i")])
    assert reduce_column(pa.chunked_array([ints]), {"min", "max"}) == {"min": -3, "max": 9}


def test_min_max_past_nulls_searches_blocks_and_their_tail() -> None:
    # Chunks of several EXTREME_BLOCKs plus a tail, at an offset, whose null slots hold values beyond the
    # valid extremes, equal to them, or NaN, with the extremes in the first block, a middle one or the tail.
    from featurelake.validation import fast

    rng = np.random.default_rng(7)
    n = 3 * fast.EXTREME_BLOCK + 123
    for case in range(40):
        values = rng.normal(0, 1, n)
        mask = rng.random(n) < 0.05
        at = rng.integers(0, n, 4)
        values[at[0]], values[at[1]] = -9.0, 9.0  # valid or null, by the mask
        if case % 4 == 1:
            values[mask] = 0.0 if case % 8 == 1 else -9.0  # null slots equal to one valid extreme
        elif case % 4 == 2:
            values[at[2]] = np.nan
            mask[at[2]] = True  # NaN only at a null slot
        elif case % 4 == 3:
            values[mask] = 50.0  # every null slot beyond the max
        chunk = pa.array(values, pa.float64(), mask=mask)
        for frame in (pa.table({"x": chunk}), pa.table({"x": chunk}).slice(int(at[3]) % 100 + 1)):
            check_against_duckdb(frame, [Agg.of("min", "x"), Agg.of("max", "x")])
            check_against_duckdb(frame, [Agg.of("max", "x")])
    # The tail alone holds the extremes; the block reduction must reach it.
    values = np.zeros(n)
    values[-1], values[-2] = -1.0, 1.0
    col = pa.chunked_array([pa.array(values, pa.float64(), mask=np.arange(n) == 5)])
    assert reduce_column(col, {"min", "max"}) == {"min": -1.0, "max": 1.0}


def test_min_max_past_nulls_across_chunks_finds_the_winning_chunk_and_block() -> None:
    # The whole-column pass maps the winning block back to its chunk: columns of chunks of several
    # sizes (smaller than a block, several blocks plus a tail, all null, without nulls and so without a
    # validity bitmap, sliced at an offset), extremes in any of them, null slots that hold values beyond
    # them or a NaN; DuckDB's answer either way, and the first valid NaN wins as in DuckDB.
    from featurelake.validation import fast

    rng = np.random.default_rng(11)
    block = fast.EXTREME_BLOCK
    for case in range(60):
        chunks = []
        for size in rng.choice([7, block, 2 * block + 5, 3 * block + 123], size=int(rng.integers(2, 5))):
            values = rng.normal(0, 1, int(size))
            mask = rng.random(int(size)) < (0.05 if rng.random() < 0.7 else 0.0)
            if case % 5 == 1:
                values[mask] = 99.0  # null slots beyond the max
            elif case % 5 == 2 and mask.any():
                values[np.flatnonzero(mask)[0]] = np.nan  # NaN only at a null slot
            arr = pa.array(values, pa.float64(), mask=mask if mask.any() else None)
            chunks.append(arr.slice(1) if rng.random() < 0.3 else arr)
        if case % 7 == 3:
            chunks.insert(1, pa.array([None] * 10, pa.float64()))
        # The extremes in a random chunk and slot.
        target = int(rng.integers(0, len(chunks)))
        values = chunks[target].to_numpy(zero_copy_only=False).copy()
        values[int(rng.integers(0, len(values)))] = 20.0 if case % 2 else -20.0
        chunks[target] = pa.array(values, pa.float64(), mask=np.isnan(values) if case % 5 == 3 else None)
        col = pa.chunked_array(chunks, pa.float64())
        if col.null_count == 0:
            col = pa.chunked_array([*chunks, pa.array([None, 1.0], pa.float64())], pa.float64())
        check_against_duckdb(pa.table({"x": col}), [Agg.of("min", "x"), Agg.of("max", "x")])
        check_against_duckdb(pa.table({"x": col}), [Agg.of("max", "x")])


def test_distinct_rows_drops_an_order_that_breaks_in_a_later_block() -> None:
    from featurelake.validation import fast

    n = 3 * fast.ORDER_BLOCK + 10
    day = np.repeat([0, 1], [n - 5, 5])
    user = np.concatenate([np.arange(n - 5), np.arange(5)])  # (user, day) ordered until the last block
    frame = pa.table({"user": pa.array(user, pa.int64()), "day": pa.array(day, pa.int64())})
    assert distinct_rows(frame, ("user", "day")) == n  # ordered by (day, user)
    dup = frame.take(pa.array(np.concatenate([np.arange(n - 1), [n - 2]])))  # last row repeated
    assert distinct_rows(dup, ("user", "day")) is None
    unordered = pa.table(
        {
            "user": pa.array(np.concatenate([np.arange(n - 5), [0, 2, 1, 3, 4]]), pa.int64()),
            "day": frame["day"],
        }
    )
    assert distinct_rows(unordered, ("user", "day")) is None
    expr = Agg('count(DISTINCT hash("user", "day"))', "distinct_rows", None, "user", "day")
    assert duck(unordered, [expr]) == [n]  # they are distinct: only DuckDB can tell, and it is asked then


def test_sql_predicate_trusts_columns_known_finite_and_checks_the_others() -> None:
    from featurelake.validation.sql_arrow import count_false

    frame = pa.table({"x": pa.array([1.0, float("nan"), 3.0]), "y": pa.array([2.0, 2.0, 2.0])})
    assert count_false(frame, "x < y") is None  # NaN: SQL and IEEE disagree, DuckDB decides
    assert count_false(frame, "x < y", bounds={"y": (2.0, 2.0)}) is None  # x is still checked
    clean = frame.set_column(0, "x", pa.array([1.0, None, 3.0]))
    assert count_false(clean, "x < y", bounds={"x": (1.0, 3.0), "y": (2.0, 2.0)}) == 1
    assert [count_false(clean, "x < y")] == duck(clean, ["count(*) FILTER (WHERE NOT (x < y))"])


@pytest.mark.parametrize(
    ("expr", "proved"),
    [
        ("a <= b + 1000", True),
        ("a < b", False),  # the intervals overlap: the rows are read
        ("a IS NULL OR a > -100", True),
        ("NOT (a > 100)", True),
        ("a BETWEEN -100 AND b * 2 + 100", True),
        ("-a < 1000 AND b <> -1", True),
        ("a = a", False),  # not provable from bounds (true, but interval arithmetic cannot tell)
        ("a IS NOT NULL", False),  # a has nulls: FALSE is possible
        ("c > 0", False),  # no bounds for c
    ],
)
def test_predicates_proved_from_column_bounds(expr: str, proved: bool) -> None:
    from featurelake.validation.sql_arrow import count_false, never_false

    frame = pa.table(
        {
            "a": pa.array([1.5, None, -3.0, 7.25], pa.float64()),
            "b": pa.array([2, 9, 4, 5], pa.int64()),
            "c": pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    bounds: dict[str, tuple[Any, Any]] = {"a": (-3.0, 7.25), "b": (2, 9)}
    assert never_false(frame, expr, bounds) == proved
    want = duck(frame, [f"count(*) FILTER (WHERE NOT ({expr}))"])
    assert [count_false(frame, expr, bounds=bounds)] == want
    if proved:
        assert want == [0]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), min_size=1, max_size=20),
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=20),
    st.sampled_from(
        [
            "x < y + 2000000",
            "x * 2 >= y - 3000000",
            "NOT (x > 1000 OR y IS NULL)",
            "x BETWEEN -1000 AND 1000",
            "-x > y * 2",
            "x <> 5000 AND (y IS NULL OR y <= 1e6)",
        ]
    ),
)
def test_bounds_never_prove_a_predicate_that_duckdb_finds_false(
    xs: list[int | None], ys: list[float | None], expr: str
) -> None:
    from featurelake.validation.fast import reduce_column
    from featurelake.validation.sql_arrow import never_false

    n = min(len(xs), len(ys))
    frame = pa.table({"x": pa.array(xs[:n], pa.int64()), "y": pa.array(ys[:n], pa.float64())})
    bounds = {}
    for c in ("x", "y"):
        got = reduce_column(frame.column(c), {"min", "max"})
        if got and got["min"] is not None:
            bounds[c] = (got["min"], got["max"])
    if never_false(frame, expr, bounds):
        assert duck(frame, [f"count(*) FILTER (WHERE NOT ({expr}))"]) == [0]


def _wide_frame(rows: int = 3 * 4096 + 17) -> pa.Table:
    rng = np.random.default_rng(5)
    cols: dict[str, Any] = {"k": pa.array(np.arange(rows), pa.int64())}
    for i in range(5):
        cols[f"x{i}"] = pa.array(rng.normal(i, 1, rows), pa.float64(), mask=rng.random(rows) < 0.1)
    cols["code"] = pa.array(rng.integers(0, 5, rows), pa.int64())
    return pa.table(cols)


def _scans(frame: pa.Table) -> list[str]:
    return [
        *aggregates([f"x{i}" for i in range(5)]),
        Agg('count(DISTINCT hash("k"))', "distinct_rows", None, "k"),
        Agg('count(*) FILTER (WHERE "code" NOT IN (0, 1, 2, 3))', "count_not_in", "code", (0, 1, 2, 3)),
        Agg("count(*) FILTER (WHERE NOT (x0 <= x1 + 100))", "count_false", None, "x0 <= x1 + 100"),
    ]


def test_scans_queued_by_a_call_are_shared_with_a_helping_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The audit's drawing thread helps with the scans left when it is done (ArrowAggregates.help). Made
    # deterministic: the first scan (row uniqueness) lets another thread help and waits until it has run
    # every other scan, so the answers come from both threads; they must be DuckDB's all the same.
    import threading

    from featurelake.validation import fast

    frame = _wide_frame()
    ran_on: dict[str, str] = {}
    real_reduce, real_distinct = fast.reduce_column, fast.distinct_rows

    def reduce_column(col: pa.ChunkedArray, ops: set[str]) -> dict[str, Any] | None:
        ran_on[str(len(ran_on))] = threading.current_thread().name
        return real_reduce(col, ops)

    def distinct_rows(frame: pa.Table, cols: tuple[str, ...]) -> int | None:
        helper = threading.Thread(target=agg.help, name="helper")
        helper.start()
        helper.join(60)
        assert not helper.is_alive()
        return real_distinct(frame, cols)

    monkeypatch.setattr(fast, "reduce_column", reduce_column)
    monkeypatch.setattr(fast, "distinct_rows", distinct_rows)
    agg = ArrowAggregates(frame, Recorder(frame))
    exprs = _scans(frame)
    got, want = agg(exprs), duck(frame, exprs)
    for e, g, w in zip(exprs, got, want, strict=True):
        assert same(g, w), f"{e}: {g!r} != DuckDB {w!r}"
    assert set(ran_on.values()) == {"helper"}, ran_on
    agg.help()  # nothing queued any more: returns at once


def test_scans_on_pool_helpers_match_duckdb(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a machine with cores to spare, pool threads join the calling thread's scans.
    from featurelake.validation import fast

    monkeypatch.setattr(fast, "scan_helpers", lambda: 3)
    frame = _wide_frame()
    for _ in range(5):
        check_against_duckdb(frame, _scans(frame))


@pytest.mark.parametrize("helpers", [0, 2])
def test_a_scan_that_fails_raises_in_the_caller(monkeypatch: pytest.MonkeyPatch, helpers: int) -> None:
    # Whichever thread ran it, a failing scan's exception reaches the audit, which says what to do.
    from featurelake.validation import fast

    real = fast.reduce_column

    def reduce_column(col: pa.ChunkedArray, ops: set[str]) -> dict[str, Any] | None:
        if col.num_chunks and np.isclose(pc.mean(col).as_py() or 0, 3, atol=0.5):  # x3's mean
            raise MemoryError("out of memory in x3")
        return real(col, ops)

    monkeypatch.setattr(fast, "reduce_column", reduce_column)
    monkeypatch.setattr(fast, "scan_helpers", lambda: helpers)
    frame = _wide_frame()
    with pytest.raises(MemoryError, match="x3"):
        ArrowAggregates(frame, Recorder(frame))(_scans(frame))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), max_size=30),
    st.sampled_from(["any", "strict", "sorted"]),
    st.integers(0, 30),
)
def test_distinct_rows_by_order_on_one_to_three_keys(
    width: int, rows: list[tuple[int, int, int]], order: str, cut: int
) -> None:
    # Whatever the number of key columns: a count is only ever given for distinct rows (sorted rows with
    # repeats included), and rows in strictly increasing order of the keys (as given) always get it;
    # across a batch seam too.
    keys = [tuple(r[:width]) for r in rows]
    if order == "strict":
        keys = sorted(set(keys))
    elif order == "sorted":
        keys = sorted(keys + keys[:3])
    names = ("a", "b", "c")[:width]
    table = pa.table({n: pa.array([k[i] for k in keys], pa.int64()) for i, n in enumerate(names)})
    if 0 < cut < table.num_rows:
        table = pa.Table.from_batches(
            [*table.slice(0, cut).to_batches(), *table.slice(cut).to_batches()], table.schema
        )
    got = distinct_rows(table, names)
    distinct = len(set(keys))
    if got is not None:
        assert got == len(keys) == distinct
    if order == "strict":
        assert got == len(keys)
