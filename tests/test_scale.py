"""Bounded memory: a backfill computed and written a few days at a time publishes exactly what one piece
publishes (one snapshot, every row audited, lookback and aggregations per batch); views whose query is not
batch-invariant stay in one piece; running out of memory names the setting to lower; a sync that reads its
files in small groups writes what one read writes. The memory cap itself: tests/test_scale_memory.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import ArrowScan

import featurelake
from featurelake.engines.local import LocalEngine, batch_invariant, split_window
from featurelake.errors import AuditFailed, ConfigError
from featurelake.features.aggregations import source_window
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.window import Window
from featurelake.memory import is_out_of_memory
from featurelake.serving.sync import _groups
from featurelake.training import build_training_set
from featurelake.training.scan import stream_scan
from featurelake.validation.audit import AuditReport
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions
from tests.online_helpers import (
    append,
    assert_matches_main,
    config,
    d,
    online_state,
    overwrite,
)
from tests.s3_project import s3_project
from tests.s3_servers import S3Bucket, moto_s3, s3  # noqa: F401 - fixtures
from tests.test_lookback import assert_same_rows, law_data, law_features, rows_of
from tests.training_helpers import FEATURES as TRAINING_FEATURES
from tests.training_helpers import entities as training_entities
from tests.training_helpers import two_view_project

FIRST, LAST = 8, 15  # a 7-day window: 4 batches of 2 days (the last one 1 day)
VIEWS = ("history_a", "windows_a", "events")

PLAIN_VIEW = """
events = FeatureView(
    name="events", entity=user, source=src,
    query="SELECT user_id, ts AS event_ts, amount, amount * 2 AS twice FROM source WHERE amount IS NOT NULL",
    fields={"amount": "double", "twice": "double"},
    checks=[
        checks.between("amount", -20, 200),
        checks.null_rate("twice", max=0.5),
        checks.sql("twice = 2 * amount", name="twice_is_twice"),
    ],
)
"""


def features() -> str:
    text = law_features("a").replace(
        "from featurelake import Aggregation, Entity, FeatureView, Source",
        "from featurelake import Aggregation, Entity, FeatureView, Source, checks",
    )
    return text + PLAIN_VIEW


def _project(root: Path, batch_days: int) -> featurelake.Featurelake:
    cfg = f"project: scale\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n"
    fl = featurelake.open(make_project(root, features=features(), config=cfg, data=law_data(LAST + 2)))
    fl.apply()
    return fl


Whole = tuple[featurelake.Featurelake, dict[str, AuditReport]]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Whole]:
    """Every view backfilled over the window in one piece (batch_days 0), with its audit report."""
    with _project(tmp_path_factory.mktemp("whole") / "p", 0) as fl:
        yield fl, {view: fl.backfill(view, day(FIRST), day(LAST)).report for view in VIEWS}


def _verdicts(report: AuditReport) -> list[tuple[Any, ...]]:
    return [(r.check, r.column, r.status, r.observed) for r in report.results]


def _run_snapshots(fl: featurelake.Featurelake, view: str, run_id: str) -> list[int]:
    tbl = fl.project.load_table(view)
    return [
        s.snapshot_id
        for s in tbl.metadata.snapshots
        if s.summary is not None and s.summary.additional_properties.get(lineage.RUN_ID) == run_id
    ]


class ComputeSpy:
    """Records the windows the local engine computes (and can fail one of them)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.windows: list[Window] = []
        self.fail_at = fail_at
        self.real = LocalEngine.compute

    def __call__(
        self, engine: LocalEngine, view: FeatureView, window: Window, table: Any, source: Any = None
    ) -> Any:
        self.windows.append(window)
        if self.fail_at is not None and len(self.windows) == self.fail_at:
            raise MemoryError()
        return self.real(engine, view, window, table, source)

    def patch(self) -> Any:
        def compute(
            engine: LocalEngine, view: FeatureView, window: Window, table: Any, source: Any = None
        ) -> Any:
            return self(engine, view, window, table, source)

        return mock.patch.object(LocalEngine, "compute", compute)


