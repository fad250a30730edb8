"""Lookback, and split invariance as a law: any split of a window into consecutive backfills publishes exactly
the rows of one backfill, for views using ``lag``, window frames and declarative aggregations, on both
engines. Also: rows before the window are read but never written or audited, rows after it are refused,
and ``apply`` warns about window functions and self-joins without a lookback.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import featurelake
from featurelake.errors import AuditFailed, DataError
from featurelake.features.lint import edge_constructs
from featurelake.lakehouse import wap
from featurelake.validation.audit import AuditReport
from tests.helpers import START, day, make_project, transactions
from tests.spark_support import engine_project

FIRST, DAYS = 8, 5  # the law is checked over [day(FIRST), day(FIRST + DAYS)); data from day 0

# lag() bounded to 2 days and a 7-day RANGE frame: both read up to 7 days back, which the lookback covers.
HISTORY_QUERY = """
    SELECT user_id, ts AS event_ts,
           CASE WHEN ts - lag(ts) OVER (PARTITION BY user_id ORDER BY ts) <= INTERVAL 2 DAY
                THEN lag(amount) OVER (PARTITION BY user_id ORDER BY ts) END AS prev_amount,
           avg(amount) OVER (PARTITION BY user_id ORDER BY ts
                             RANGE BETWEEN INTERVAL 6 DAY PRECEDING AND CURRENT ROW) AS amount_avg_7d
    FROM source
"""


def law_features(*names: str) -> str:
    """features.py with a history view and an aggregation view per name suffix (identical definitions)."""
    text = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

user = Entity("user", join_key="user_id")
src = Source.parquet("data/transactions/*.parquet", timestamp_field="ts")
"""
    for n in names:
        text += f'''
history_{n} = FeatureView(
    name="history_{n}", entity=user, source=src,
    query="""{HISTORY_QUERY}""",
    fields={{"prev_amount": "double", "amount_avg_7d": "double"}},
    lookback=timedelta(days=7),
)
windows_{n} = FeatureView(
    name="windows_{n}", entity=user, source=src,
    aggregations=[
        Aggregation("amount", "sum", window=timedelta(days=7)),
        Aggregation("*", "count", window=timedelta(days=1)),
        Aggregation("amount", "mean", window=timedelta(days=2)),
        Aggregation("amount", "max", window=timedelta(hours=36)),
        Aggregation("amount", "stddev", window=timedelta(days=3)),
        Aggregation("amount", "last", window=timedelta(days=2)),
        Aggregation("merchant", "approx_count_distinct", window=timedelta(days=7)),
    ],
    step=timedelta(hours=12),
)
'''
    return text


