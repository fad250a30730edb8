"""The Engine contract, written once and run on every engine (``local`` and ``spark`` in local[2]).

Expected features are computed here in plain Python from the source rows, so both engines are held to an
answer neither of them produced.
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import AuditFailed, DataError, SchemaError
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.window import Window
from featurelake.validation.checks import (
    Between,
    Check,
    CheckResult,
    NotNull,
    NullRate,
    Observation,
    RowCount,
)
from tests.helpers import DEFAULT_FEATURES, START, day, transactions, write_source
from tests.spark_support import ENGINES, assert_rows_close, engine_project, sorted_rows
from tests.spark_support import expected_features as expected

VIEW = "user_features"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "spark":
        request.getfixturevalue("spark")  # one SparkContext for the whole session
    return str(request.param)


def main_id(fl: featurelake.Featurelake) -> int | None:
    return wap.main_snapshot_id(fl.project.load_table(VIEW))


def test_engine_is_the_configured_one(tmp_path: Path, engine: str) -> None:
    with featurelake.open(engine_project(tmp_path / "p", engine)) as fl:
        assert fl.project.engine.name == engine


def test_backfill_publishes_exact_features_with_lineage(tmp_path: Path, engine: str) -> None:
    source = transactions()
    with featurelake.open(engine_project(tmp_path / "p", engine, data=source)) as fl:
        fl.apply()
        before = main_id(fl)
        res = fl.backfill(VIEW, day(0), day(4), run_id="c1")
        want = expected(source, 0, 4)
        assert res.rows == len(want) and res.report.passed
        assert main_id(fl) == res.snapshot_id != before
        assert_rows_close(sorted_rows(fl.read(VIEW)), want)
        top = fl.history(VIEW)[0]
        assert (top.run_id, top.pipeline_user, top.view) == ("c1", "test-user", VIEW)
        assert top.code_version and top.window_start == "2024-01-01T00:00:00+00:00"
        assert top.window_end == "2024-01-05T00:00:00+00:00"
        tbl = fl.project.load_table(VIEW)
        assert "audit_c1" not in tbl.metadata.refs
        assert wap.is_ancestor(tbl, before, res.snapshot_id)


def test_compute_write_read_through_the_engine_api(tmp_path: Path, engine: str) -> None:
    source = transactions()
    with featurelake.open(engine_project(tmp_path / "p", engine, data=source)) as fl:
        fl.apply()
        eng, view = fl.project.engine, fl.project.view(VIEW)
        tbl = fl.project.load_table(VIEW)
        window = Window.parse(day(1), day(4))
        frame = eng.compute(view, window, tbl)
        assert_rows_close(sorted_rows(eng.to_arrow(frame)), expected(source, 1, 4))

        main_before = wap.main_snapshot_id(tbl)
        wap.create_branch(tbl, "audit_api")
        tbl = fl.project.load_table(VIEW)
        props = {lineage.RUN_ID: "api", "featurelake.note": "contract"}
        tip = eng.write_window(tbl, frame, window, "event_ts", "audit_api", props)
        fresh = fl.project.load_table(VIEW)
        assert wap.ref_snapshot_id(fresh, "audit_api") == tip
        assert wap.main_snapshot_id(fresh) == main_before  # the write went to the branch only
        summary = fresh.metadata.snapshot_by_id(tip).summary.additional_properties  # type: ignore[union-attr]
        assert summary[lineage.RUN_ID] == "api" and summary["featurelake.note"] == "contract"

        on_branch = eng.to_arrow(eng.read(fresh, snapshot_id=tip))
        assert_rows_close(sorted_rows(on_branch), expected(source, 1, 4))
        one_day = eng.to_arrow(
            eng.read(
                fresh, snapshot_id=tip, row_filter=Window.parse(day(2), day(3)).iceberg_filter("event_ts")
            )
        )
        assert_rows_close(sorted_rows(one_day), expected(source, 2, 3))
        assert eng.to_arrow(eng.read(fresh)).num_rows == 0  # main still holds only apply's empty snapshot


def test_audit_evaluates_every_check_once(tmp_path: Path, engine: str) -> None:
    source = transactions(null_share=0.3, seed=5)
    with featurelake.open(engine_project(tmp_path / "p", engine, data=source)) as fl:
        fl.apply()
        eng, view = fl.project.engine, fl.project.view(VIEW)
        frame = eng.compute(view, Window.parse(day(0), day(3)), fl.project.load_table(VIEW))
        rows_py = expected(source, 0, 3)
        nulls = sum(r["amount_avg_1d"] is None for r in rows_py)
        rows, results = eng.audit(
            frame,
            [
                RowCount(min=1),
                NotNull("amount_avg_1d"),
                NullRate("amount_avg_1d", max=0.5),
                Between("txn_count_1d", 0, 3),
            ],
        )
    assert rows == len(rows_py) and nulls > 0
    by_name = {r.check: r for r in results}
    assert by_name["row_count"].passed and by_name["row_count"].observed == rows
    assert not by_name["not_null"].passed and by_name["not_null"].observed == nulls
    assert by_name["null_rate"].passed and by_name["null_rate"].observed == pytest.approx(
        nulls / rows, abs=1e-6
    )
    outside = sum(r["txn_count_1d"] > 3 for r in rows_py)
    assert by_name["between"].passed == (outside == 0) and by_name["between"].observed == outside


class SampleProbe(Check):
    """A check that asks for a uniform sample and records what it got (built on the Check interface only)."""

    name = "sample_probe"

    def __init__(self, n: int) -> None:
        super().__init__("warn")
        self.n = n
        self.sample: pa.Table | None = None

    def sample_request(self) -> tuple[list[str], int, int] | None:
        return (["user_id", "amount_sum_1d"], self.n, 7)

    def judge(self, obs: Observation) -> CheckResult:
        self.sample = obs.sample
        return self._result(
            None, True, obs.sample.num_rows if obs.sample is not None else None, "", "sampled"
        )


def test_audit_draws_samples_for_checks_that_ask(tmp_path: Path, engine: str) -> None:
    source = transactions(days=3)
    with featurelake.open(engine_project(tmp_path / "p", engine, data=source)) as fl:
        fl.apply()
        eng, view = fl.project.engine, fl.project.view(VIEW)
        frame = eng.compute(view, Window.parse(day(0), day(3)), fl.project.load_table(VIEW))
        rows_py = expected(source, 0, 3)
        small, whole = SampleProbe(25), SampleProbe(10_000)
        rows, _ = eng.audit(frame, [small])  # one sample per audit, sized for the largest request
        eng.audit(frame, [whole])
    assert rows == len(rows_py) > 25
    pairs = {(r["user_id"], r["amount_sum_1d"]) for r in rows_py}
    assert small.sample is not None and small.sample.num_rows == 25
    picked = list(
        zip(
            small.sample.column("user_id").to_pylist(),
            small.sample.column("amount_sum_1d").to_pylist(),
            strict=True,
        )
    )
    assert len(set(picked)) == 25 and set(picked) <= pairs  # distinct rows of the frame, no duplicates
    assert whole.sample is not None and whole.sample.num_rows == rows  # a frame smaller than n is all of it


def test_rerun_replaces_only_its_window(tmp_path: Path, engine: str) -> None:
    source = transactions(days=6)
    proj = engine_project(tmp_path / "p", engine, data=source)
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(6), run_id="all")
    # Corrected upstream data for days 2..3 only: every amount doubled.
    fixed = source.set_column(2, "amount", pa.compute.multiply(source.column("amount"), 2.0))
    write_source(proj, fixed)
    with featurelake.open(proj) as fl:
        fl.backfill(VIEW, day(2), day(4), run_id="fix")
        got = sorted_rows(fl.read(VIEW))
    want = sorted(
        expected(source, 0, 2) + expected(fixed, 2, 4) + expected(source, 4, 6),
        key=lambda r: (r["user_id"], r["event_ts"]),
    )
    assert_rows_close(got, want)


def test_failed_audit_changes_nothing_and_keeps_the_branch(tmp_path: Path, engine: str) -> None:
    bad = transactions(days=2, start=START + timedelta(days=5), null_share=0.6, seed=9)
    proj = engine_project(tmp_path / "p", engine, data=pa.concat_tables([transactions(days=5), bad]))
    with featurelake.open(proj) as fl:
        fl.apply()
        good = fl.backfill(VIEW, day(0), day(5), run_id="good")
        rows_before = sorted_rows(fl.read(VIEW))
        with pytest.raises(AuditFailed) as info:
            fl.backfill(VIEW, day(5), day(7), run_id="bad")
        assert "null rate of amount_avg_1d" in str(info.value) and "audit_bad" in str(info.value)
        assert main_id(fl) == good.snapshot_id
        assert sorted_rows(fl.read(VIEW)) == rows_before
        assert "audit_bad" in fl.project.load_table(VIEW).metadata.refs
        again = fl.audit(VIEW, "bad")  # reads the kept branch back through the engine
        assert not again.passed and again.rows == info.value.report.rows  # type: ignore[attr-defined]
        with pytest.raises(AuditFailed):
            fl.publish(VIEW, "bad")
        assert main_id(fl) == good.snapshot_id


def test_publish_rebases_when_main_moved(tmp_path: Path, engine: str) -> None:
    with featurelake.open(engine_project(tmp_path / "p", engine)) as fl:
        fl.apply()
        inner: list[Any] = []

        def progress(msg: str) -> None:
            if msg.startswith("audit passed") and not inner:
                inner.append(fl.backfill(VIEW, day(5), day(10), run_id="b"))

        a = fl.backfill(VIEW, day(0), day(5), run_id="a", progress=progress)
        b = inner[0]
        assert a.rebases == 1
        tbl = fl.project.load_table(VIEW)
        assert wap.is_ancestor(tbl, b.snapshot_id, a.snapshot_id)
        assert fl.read(VIEW).num_rows == a.rows + b.rows


AVG = "avg(amount) AS amount_avg_1d"
EVENT_TS = "date_trunc('day', ts) AS event_ts"
BAD_QUERIES = [
    (
        "extra-column",
        AVG,
        AVG + ", max(amount) AS amount_max_1d",
        SchemaError,
        ["amount_max_1d", "undeclared"],
    ),
    (
        "string-for-double",
        AVG,
        "CAST(avg(amount) AS VARCHAR) AS amount_avg_1d",
        SchemaError,
        ["amount_avg_1d", "cast it"],
    ),
    (
        "null-keys",
        "SELECT user_id,",
        "SELECT CASE WHEN user_id % 3 = 0 THEN NULL ELSE user_id END AS user_id,",
        DataError,
        ["null user_id", "join key", "filter them out"],
    ),
    (
        "naive-timestamp",
        EVENT_TS,
        "CAST(date_trunc('day', ts) AS TIMESTAMP) AS event_ts",
        SchemaError,
        ["timezone", "TIMESTAMPTZ"],
    ),
    (
        "out-of-window",
        EVENT_TS,
        "date_trunc('day', ts) + INTERVAL 40 DAY AS event_ts",
        DataError,
        ["window", day(0), day(2)],
    ),
    (
        "lossy-cast",
        "count(*) AS txn_count_1d",
        "count(*) * 10000000000000.5 AS txn_count_1d",
        SchemaError,
        ["txn_count_1d", "losing values"],
    ),
    (
        "not-a-select",
        "SELECT user_id,",
        "CREATE TABLE made AS SELECT user_id,",
        SchemaError,
        ["the query must be one SELECT over source: it is not a SELECT"],
    ),
    (
        "two-statements",
        "FROM source GROUP BY ALL",
        "FROM source GROUP BY ALL; SELECT 1",
        SchemaError,
        ["the query must be one SELECT over source: it holds 2 statements"],
    ),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "error", "needles"), BAD_QUERIES, ids=[c[0] for c in BAD_QUERIES]
)
def test_bad_query_output_is_refused_before_any_write(
    tmp_path: Path, engine: str, case: str, old: str, new: str, error: type[Exception], needles: list[str]
) -> None:
    proj = engine_project(tmp_path / "p", engine)
    with featurelake.open(proj) as fl:
        fl.apply()
        before = main_id(fl)
    assert old in DEFAULT_FEATURES
    shutil.rmtree(proj / "__pycache__", ignore_errors=True)
    (proj / "features.py").write_text(textwrap.dedent(DEFAULT_FEATURES.replace(old, new)))
    with featurelake.open(proj) as fl:
        with pytest.raises(error) as info:
            fl.backfill(VIEW, day(0), day(2), run_id="q")
        for needle in ["user_features", *needles]:
            assert needle in str(info.value), (needle, str(info.value))
        tbl = fl.project.load_table(VIEW)
        assert wap.main_snapshot_id(tbl) == before and "audit_q" not in tbl.metadata.refs
        assert fl.read(VIEW).num_rows == 0