@pytest.mark.parametrize("view", VIEWS)
def test_batched_backfill_publishes_what_one_piece_publishes(whole: Whole, tmp_path: Path, view: str) -> None:
    one_piece, reports = whole
    spy = ComputeSpy()
    with _project(tmp_path / "p", 2) as fl:
        before = wap.main_snapshot_id(fl.project.load_table(view))
        with spy.patch():
            result = fl.backfill(view, day(FIRST), day(LAST), run_id="batched")
        tbl = fl.project.load_table(view)
        # Four batches of at most two days, each a window of its own (its source read from its start minus
        # the lookback); one snapshot on main, a child of the old main; the branch removed.
        window = Window.parse(day(FIRST), day(LAST))
        assert spy.windows == list(split_window(window, 2))
        assert [w.days for w in spy.windows] == [2, 2, 2, 1]
        assert _run_snapshots(fl, view, "batched") == [result.snapshot_id]
        assert wap.main_snapshot_id(tbl) == result.snapshot_id
        snap = tbl.metadata.snapshot_by_id(result.snapshot_id)
        assert snap is not None and snap.parent_snapshot_id == before
        assert "audit_batched" not in tbl.metadata.refs
        assert_same_rows(rows_of(fl, view), rows_of(one_piece, view))
    # Every row audited: the same counts, verdicts and exact statistics as the audit of one frame.
    want = reports[view]
    assert result.rows == want.rows > 0
    assert _verdicts(result.report) == _verdicts(want)
    assert set(result.report.profile) == set(want.profile)
    for column, stats in want.profile.items():
        got = result.report.profile[column]
        assert (got.rows, got.count, got.min, got.max) == (stats.rows, stats.count, stats.min, stats.max)
        assert got.sum == pytest.approx(stats.sum, rel=1e-12)