def law_data(days: int, users: int = 12, seed: int = 5) -> pa.Table:
    """Sparse users (gaps longer than the windows), rows exactly at midnight, amounts that are multiples of
    1/4 (so any summation order gives the same double), distinct timestamps per user."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {"user_id": [], "ts": [], "amount": [], "merchant": []}
    for user in range(1, users + 1):
        active = rng.random(days) < (0.9 if user % 3 else 0.35)
        for d in np.flatnonzero(active):
            seconds = rng.choice(86_400, size=int(rng.integers(1, 5)), replace=False)
            if rng.random() < 0.3 and 0 not in seconds:
                seconds[0] = 0  # exactly midnight: a tile, step and window edge
            for s in sorted(int(x) for x in seconds):
                rows["user_id"].append(user)
                rows["ts"].append(START + timedelta(days=int(d), seconds=s))
                rows["amount"].append(None if rng.random() < 0.05 else int(rng.integers(-40, 400)) / 4)
                rows["merchant"].append(f"m{int(rng.integers(0, 6))}")
    return pa.table(
        {
            "user_id": pa.array(rows["user_id"], pa.int64()),
            "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
            "amount": pa.array(rows["amount"], pa.float64()),
            "merchant": pa.array(rows["merchant"], pa.string()),
        }
    )


# stddev merges per-tile M2s, whose rounding depends on how a window frame is evaluated
ROUNDED = {"amount_stddev_3d"}


def rows_of(fl: featurelake.Featurelake, view: str) -> list[dict[str, Any]]:
    table = fl.read(view)
    return sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["event_ts"]))


def assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(r["user_id"], r["event_ts"]) for r in got] == [(r["user_id"], r["event_ts"]) for r in want]
    for g, w in zip(got, want, strict=True):
        for k in w:
            if k in ROUNDED and w[k] is not None and g[k] is not None:
                assert math.isclose(g[k], w[k], rel_tol=1e-12, abs_tol=1e-12), (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


def backfill_in_pieces(fl: featurelake.Featurelake, view: str, first: int, last: int, cuts: set[int]) -> int:
    bounds = [first, *sorted(first + c for c in cuts), last]
    return sum(fl.backfill(view, day(lo), day(hi)).rows for lo, hi in itertools.pairwise(bounds))


@pytest.fixture(scope="module")
def law_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    root = make_project(
        tmp_path_factory.mktemp("law") / "p",
        features=law_features("whole", "split"),
        data=law_data(FIRST + DAYS + 2),
    )
    with featurelake.open(root) as fl:
        fl.apply()
        for view in ("history_whole", "windows_whole"):
            fl.backfill(view, day(FIRST), day(FIRST + DAYS))
        yield fl


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.sets(st.integers(1, DAYS - 1)))
@example(cuts=set(range(1, DAYS)))  # one backfill per day
def test_any_split_publishes_the_rows_of_one_backfill(
    law_project: featurelake.Featurelake, cuts: set[int]
) -> None:
    fl = law_project
    for kind in ("history", "windows"):
        whole = rows_of(fl, f"{kind}_whole")
        assert whole, "the law is vacuous without rows"
        written = backfill_in_pieces(fl, f"{kind}_split", FIRST, FIRST + DAYS, cuts)
        split = rows_of(fl, f"{kind}_split")
        assert written == len(whole)
        assert_same_rows(split, whole)


@pytest.mark.spark
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.sets(st.integers(1, 2), min_size=1))
def test_any_split_publishes_the_rows_of_one_backfill_on_spark(
    spark: Any, tmp_path_factory: pytest.TempPathFactory, cuts: set[int]
) -> None:
    root = engine_project(
        tmp_path_factory.mktemp("law_spark") / "p",
        "spark",
        features=law_features("whole", "split"),
        data=law_data(FIRST + 3 + 1, users=6),
    )
    with featurelake.open(root) as fl:
        fl.apply()
        for kind in ("history", "windows"):
            fl.backfill(f"{kind}_whole", day(FIRST), day(FIRST + 3))
            whole = rows_of(fl, f"{kind}_whole")
            assert whole
            assert backfill_in_pieces(fl, f"{kind}_split", FIRST, FIRST + 3, cuts) == len(whole)
            assert_same_rows(rows_of(fl, f"{kind}_split"), whole)


def test_without_lookback_a_split_changes_the_features(tmp_path: Path) -> None:
    """The bug the law rules out: the same query without a lookback differs at every split point."""
    text = law_features("a", "b").replace("    lookback=timedelta(days=7),\n", "")
    with featurelake.open(make_project(tmp_path / "p", features=text, data=law_data(12))) as fl:
        results = fl.apply()
        fl.backfill("history_a", day(8), day(10))
        backfill_in_pieces(fl, "history_b", 8, 10, {1})
        whole, split = rows_of(fl, "history_a"), rows_of(fl, "history_b")
    assert [(r["user_id"], r["event_ts"]) for r in whole] == [(r["user_id"], r["event_ts"]) for r in split]
    assert whole != split
    # the rows of the first day of the second backfill lost their history; the others agree
    cut = START + timedelta(days=9)
    assert [w for w, s in zip(whole, split, strict=True) if w != s]
    assert all(w == s for w, s in zip(whole, split, strict=True) if w["event_ts"] < cut)
    warned = {r.view: r.warnings for r in results}
    assert "window function lag()" in warned["history_a"][0]
    assert warned["windows_a"] == []


# --- what a backfill with a lookback writes and audits -------------------------------------------------------

PASS_THROUGH = """
from datetime import timedelta
from featurelake import Entity, FeatureView, Source, checks

