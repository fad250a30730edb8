"""The check library on real Arrow frames through the DuckDB evaluator: each check passing and failing.

Checks that compare with published data get an in-memory reference here (their logic is what is under
test); tests/test_audit_wap.py runs the same checks against real Iceberg tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pyarrow as pa
import pytest

from featurelake import checks
from featurelake.errors import ConfigError
from featurelake.features.definitions import Entity, FeatureView, Source
from featurelake.lakehouse.window import Window
from featurelake.units import format_duration
from featurelake.validation.audit import checks_for, evaluate, evaluate_with
from featurelake.validation.checks import AuditContext, Check, CheckResult, ReferenceStats
from featurelake.validation.stats import Profiler

T0 = datetime(2024, 1, 1, tzinfo=UTC)
FIELDS = {"n": "long", "x": "double", "y": "double", "cat": "string", "flag": "boolean", "d": "decimal(10,2)"}


def view(*declared: Check, dtype: str | None = "long") -> FeatureView:
    return FeatureView(
        name="v",
        entity=Entity("user", join_key="user_id", dtype=dtype),  # type: ignore[arg-type]
        source=Source.parquet("data/*.parquet", timestamp_field="ts"),
        query="SELECT * FROM source",
        fields=FIELDS,
        checks=list(declared),
    )


def frame(rows: int = 6, **overrides: list[Any]) -> pa.Table:
    base: dict[str, list[Any]] = {
        "user_id": list(range(rows)),
        "event_ts": [T0 + timedelta(hours=i) for i in range(rows)],
        "n": [i % 3 for i in range(rows)],
        "x": [float(i) for i in range(rows)],
        "y": [1.0] * rows,
        "cat": ["a", "b"] * (rows // 2) + ["a"] * (rows % 2),
        "flag": [True] * rows,
        "d": [1] * rows,
    }
    base.update(overrides)
    types = {
        "user_id": pa.int64(),
        "event_ts": pa.timestamp("us", tz="UTC"),
        "n": pa.int64(),
        "x": pa.float64(),
        "y": pa.float64(),
        "cat": pa.string(),
        "flag": pa.bool_(),
        "d": pa.decimal128(10, 2),
    }
    return pa.table({k: pa.array(v, types[k]) for k, v in base.items()})


@dataclass
class FakeReference:
    rows_in_window: int | None = None
    stats_by_ref: dict[str | None, ReferenceStats] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def window_rows(self) -> int | None:
        self.reads.append("window")
        return self.rows_in_window

    def stats(self, reference: str | int | None = None) -> ReferenceStats:
        self.reads.append(f"stats:{reference}")
        return self.stats_by_ref.get(
            None if reference is None else str(reference), ReferenceStats(None, "main")
        )


def run(
    data: pa.Table,
    *declared: Check,
    reference: FakeReference | None = None,
    window: Window | None = None,
    implicit: bool = False,
) -> dict[str, CheckResult]:
    v = view(*declared)
    ctx = AuditContext(
        v, window, T0 + timedelta(days=30), reference or FakeReference(), Profiler.for_view(v, 1000, 1)
    )
    todo = checks_for(v) if implicit else list(declared)
    rows, results = evaluate(data, [c.bind(ctx) for c in todo])
    assert rows == data.num_rows
    return {f"{r.check}:{r.column}": r for r in results}


def one(data: pa.Table, check: Check, **kw: Any) -> CheckResult:
    (result,) = run(data, check, **kw).values()
    return result


# --- each check, passing and failing -------------------------------------------------------------------


def test_null_rate() -> None:
    ok = one(frame(x=[1.0, None, 3.0, 4.0, 5.0, 6.0]), checks.null_rate("x", max=0.2))
    assert ok.passed and ok.observed == pytest.approx(1 / 6, abs=1e-6)
    bad = one(frame(x=[1.0, None, None, 4.0, 5.0, 6.0]), checks.null_rate("x", max=0.2))
    assert not bad.passed and bad.observed == pytest.approx(2 / 6, abs=1e-6)
    assert bad.message == "null rate of x is 0.3333 (2 of 6 rows; limit 0.2000)"


def test_not_null() -> None:
    assert one(frame(), checks.not_null("x")).passed
    bad = one(frame(cat=["a", None, "b", None, None, "a"]), checks.not_null("cat"))
    assert not bad.passed and bad.observed == 3 and bad.message == "cat has 3 null values"


def test_between_counts_values_outside_and_nan_and_inf() -> None:
    assert one(frame(), checks.between("x", 0, 5)).passed
    bad = one(frame(x=[0.0, 9.0, float("nan"), float("inf"), -1.0, None]), checks.between("x", 0, 5))
    assert not bad.passed and bad.observed == 4  # 9, NaN, +inf, -1; the null is not a value
    assert "4 of 6 values of x are outside [0, 5]" in bad.message


def test_between_all_null_column_passes_and_says_so() -> None:
    res = one(frame(x=[None] * 6), checks.between("x", 0, 5))
    assert res.passed and res.observed == 0 and "all values are null" in res.message


def test_in_set() -> None:
    assert one(frame(), checks.in_set("cat", ["a", "b"])).passed
    bad = one(frame(cat=["a", "zz", "b", "q", None, "zz"]), checks.in_set("cat", ["a", "b"]))
    assert not bad.passed and bad.observed == 3
    assert "e.g. 'q', 'zz'" in bad.message
    assert one(frame(n=[0, 1, 2, 0, 1, 7]), checks.in_set("n", [0, 1, 2])).observed == 1


def test_unique_defaults_to_key_and_timestamp() -> None:
    assert one(frame(), checks.unique()).passed
    dup = frame(user_id=[1, 1, 2, 2, 3, 3], event_ts=[T0, T0, T0, T0 + timedelta(1), T0, T0])
    res = one(dup, checks.unique())
    assert not res.passed and res.observed == 2 and res.column == "user_id, event_ts"
    assert "2 of 6 rows repeat" in res.message


def test_unique_on_given_columns_counts_null_keys() -> None:
    res = one(frame(cat=["a", None, None, "b", "c", "d"]), checks.unique(["cat"]))
    assert not res.passed and res.observed == 1  # two rows share the null key
    assert one(frame(cat=["a", "b", "c", "d", "e", "f"]), checks.unique("cat")).passed


def test_row_count() -> None:
    assert one(frame(), checks.row_count(min=1, max=6)).passed
    assert not one(frame(), checks.row_count(min=7)).passed
    assert not one(frame(), checks.row_count(max=5)).passed


def test_row_count_change_against_the_published_window() -> None:
    res = one(frame(), checks.row_count_change(0.5), reference=FakeReference(rows_in_window=5))
    assert res.passed and res.observed == pytest.approx(0.2)
    bad = one(frame(), checks.row_count_change(0.5), reference=FakeReference(rows_in_window=20))
    assert not bad.passed and bad.observed == pytest.approx(0.7)
    assert "20 published -> 6 new" in bad.message


def test_row_count_change_without_published_rows_is_no_reference() -> None:
    res = one(frame(), checks.row_count_change(0.1), reference=FakeReference(rows_in_window=None))
    assert res.passed and res.status == "no-reference" and res.verdict == "no reference"
    assert "main holds no rows for this window yet" in res.message


def test_freshness_relative_to_the_window_end() -> None:
    window = Window(T0, T0 + timedelta(days=1))
    data = frame(event_ts=[T0 + timedelta(hours=h) for h in (1, 2, 3, 20, 21, 23)])
    ok = one(data, checks.freshness(timedelta(hours=2)), window=window)
    assert ok.passed and ok.observed == "1h"
    stale = frame(event_ts=[T0 + timedelta(hours=h) for h in range(6)])
    bad = one(stale, checks.freshness(timedelta(hours=2)), window=window)
    assert not bad.passed and bad.observed == "19h" and "(limit 2h)" in bad.message
    assert format_duration(timedelta(days=2, minutes=5), sep=" ") == "2d 5m"  # how ages are shown


def test_no_nan_or_inf() -> None:
    assert one(frame(), checks.no_nan_or_inf("x")).passed
    bad = one(
        frame(x=[1.0, float("nan"), float("inf"), float("-inf"), float("nan"), None]),
        checks.no_nan_or_inf("x"),
    )
    assert not bad.passed and bad.observed == 4
    assert bad.message == "x holds 2 NaN, 1 +inf and 1 -inf values of 6 rows"


def test_sql_custom_predicate() -> None:
    assert one(frame(), checks.sql("y <= x + 1", name="y_small")).passed
    bad = one(frame(), checks.sql("x < 4", name="x_small"))
    assert not bad.passed and bad.observed == 2 and bad.column == "x_small"
    # NULL is not a violation (dbt's expression_is_true); coalesce() makes it one.
    with_null = frame(x=[1.0, None, 1.0, 1.0, 1.0, 1.0])
    assert one(with_null, checks.sql("x < 4", name="a")).passed
    assert one(with_null, checks.sql("coalesce(x < 4, false)", name="b")).observed == 1


def test_warn_severity_is_recorded_but_does_not_fail_the_audit() -> None:
    res = one(frame(x=[None] * 6), checks.not_null("x", severity="warn"))
    assert not res.passed and res.severity == "warn" and res.verdict == "warn"


# --- empty windows, all-null columns, implicit checks ---------------------------------------------------


def test_empty_frame_gives_clear_verdicts() -> None:
    empty = frame(0)
    results = run(empty, checks.null_rate("x", max=0.1), checks.between("x", 0, 1), implicit=True)
    assert not results["row_count:None"].passed
    assert "the window holds no rows" in results["row_count:None"].message
    assert results["null_rate:x"].passed and results["between:x"].passed


def test_empty_window_can_be_a_warning() -> None:
    v = view()
    (rc, *_rest) = checks_for(v, empty_window="warn")
    assert rc.name == "row_count" and rc.severity == "warn"


def test_implicit_checks_and_declared_replacement() -> None:
    names = [c.key for c in checks_for(view())]
    assert [n for n, _ in names] == ["row_count", "not_null", "not_null", "unique"]
    replaced = checks_for(view(checks.unique(severity="warn")))
    uniques = [c for c in replaced if c.name == "unique"]
    assert len(uniques) == 1 and uniques[0].severity == "warn"


def test_all_null_column() -> None:
    nulls = frame(x=[None] * 6)
    r = run(nulls, checks.null_rate("x", max=0.5), checks.no_nan_or_inf("x"), checks.not_null("x"))
    assert r["null_rate:x"].observed == 1.0 and not r["null_rate:x"].passed
    assert r["no_nan_or_inf:x"].passed
    assert r["not_null:x"].observed == 6


# --- passes over the data --------------------------------------------------------------------------------


def _count_queries(data: pa.Table, declared: list[Check]) -> tuple[list[list[str]], list[CheckResult]]:
    import duckdb

    con = duckdb.connect()
    con.register("frame", data)
    calls: list[list[str]] = []

    def query(exprs: list[str]) -> list[Any]:
        calls.append(exprs)
        return list(con.execute(f"SELECT {', '.join(exprs)} FROM frame").fetchone() or [])

    v = view(*declared)
    ctx = AuditContext(v, None, T0, FakeReference(), Profiler.for_view(v, 1000, 1))
    _, results = evaluate_with(query, None, [c.bind(ctx) for c in checks_for(v)])
    return calls, results


def test_all_checks_in_one_query_plus_one_for_distinct_counts_when_everything_passes() -> None:
    declared = [
        checks.null_rate("x", max=0.5),
        checks.not_null("x"),
        checks.between("x", 0, 10),
        checks.between("n", 0, 3),
        checks.no_nan_or_inf("x"),
        checks.in_set("cat", ["a", "b"]),
        checks.sql("y = 1", name="y_one"),
    ]
    queries, results = _count_queries(frame(), declared)
    assert all(r.passed for r in results)
    assert len(queries) == 2 and all("DISTINCT" in e for e in queries[1])  # the implicit unique()
    # Every declared aggregate once (null_rate and not_null share count("x")), plus the implicit checks'.
    wanted = {
        "count(*)",
        'count("user_id")',
        'count("event_ts")',
        *(e for c in declared for e in c.aggregates()),
    }
    assert sorted(queries[0]) == sorted(wanted)


def test_failures_get_exact_counts_in_one_more_query() -> None:
    declared = [checks.between("x", 0, 1), checks.no_nan_or_inf("y"), checks.between("n", 0, 1)]
    data = frame(y=[1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    queries, results = _count_queries(data, declared)
    assert len(queries) == 3  # plain aggregates, the distinct count, the exact counts of what failed
    assert not any("DISTINCT" in e for e in queries[0]) and "FILTER" in " ".join(queries[2])
    failed = {r.check + ":" + str(r.column): r.observed for r in results if not r.passed}
    assert failed == {"between:x": 4, "no_nan_or_inf:y": 1, "between:n": 2}


# --- definition-time errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda: checks.between("x", 5, 1), ["lo must be <= hi"]),
        (lambda: checks.between("x", 0, math.inf), ["finite numbers"]),
        (lambda: checks.null_rate("x", max=1.5), ["between 0 and 1"]),
        (lambda: checks.not_null("x", severity="fatal"), ["'error' or 'warn'"]),  # type: ignore[arg-type]  # deliberately wrong type: must be refused
        (lambda: checks.in_set("cat", []), ["non-empty"]),
        (lambda: checks.in_set("cat", ["a", None]), ["unsupported literal"]),
        (lambda: checks.row_count(min=5, max=2), ["max must be an integer >= min"]),
        (lambda: checks.row_count_change(-1), [">= 0"]),
        (lambda: checks.freshness(3600), ["timedelta"]),  # type: ignore[arg-type]
        (lambda: checks.sql("x > 1; DROP TABLE t", name="bad"), ["without ';'"]),
        (lambda: checks.sql("x > 1", name="has space"), ["not a valid name"]),
        (lambda: checks.drift("x", metric="kl"), ["'psi', 'js' or 'ks'"]),  # type: ignore[arg-type]
        (lambda: checks.drift("x", max=-1), [">= 0"]),
        (lambda: checks.drift("x", bins=1), ["bins"]),
        (lambda: checks.unique([]), ["one or more"]),
    ],
)
def test_bad_arguments_are_config_errors(make: Any, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        make()
    for n in needles:
        assert n in str(ei.value)


@pytest.mark.parametrize(
    ("check", "needles"),
    [
        (checks.null_rate("nope", max=0.1), ["unknown column 'nope'", "known columns"]),
        (checks.unique(["user_id", "nope"]), ["unknown column 'nope'"]),
        (checks.between("cat", 0, 1), ["needs a numeric column", "cat is string"]),
        (checks.no_nan_or_inf("n"), ["float/double", "n is integer"]),
        (checks.in_set("n", ["a"]), ["lists 'a'", "n is integer"]),
        (checks.in_set("flag", [1]), ["flag is boolean"]),
        (checks.freshness(timedelta(1), column="x"), ["needs a timestamp column"]),
        (checks.sql("nope > 1", name="s"), ["sql('s') is not valid SQL", "nope"]),
        (checks.sql("x >>>< 1", name="s"), ["not valid SQL"]),
        (checks.drift("cat", metric="ks"), ["needs a numeric column", "cat is string"]),
        (checks.drift("event_ts"), ["not the key or timestamp"]),
    ],
)
def test_checks_that_do_not_fit_the_view_are_refused_at_definition(check: Check, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        view(check)
    for n in needles:
        assert n in str(ei.value), str(ei.value)


def test_sql_check_validates_with_an_untyped_key() -> None:
    # The key's type is only known at apply: either typing that binds is accepted.
    as_string = view(checks.sql("length(user_id) > 0", name="k"), dtype=None)
    as_long = view(checks.sql("user_id > 0", name="k2"), dtype=None)
    assert [cast(Check, c).key for c in as_string.checks + as_long.checks] == [
        ("sql", ("k",)),
        ("sql", ("k2",)),
    ]


def test_view_names_starting_with_underscore_are_reserved() -> None:
    with pytest.raises(ConfigError, match="reserved for featurelake's own"):
        FeatureView(
            name="_audits",
            entity=Entity("user", join_key="user_id"),
            source=Source.parquet("data/*.parquet", timestamp_field="ts"),
            query="SELECT 1",
            fields={"x": "double"},
        )


def test_check_results_round_trip() -> None:
    r = one(frame(), checks.between("x", 0, 1))
    assert CheckResult.from_dict(r.to_dict()) == r