@pytest.mark.parametrize("reader", ["arrow", "duckdb"])
def test_a_row_by_row_view_is_computed_batch_rows_at_a_time(
    whole: Whole, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """A view computed row by row streams each batch's source and computes and writes it backfill.batch_rows
    source rows at a time, even when the whole window is one batch of days: the same rows, counts, verdicts
    and exact statistics as one piece, in several data files per day."""
    if (
        reader == "duckdb"
    ):  # the stream for sources Arrow's reader does not take (hive directories, odd types)
        monkeypatch.setattr("featurelake.engines.local.parquet_window_scanner", lambda *a: None)
    one_piece, reports = whole
    spy = ComputeSpy()
    cfg = "project: scale\nnamespace: features\nbackfill:\n  batch_days: 30\n  batch_min_rows: 0\n  batch_rows: 7\n"
    root = make_project(tmp_path / "p", features=features(), config=cfg, data=law_data(LAST + 2))
    with featurelake.open(root) as fl:
        fl.apply()
        with spy.patch():
            result = fl.backfill("events", day(FIRST), day(LAST), run_id="chunked")
        window = Window.parse(day(FIRST), day(LAST))
        assert len(spy.windows) >= result.rows // 7 > 1 and set(spy.windows) == {window}
        assert_same_rows(rows_of(fl, "events"), rows_of(one_piece, "events"))
        tbl = fl.project.load_table("events")
        files = list(tbl.scan(row_filter=window.iceberg_filter("event_ts")).plan_files())
        assert len(files) > window.days
        assert max(f.file.record_count for f in files) <= 7
    want = reports["events"]
    assert result.rows == want.rows > 0
    assert _verdicts(result.report) == _verdicts(want)
    for column, stats in want.profile.items():
        got = result.report.profile[column]
        assert (got.rows, got.count, got.min, got.max) == (stats.rows, stats.count, stats.min, stats.max)
        assert got.sum == pytest.approx(stats.sum, rel=1e-12)


def test_batched_backfill_refuses_what_one_piece_refuses(tmp_path: Path) -> None:
    """A failing check sees every batch's rows: the audit of the written files refuses the run, main unchanged."""
    text = features().replace('checks.between("amount", -20, 200)', 'checks.between("amount", -20, 50)')
    cfg = "project: scale\nnamespace: features\nbackfill:\n  batch_days: 1\n  batch_min_rows: 0\n"
    with featurelake.open(make_project(tmp_path / "p", features=text, config=cfg, data=law_data(LAST))) as fl:
        fl.apply()
        before = wap.main_snapshot_id(fl.project.load_table("events"))
        with pytest.raises(AuditFailed) as failed:
            fl.backfill("events", day(FIRST), day(LAST), run_id="refused")
        report = cast(AuditReport, failed.value.report)
        (between,) = [r for r in report.results if r.check == "between"]
        assert between.status == "fail" and isinstance(between.observed, int) and between.observed > 0
        tbl = fl.project.load_table("events")
        assert wap.main_snapshot_id(tbl) == before
        assert "audit_refused" in tbl.metadata.refs
        # The kept branch holds every batch's rows in one snapshot, which `publish` re-audits (and refuses).
        assert len(_run_snapshots(fl, "events", "refused")) == 1
        assert (
            report.rows
            == fl.project.load_table("events")
            .scan(
                snapshot_id=wap.ref_snapshot_id(tbl, "audit_refused"),
                row_filter=Window.parse(day(FIRST), day(LAST)).iceberg_filter("event_ts"),
            )
            .count()
        )


def test_empty_batches_are_skipped_and_an_empty_window_is_audited(tmp_path: Path) -> None:
    """Days without source rows write nothing; a window without any row gets the empty-window verdict."""
    cfg = "project: scale\nnamespace: features\nbackfill:\n  batch_days: 1\n  batch_min_rows: 0\n  empty_window: warn\n"
    data = law_data(4)
    with featurelake.open(make_project(tmp_path / "p", features=features(), config=cfg, data=data)) as fl:
        fl.apply()
        result = fl.backfill("events", day(2), day(7))  # days 4..6 have no source rows
        assert result.rows == fl.read("events").num_rows > 0
        empty = fl.backfill("events", day(20), day(23))
        assert empty.rows == 0
        (row_count,) = [r for r in empty.report.results if r.check == "row_count"]
        assert (row_count.severity, row_count.passed, row_count.observed) == ("warn", False, 0)


def test_rebackfill_of_a_month_partitioned_table_keeps_the_rest_of_the_month(tmp_path: Path) -> None:
    """The span a window's files straddle is rewritten with the batches: rows outside the window stay, and
    the run commits what one piece commits (the month's delete and the new files in one transaction)."""
    text = features().replace(
        'fields={"amount": "double", "twice": "double"},',
        'fields={"amount": "double", "twice": "double"},\n    partition="month",',
    )
    tables, commits = [], []
    for batch_days in (0, 2):
        cfg = f"project: scale\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n"
        root = make_project(tmp_path / str(batch_days), features=text, config=cfg, data=law_data(20))
        with featurelake.open(root) as fl:
            fl.apply()
            fl.backfill("events", day(0), day(20))
            everything = fl.read("events").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
            again = fl.backfill("events", day(5), day(12), run_id="again")
            snapshots = _run_snapshots(fl, "events", "again")
            assert snapshots[-1] == again.snapshot_id
            commits.append(len(snapshots))
            after = fl.read("events").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
            assert after.equals(everything)
            tables.append(after)
    assert tables[0].equals(tables[1]) and commits[0] == commits[1]


@pytest.mark.parametrize(
    ("query", "batched"),
    [
        ("", True),
        ("SELECT user_id, ts AS event_ts, amount * 2 AS x FROM source WHERE amount > 0", True),
        (
            "SELECT user_id, date_trunc('day', ts) AS event_ts, sum(amount) AS x FROM source GROUP BY ALL",
            False,
        ),
        ("SELECT user_id, max(ts) AS event_ts, 1 AS x FROM source GROUP BY user_id", False),
        ("SELECT DISTINCT user_id, ts AS event_ts, 1 AS x FROM source", False),
        ("SELECT user_id, ts AS event_ts, 1 AS x FROM source LIMIT 10", False),
        ("SELECT user_id, ts AS event_ts, (SELECT max(amount) FROM source) AS x FROM source", False),
        (
            "SELECT user_id, ts AS event_ts, lag(amount) OVER (PARTITION BY user_id ORDER BY ts) AS x FROM source",
            False,
        ),
        ("SELEC nonsense", False),
    ],
)
def test_only_batch_invariant_queries_are_batched(query: str, batched: bool) -> None:
    view = mock.Mock(spec=["query", "lookback", "name"], query=query, lookback=None)
    view.name = "v"
    assert batch_invariant(view) is batched


def test_a_view_that_groups_over_the_window_is_computed_in_one_piece(tmp_path: Path) -> None:
    """GROUP BY over the window would change with the batches: computed whole, as before."""
    cfg = "project: scale\nnamespace: features\nbackfill:\n  batch_days: 1\n  batch_min_rows: 0\n"
    spy = ComputeSpy()
    with featurelake.open(make_project(tmp_path / "p", features=DEFAULT_FEATURES, config=cfg)) as fl:
        fl.apply()
        with spy.patch():
            result = fl.backfill("user_features", day(0), day(5))
        assert spy.windows == [Window.parse(day(0), day(5))]
        assert result.rows == fl.read("user_features").num_rows > 0


@pytest.mark.parametrize(
    ("view", "setting"),
    [
        # a lookback view is computed a batch of days at a time: fewer days help
        ("history_a", "backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS) (now 2)"),
        # a row-by-row view is computed batch_rows source rows at a time: fewer rows help
        ("events", "backfill.batch_rows (FEATURELAKE_BACKFILL__BATCH_ROWS) (now 250000)"),
    ],
)
def test_out_of_memory_in_a_batch_names_the_setting_to_lower(tmp_path: Path, view: str, setting: str) -> None:
    spy = ComputeSpy(fail_at=2)
    with _project(tmp_path / "p", 2) as fl:
        before = wap.main_snapshot_id(fl.project.load_table(view))
        with spy.patch(), pytest.raises(ConfigError) as err:
            fl.backfill(view, day(FIRST), day(LAST), run_id="oom")
        message = str(err.value)
        assert "out of memory" in message and f"lower {setting}" in message
        assert f"[{day(FIRST + 2)}, {day(FIRST + 4)})" in message
        tbl = fl.project.load_table(view)
        assert wap.main_snapshot_id(tbl) == before and "audit_oom" not in tbl.metadata.refs


@pytest.mark.parametrize(
    ("features_text", "view", "batch_days", "advice"),
    [
        (None, "events", 0, "set backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS) to 1 (now 0)"),
        (DEFAULT_FEATURES, "user_features", 1, "cannot be computed in batches: backfill shorter windows"),
        (None, "history_a", 30, "backfill shorter windows, or lower backfill.batch_days"),
    ],
)
def test_out_of_memory_in_one_piece_says_what_to_change(
    tmp_path: Path, features_text: str | None, view: str, batch_days: int, advice: str
) -> None:
    cfg = f"project: scale\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n"
    root = make_project(tmp_path / "p", features=features_text or features(), config=cfg, data=law_data(LAST))
    with featurelake.open(root) as fl:
        fl.apply()
        with ComputeSpy(fail_at=1).patch(), pytest.raises(ConfigError) as err:
            fl.backfill(view, day(FIRST), day(LAST))
        assert "out of memory computing the backfill" in str(err.value) and advice in str(err.value)


@pytest.mark.parametrize(
    ("batch_days", "batched", "advice"),
    [
        (2, True, "lower backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS) (now 2) so that fewer days are "
         "audited at once"),
        (0, False, "set backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS) to 1 (now 0)"),
    ],
)  # fmt: skip
def test_out_of_memory_in_the_audit_says_what_to_change_and_how_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_days: int, batched: bool, advice: str
) -> None:
    """The window computed and written, its audit runs out: the backfill's message names the view, the setting
    and the branch to discard (written in the same commit that created it); main is unchanged."""
    seen: list[bool] = []

    def exhausted(engine: LocalEngine, frame: Any, checks: Any) -> Any:
        seen.append(engine.batched(frame))
        raise pa.ArrowMemoryError("malloc of size 1048576 failed")

    with _project(tmp_path / "p", batch_days) as fl:
        before = wap.main_snapshot_id(fl.project.load_table("history_a"))
        monkeypatch.setattr(LocalEngine, "audit", exhausted)
        with pytest.raises(ConfigError) as err:
            fl.backfill("history_a", day(FIRST), day(LAST), run_id="oom")
        monkeypatch.undo()
        message = str(err.value)
        assert seen and set(seen) == {batched}  # the checks, and the statistics on their own thread
        assert message.startswith(
            f"view 'history_a': out of memory writing and auditing the backfill [{day(FIRST)}, {day(LAST)}) "
            "(ArrowMemoryError: malloc of size 1048576 failed); "
        ), message
        assert advice in message and "main is unchanged" in message
        assert (
            "To run the window again: repeat the backfill under a new --run-id (or none) and drop branch "
            "audit_oom with `featurelake discard history_a --run-id oom`" in message
        )
        tbl = fl.project.load_table("history_a")
        assert wap.main_snapshot_id(tbl) == before and "audit_oom" in tbl.metadata.refs
        fl.discard("history_a", "oom")
        assert fl.backfill("history_a", day(FIRST), day(LAST), run_id="oom2").rows > 0