raw = FeatureView(
    name="raw",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, ts AS event_ts, amount FROM source",
    fields={"amount": "double"},
    lookback=timedelta(days=3),
    checks=[CHECKS],
)
"""


def spiky(days: int) -> pa.Table:
    """Transactions whose amounts before day 4 are far out of range (only the lookback reads them)."""
    data = transactions(days=days, users=8, rows_per_day=20)
    early = [t < START + timedelta(days=4) for t in data.column("ts").to_pylist()]
    amounts = [1e9 if e else a for e, a in zip(early, data.column("amount").to_pylist(), strict=True)]
    return data.set_column(2, "amount", pa.array(amounts, pa.float64()))


def window_rows(data: pa.Table, lo: int, hi: int) -> int:
    a, b = START + timedelta(days=lo), START + timedelta(days=hi)
    return sum(a <= t < b for t in data.column("ts").to_pylist())


def test_rows_before_the_window_are_read_but_neither_written_nor_audited(tmp_path: Path) -> None:
    data = spiky(8)
    n = window_rows(data, 4, 6)
    checks = f"checks.between('amount', 0, 10_000), checks.row_count(min={n}, max={n})"
    root = make_project(tmp_path / "p", features=PASS_THROUGH.replace("CHECKS", checks), data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        result = fl.backfill("raw", day(4), day(6))
        got = fl.read("raw")
    assert result.rows == result.report.rows == got.num_rows == n
    day4 = START + timedelta(days=4)
    assert all(day4 <= t < day4 + timedelta(days=2) for t in got.column("event_ts").to_pylist())
    assert all(r.passed for r in result.report.results)


def test_an_audit_failure_in_the_window_still_refuses(tmp_path: Path) -> None:
    """Dropping the lookback's rows does not hide the window's own bad rows."""
    data = spiky(8)
    root = make_project(
        tmp_path / "p", features=PASS_THROUGH.replace("CHECKS", "checks.between('amount', 0, 10)"), data=data
    )
    with featurelake.open(root) as fl:
        fl.apply()
        before = wap.main_snapshot_id(fl.project.load_table("raw"))
        with pytest.raises(AuditFailed, match="raw") as exc:
            fl.backfill("raw", day(4), day(6), run_id="bad")
        assert cast(AuditReport, exc.value.report).rows == window_rows(data, 4, 6)
        assert wap.main_snapshot_id(fl.project.load_table("raw")) == before


def test_rows_after_the_window_are_refused(tmp_path: Path) -> None:
    text = PASS_THROUGH.replace("CHECKS", "").replace(
        "SELECT user_id, ts AS event_ts", "SELECT user_id, ts + INTERVAL 1 DAY AS event_ts"
    )
    with featurelake.open(make_project(tmp_path / "p", features=text, data=transactions(days=6))) as fl:
        fl.apply()
        before = wap.main_snapshot_id(fl.project.load_table("raw"))
        with pytest.raises(DataError, match=r"view 'raw': the query produced event_ts values .* outside"):
            fl.backfill("raw", day(2), day(4))
        assert wap.main_snapshot_id(fl.project.load_table("raw")) == before


def test_lookback_reads_an_iceberg_source_table_too(tmp_path: Path) -> None:
    text = law_features("t").replace(
        'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
        'Source.table("raw.transactions", timestamp_field="ts")',
    )
    data = law_data(12)
    parquet_root = make_project(tmp_path / "ref", features=law_features("t"), data=data)
    table_root = make_project(tmp_path / "tbl", features=text, data=data.slice(0, 0))
    with featurelake.open(table_root) as fl:
        fl.project.catalog.create_namespace("raw")
        fl.project.catalog.create_table("raw.transactions", schema=data.schema).append(data)
        fl.apply()
        fl.backfill("history_t", day(9), day(11))
        got = rows_of(fl, "history_t")
    with featurelake.open(parquet_root) as fl:
        fl.apply()
        fl.backfill("history_t", day(9), day(11))
        want = rows_of(fl, "history_t")
    assert got == want
    assert any(
        r["prev_amount"] is not None and r["event_ts"] < START + timedelta(days=9, hours=12) for r in got
    )


# --- apply warns about history without a lookback -------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("SELECT user_id, ts, lag(amount) OVER (PARTITION BY user_id ORDER BY ts) FROM source", ["lag"]),
        (
            "SELECT user_id, avg(amount) OVER w, row_number() OVER w FROM source "
            "WINDOW w AS (PARTITION BY user_id ORDER BY ts)",
            ["avg", "row_number"],
        ),
        (
            "SELECT * FROM source QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY ts) = 1",
            ["row_number"],
        ),
        ("SELECT a.user_id FROM source a JOIN source b ON a.user_id = b.user_id AND b.ts < a.ts", ["self"]),
        (
            "WITH s AS (SELECT * FROM source WHERE amount > 0), d AS (SELECT * FROM s) "
            "SELECT d.user_id FROM d ASOF JOIN source t ON d.user_id = t.user_id AND d.ts >= t.ts",
            ["self"],
        ),
        ("SELECT user_id, date_trunc('day', ts), sum(amount) FROM source GROUP BY ALL", []),
        ("SELECT s.user_id FROM source s JOIN (SELECT 1 AS user_id) o USING (user_id)", []),
        ("SELECT user_id, count(*) FROM source WHERE amount > (SELECT 1) GROUP BY 1", []),
        ("SELEC nonsense", []),
    ],
)
def test_edge_constructs_are_found_by_parsing(query: str, found: list[str]) -> None:
    got = edge_constructs(query)
    assert len(got) == len(found)
    for label, want in zip(got, found, strict=True):
        assert (want == "self" and label == "a self-join of source") or label == f"window function {want}()"


def cli_here(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(["-C", str(root), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_apply_prints_a_warning_line_naming_the_view_and_the_construct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = law_features("x").replace("    lookback=timedelta(days=7),\n", "")
    root = make_project(tmp_path / "p", features=text, data=law_data(3))
    done = cli_here(capsys, root, "apply")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "view 'history_x'" in warnings[0]
    assert "window function lag(), window function avg()" in warnings[0]
    assert "lookback=timedelta" in warnings[0]
    assert "features.history_x: created" in done.stdout
    listed = cli_here(capsys, root, "apply", "--json")
    by_view = {r["view"]: r["warnings"] for r in json.loads(listed.stdout)}
    assert len(by_view["history_x"]) == 1 and by_view["windows_x"] == []


def test_apply_does_not_warn_when_a_lookback_is_declared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(tmp_path / "p", features=law_features("x"), data=law_data(3))
    done = cli_here(capsys, root, "apply")
    assert done.returncode == 0 and "warning" not in done.stderr


def test_lookback_rounds_nothing_off_a_window_edge(tmp_path: Path) -> None:
    """Sub-day lookbacks work too: the source is read from exactly start - lookback."""
    data = pa.table(
        {
            "user_id": pa.array([1, 1, 1], pa.int64()),
            "ts": pa.array(
                [START + timedelta(days=2) - timedelta(hours=h) for h in (7, 5)]
                + [START + timedelta(days=2)],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": pa.array([1.0, 2.0, 4.0]),
        }
    )
    text = PASS_THROUGH.replace("CHECKS", "").replace(
        'query="SELECT user_id, ts AS event_ts, amount FROM source"',
        'query="SELECT user_id, ts AS event_ts, sum(amount) OVER (PARTITION BY user_id ORDER BY ts) AS amount '
        'FROM source"',
    )
    text = text.replace("lookback=timedelta(days=3)", "lookback=timedelta(hours=6)")
    with featurelake.open(make_project(tmp_path / "p", features=text, data=data)) as fl:
        fl.apply()
        fl.backfill("raw", day(2), day(3))
        got = fl.read("raw").to_pylist()
    # the row 5 hours before is read (2.0), the one 7 hours before is not
    assert got == [{"user_id": 1, "event_ts": datetime(2024, 1, 3, tzinfo=UTC), "amount": 6.0}]


def test_apply_records_lookback_and_aggregations_on_the_table(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", features=law_features("x"), data=law_data(3))
    with featurelake.open(root) as fl:
        fl.apply()
        assert fl.project.load_table("history_x").properties["featurelake.lookback"] == "7d"
        aggs = fl.project.load_table("windows_x").properties["featurelake.aggregations"]
    assert aggs.startswith("sum(amount) over 7d as amount_sum_7d, count(*) over 1d as count_1d, ")
    assert aggs.endswith(
        "approx_count_distinct(merchant) over 7d as merchant_approx_count_distinct_7d; step 12h"
    )
    features = root / "features.py"
    features.write_text(
        features.read_text().replace("lookback=timedelta(days=7)", "lookback=timedelta(days=8)")
    )
    with featurelake.open(root) as fl:
        history, windows = fl.apply(dry_run=True)
    assert [(c.kind, c.column, c.old, c.new) for c in history.changes] == [
        ("property", "featurelake.lookback", "7d", "8d")
    ]
    assert windows.action == "unchanged"