def test_batched_audit_counts_duplicates_within_a_batch(tmp_path: Path) -> None:
    """Uniqueness is summed over batches (disjoint in time): duplicates inside one are still found, as many
    as the audit of one frame finds."""
    text = features().replace(
        "FROM source WHERE amount IS NOT NULL",
        "FROM source WHERE amount IS NOT NULL UNION ALL "
        "SELECT user_id, ts, amount, amount * 2 FROM source WHERE amount > 80",
    )
    observed = []
    for batch_days in (0, 2):
        cfg = f"project: scale\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n"
        root = make_project(tmp_path / str(batch_days), features=text, config=cfg, data=law_data(LAST))
        with featurelake.open(root) as fl:
            fl.apply()
            with pytest.raises(AuditFailed) as failed:
                fl.backfill("events", day(FIRST), day(LAST))
            report = cast(AuditReport, failed.value.report)
            (unique,) = [r for r in report.results if r.check == "unique"]
            assert unique.status == "fail"
            observed.append((unique.observed, report.rows))
    assert observed[0] == observed[1] and isinstance(observed[0][0], int) and observed[0][0] > 0


# --- sync ---------------------------------------------------------------------------------------------


def test_groups_cut_files_by_record_count() -> None:
    files: list[tuple[Any, int]] = [(mock.Mock(record_count=n), i) for i, n in enumerate([5, 5, 5, 20, 1, 1])]
    groups = _groups(files, 10)
    assert [[seq for _, seq in g] for g in groups] == [[0, 1], [2, 3], [4, 5]]
    assert _groups([], 10) == []


def test_sync_in_groups_of_one_file_writes_the_latest_row_per_key(tmp_path: Path) -> None:
    """Each data file read on its own, only the latest row per key kept between them: the store ends as
    main's latest row per key, a newer commit winning a tie in event time, on full and incremental syncs."""
    extra = "online_store:\n  sync_batch_rows: 1\n"
    make_project(tmp_path / "p", config=config("sqlite", None, extra), data=transactions())
    with featurelake.open(tmp_path / "p") as fl:
        fl.apply()
        append(fl, [(1, d(3), 10), (2, d(3), 20), (3, d(2), 30)])
        append(fl, [(1, d(2), 11), (2, d(4), 21)])  # an older row for 1, a newer one for 2
        append(fl, [(1, d(3), 12), (4, d(1), 40)])  # the same event time for 1: the newer commit wins
        # Six data files (one per day of each commit), each read as a group of its own.
        (first,) = fl.sync()
        assert first.mode == "full" and first.files_read == 6 and first.rows == 7 and first.keys == 4
        assert online_state(fl, [1])[1]["amount_avg_1d"] == 12.0
        assert_matches_main(fl)
        overwrite(
            fl,
            [(1, d(3), 13)],
            And(GreaterThanOrEqual("event_ts", d(3).isoformat()), LessThan("event_ts", d(4).isoformat())),  # type: ignore[call-arg, arg-type]  # pyiceberg predicates take (term, literal); mypy sees pydantic fields
        )
        append(fl, [(3, d(5), 31)])
        (second,) = fl.sync()
        assert second.mode == "incremental"
        state = online_state(fl, [1, 2, 3, 4])
        assert state[1]["amount_avg_1d"] == 13.0 and state[3]["amount_avg_1d"] == 31.0
        assert_matches_main(fl, extra_keys=[1, 2, 3, 4])


def test_sync_groups_change_nothing_in_what_is_written(tmp_path: Path) -> None:
    """The same table synced with groups of one file and in one read: identical store contents."""
    states = []
    for rows in (1, 1_000_000):
        extra = f"online_store:\n  sync_batch_rows: {rows}\n"
        root = make_project(tmp_path / str(rows), config=config("sqlite", None, extra), data=transactions())
        with featurelake.open(root) as fl:
            fl.apply()
            for lo in range(0, 10, 3):  # four backfills: four snapshots, files per day
                fl.backfill("user_features", day(lo), day(min(lo + 3, 10)))
            (r,) = fl.sync()
            assert r.rows == fl.read("user_features").num_rows
            states.append(online_state(fl, range(1, 41)))
    assert states[0] == states[1] and len(states[0]) == 40


def test_batch_days_must_not_be_negative(tmp_path: Path) -> None:
    cfg = "project: scale\nnamespace: features\nbackfill:\n  batch_days: -1\n"
    with pytest.raises(ConfigError, match="batch_days"):
        featurelake.open(make_project(tmp_path / "p", config=cfg))
    _ = timedelta


# --- training set -------------------------------------------------------------------------------------


def _with_ties(fl: featurelake.Featurelake) -> None:
    """Append, in commits (files) of their own, rows repeating (user, day) keys with other values: ties
    between parts that the content rule decides (greater values win)."""
    tbl = fl.project.load_table("user_max")
    rows = tbl.scan().to_arrow().slice(0, 30)
    for delta in (5.0, -5.0):
        bumped = pc.add(rows.column("amount_max_1d"), delta)
        tbl = fl.project.load_table("user_max")
        tbl.append(rows.set_column(rows.schema.get_field_index("amount_max_1d"), "amount_max_1d", bumped))


def test_training_set_in_parts_equals_one_join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The view's rows joined one part at a time (engine.batch_rows) give the table and statistics of one
    join: newest match per entity row, ties between parts by content, the ttl on the final match."""
    root = two_view_project(tmp_path / "p", days=8)
    ents = training_entities(n=400, days=20)
    with featurelake.open(root) as fl:
        _with_ties(fl)
    got = []
    for rows in ("1", "1000000000"):
        monkeypatch.setenv("FEATURELAKE_ENGINE__BATCH_ROWS", rows)
        with featurelake.open(root) as fl:
            assert fl.project.config.settings.engine.batch_rows == int(rows)
            got.append(build_training_set(fl.project, ents, TRAINING_FEATURES))
    parts, whole = got
    assert parts.table.equals(whole.table, check_metadata=True)
    assert parts.stats == whole.stats
    assert whole.stats.ties["user_max"] > 0 and whole.stats.outside_ttl["user_features"] > 0
    assert 0 < whole.stats.matched["user_max"] < ents.num_rows


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), True),
        (pa.ArrowMemoryError("malloc of size 64 failed"), True),
        (
            pa.ArrowException(
                "Unknown error: Failed to launch worker thread: Resource temporarily unavailable"
            ),
            True,
        ),
        (RuntimeError("std::bad_alloc"), True),
        (RuntimeError("can't start new thread"), True),
        (pa.ArrowInvalid("Invalid: wrong column"), False),
        (ValueError("Cannot allocate memory"), False),
        (OSError("No such file or directory"), False),
    ],
)
def test_out_of_memory_is_recognised_whatever_raises_it(exc: BaseException, expected: bool) -> None:
    assert is_out_of_memory(exc) is expected


def test_stream_scan_reads_one_file_at_a_time_and_the_same_rows(tmp_path: Path) -> None:
    """PyIceberg's batch reader reads every file ahead; stream_scan asks for the next file only when the
    consumer has taken the previous one's batches, with the scan's projection, filter and types."""
    with _project(tmp_path / "p", 1) as fl:
        fl.backfill("events", day(FIRST), day(LAST))
        tbl = fl.project.load_table("events")
        scan = tbl.scan(
            row_filter=Window.parse(day(FIRST + 1), day(LAST - 1)).iceberg_filter("event_ts"),
            selected_fields=("user_id", "event_ts", "twice"),
        )
        files = len(list(scan.plan_files()))
        assert files == LAST - FIRST - 2
        calls: list[int] = []
        real = ArrowScan.to_record_batches

        def spy(self: ArrowScan, tasks: Any) -> Any:
            tasks = list(tasks)
            calls.append(len(tasks))
            return real(self, tasks)

        with mock.patch.object(ArrowScan, "to_record_batches", spy):
            reader = stream_scan(scan)
            first = reader.read_next_batch()
            assert calls == [1] and first.num_rows > 0
            rest = reader.read_all()
        assert calls == [1] * files
        got = pa.Table.from_batches([first, *rest.to_batches()]).sort_by(
            [("user_id", "ascending"), ("event_ts", "ascending")]
        )
        want = scan.to_arrow().sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
        assert got.schema == want.schema and got.equals(want)


def test_a_window_whose_source_is_small_is_computed_in_one_piece(tmp_path: Path) -> None:
    """Below backfill.batch_min_rows source rows (by the Parquet metadata), one piece is faster and fits."""
    rows = law_data(LAST + 2).num_rows
    for min_rows, pieces in ((rows, 1), (rows // 4, 4)):
        cfg = (
            f"project: scale\nnamespace: features\nbackfill:\n  batch_days: 2\n  batch_min_rows: {min_rows}\n"
        )
        root = make_project(
            tmp_path / str(min_rows), features=features(), config=cfg, data=law_data(LAST + 2)
        )
        spy = ComputeSpy()
        with featurelake.open(root) as fl:
            fl.apply()
            with spy.patch():
                fl.backfill("events", day(FIRST), day(LAST))
        assert len(spy.windows) == pieces


def test_source_rows_come_from_row_group_statistics(tmp_path: Path) -> None:
    """Row groups whose timestamps lie outside the window are not counted; the lookback widens it."""
    data = law_data(LAST + 2).sort_by("ts")
    path = tmp_path / "p" / "data" / "transactions" / "part-0.parquet"
    make_project(tmp_path / "p", features=features(), data=data.slice(0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, path, row_group_size=10)
    with featurelake.open(tmp_path / "p") as fl:
        engine = fl.project.engine
        assert isinstance(engine, LocalEngine)
        window = Window.parse(day(FIRST), day(FIRST + 1))
        ts = data.column("ts")
        inside = pc.sum(
            pc.and_(
                pc.greater_equal(ts, pa.scalar(window.start, ts.type)),
                pc.less(ts, pa.scalar(window.end, ts.type)),
            )
        ).as_py()
        got = engine.source_rows(fl.project.view("events"), window)
        # Whole row groups of 10 rows: those inside, plus at most two straddling the window's edges.
        assert got is not None and inside <= got <= inside + 18 and got < data.num_rows
        history = fl.project.view("history_a")
        read = engine.source_rows(history, source_window(history, window))
        assert read is not None and read > got  # seven more days of lookback


@pytest.mark.s3
def test_source_rows_of_parquet_objects_on_s3(s3: S3Bucket, tmp_path: Path) -> None:  # noqa: F811
    """On object storage too the source's size is read from the objects' footers (one row group a day here),
    so a small window there is computed in one piece instead of a day at a time."""
    root = s3_project(tmp_path / "p", s3)
    with featurelake.open(root) as fl:
        engine = fl.project.engine
        assert isinstance(engine, LocalEngine)
        window = Window.parse(day(2), day(5))
        ts = transactions().column("ts")
        inside = pc.sum(
            pc.and_(
                pc.greater_equal(ts, pa.scalar(window.start, ts.type)),
                pc.less(ts, pa.scalar(window.end, ts.type)),
            )
        ).as_py()
        assert engine.source_rows(fl.project.view("user_features"), window) == inside > 0
