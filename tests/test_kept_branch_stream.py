"""Re-auditing and publishing a kept branch on the local engine streams the branch's data files (as a batched
backfill's audit does) instead of reading the window into memory, and reports exactly what the read reports:
rows, verdicts, statistics and the sampled distributions. Where the files would not give exactly the rows the
read gives (files straddling the window, an evolved schema), the window is read as before. The memory cap
itself: tests/test_scale_memory.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.engines.local import LocalEngine, WrittenWindow
from featurelake.errors import AuditFailed
from featurelake.lakehouse import wap
from featurelake.lakehouse.window import Window
from featurelake.validation.audit import AuditReport
from tests.helpers import START, day, make_project
from tests.test_lookback import law_data

VIEW = "events"
RUN = "kept"
FEATURES = """
from featurelake import Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")
events = FeatureView(
    name="events", entity=user, source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, ts AS event_ts, amount, amount * 2 AS twice, merchant FROM source",
    fields={"amount": "double", "twice": "double", "merchant": "string"FIELDS},
    checks=[
        checks.between("amount", -20, LIMIT),
        checks.null_rate("twice", max=0.5),
        checks.sql("twice = 2 * amount", name="twice_is_twice"),
        checks.drift("amount"),
        checks.drift("merchant"),
    ],PARTITION
)
"""
#: A limit the window's amounts (up to 100) break: the backfill is refused and its branch kept.
STRICT, LOOSE = "50", "1000"
#: Small enough that the audit samples: the same sample needs the rows in the read's order.
CONFIG = "project: t\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n  audit_sample_rows: 1000\n"


def features(limit: str, partition: str = "", fields: str = "") -> str:
    text = FEATURES.replace("LIMIT", limit).replace("FIELDS", fields)
    return text.replace("PARTITION", f'\n    partition="{partition}",' if partition else "")


def kept_project(
    root: Path, *, batch_days: int = 1, partition: str = "", first: int = 0, last: int = 10
) -> Path:
    """A project whose main holds days [first - 4, first) and whose run ``kept`` of [first, last) was refused
    by its audit (its branch kept). Amounts are multiples of 1/4, so every sum is exact in any order."""
    root = make_project(
        root,
        features=features(LOOSE, partition),
        config=CONFIG.format(batch_days=batch_days),
        data=law_data(last + 2, users=150),
    )
    with featurelake.open(root) as fl:
        fl.apply()
        if first >= 4:
            fl.backfill(VIEW, day(first - 4), day(first), run_id="base")
    (root / "features.py").write_text(features(STRICT, partition))
    with featurelake.open(root) as fl, pytest.raises(AuditFailed):
        fl.backfill(VIEW, day(first), day(last), run_id=RUN)
    return root


def relax(root: Path, partition: str = "") -> None:
    """The team accepts the amounts: the kept branch now passes its audit."""
    (root / "features.py").write_text(features(LOOSE, partition))


class AuditSpy:
    """Records what the local engine audits (a WrittenWindow: the files streamed; a table: the window read)."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.real = LocalEngine.audit

    def install(self, mp: pytest.MonkeyPatch) -> AuditSpy:
        def audit(engine: LocalEngine, frame: Any, checks: list[Any]) -> Any:
            self.frames.append(frame)
            return self.real(engine, frame, checks)

        mp.setattr(LocalEngine, "audit", audit)
        return self

    @property
    def streamed(self) -> bool:
        assert self.frames
        return all(isinstance(f, WrittenWindow) for f in self.frames)


def comparable(report: AuditReport) -> dict[str, Any]:
    """Everything a report says about the rows: not when the audit ran, how long it took or snapshot ids."""
    d = report.to_dict()
    for key in ("seconds", "audited_at", "snapshot_id", "reference"):
        d.pop(key)
    for r in d["results"] + d["warnings"]:
        r.pop("message")  # names snapshot ids
        r.get("details", {}).pop("reference_snapshot", None)
    return d


def tip_window(fl: featurelake.Featurelake, run_id: str, first: int, last: int) -> WrittenWindow | None:
    tbl = fl.project.load_table(VIEW)
    tip = wap.ref_snapshot_id(tbl, wap.branch_name(run_id))
    assert tip is not None
    engine = fl.project.engine
    assert isinstance(engine, LocalEngine)
    return engine.branch_window(tbl, tip, Window.parse(day(first), day(last)), "event_ts")


def rows(fl: featurelake.Featurelake) -> list[dict[str, Any]]:
    return sorted(fl.read(VIEW).to_pylist(), key=lambda r: (r["user_id"], r["event_ts"]))


# --- streamed: the same report as the read -----------------------------------------------------------------


def test_reaudit_streams_the_branch_files_and_reports_what_the_read_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kept_project(tmp_path / "p", first=4, last=10)
    with featurelake.open(root) as fl:
        written = tip_window(fl, RUN, 4, 10)
        assert written is not None
        tbl = fl.project.load_table(VIEW)
        tip = wap.ref_snapshot_id(tbl, "audit_kept")
        plan = list(tbl.scan(row_filter=written_filter(4, 10), snapshot_id=tip).plan_files())
        # The files in the order the read concatenates them; one batch per day; every row counted.
        assert [f.file_path for f in written.files] == [t.file.file_path for t in plan]
        assert len(written.batches) == 6 and sorted(map(len, written.batches)) == [1] * 6
        assert sorted(f.file_path for f in written.files) == sorted(
            f.file_path for b in written.batches for f in b
        )
        assert (
            written.num_rows
            == fl.project.engine.read(tbl, snapshot_id=tip, row_filter=written_filter(4, 10)).num_rows
        )

        spy = AuditSpy().install(monkeypatch)
        streamed = fl.audit(VIEW, RUN)
        assert spy.streamed
        monkeypatch.setattr(LocalEngine, "branch_window", lambda *a, **k: None)
        spy.frames.clear()
        read = fl.audit(VIEW, RUN)
        assert not spy.streamed and isinstance(spy.frames[0], pa.Table)
    assert not streamed.passed and streamed.rows == read.rows == written.num_rows > 1000
    assert comparable(streamed) == comparable(read)
    (between,) = [r for r in streamed.results if r.check == "between"]
    assert between.status == "fail"


def written_filter(first: int, last: int) -> Any:
    return Window.parse(day(first), day(last)).iceberg_filter("event_ts")


@pytest.mark.parametrize("rebase", [False, True], ids=["fast-forward", "rebase"])
def test_publish_streams_the_branch_and_publishes_what_the_read_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rebase: bool
) -> None:
    """The kept run published by streaming its files gives the report and main the read gives; when main
    moved, the branch is reset onto it and the same data files are added again (nothing is rewritten)."""
    published: dict[str, tuple[Any, ...]] = {}
    for path in ("streamed", "read"):
        root = kept_project(tmp_path / path, first=4, last=10)
        relax(root)
        with featurelake.open(root) as fl, monkeypatch.context() as mp:
            if rebase:  # another run publishes after the kept one forked: the publish must rebase
                fl.backfill(VIEW, day(10), day(12), run_id="later")
            old_tip = tip_window(fl, RUN, 4, 10)
            assert old_tip is not None
            spy = AuditSpy().install(mp)
            if path == "read":
                mp.setattr(LocalEngine, "branch_window", lambda *a, **k: None)
            result = fl.publish(VIEW, RUN)
            assert spy.streamed == (path == "streamed")
            assert result.rebases == int(rebase) and result.report.passed
            main = fl.project.load_table(VIEW)
            assert wap.main_snapshot_id(main) == result.snapshot_id and "audit_kept" not in main.metadata.refs
            now = {t.file.file_path for t in main.scan(row_filter=written_filter(4, 10)).plan_files()}
            # Streamed: the branch's own files are on main (added again to the reset branch when rebased).
            assert (now == {f.file_path for f in old_tip.files}) == (path == "streamed" or not rebase)
            published[path] = (comparable(result.report), rows(fl), result.rows)
    assert published["streamed"] == published["read"]
    days = {r["event_ts"].date() for r in published["streamed"][1]}
    assert days == {(START + timedelta(days=d)).date() for d in range(0, 12 if rebase else 10)}


def test_files_spanning_days_are_audited_as_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month-partitioned window written in one piece is one file over many days, wholly inside the window:
    streamed, as one batch (uniqueness proven over the whole file), with the read's report."""
    root = kept_project(tmp_path / "p", batch_days=0, partition="month", last=10)
    with featurelake.open(root) as fl:
        written = tip_window(fl, RUN, 0, 10)
        assert written is not None and len(written.files) == 1 and len(written.batches) == 1
        streamed = fl.audit(VIEW, RUN)
        monkeypatch.setattr(LocalEngine, "branch_window", lambda *a, **k: None)
        read = fl.audit(VIEW, RUN)
    assert comparable(streamed) == comparable(read)


# --- read: when the files would not give the read's rows ---------------------------------------------------


def test_files_straddling_the_window_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a month-partitioned table written a month at a time, a window inside the month rewrites the month:
    the rest of it is written back in a file of its own, whose bounds straddle the window. The window is read,
    audited and published as before."""
    root = make_project(
        tmp_path / "p",
        features=features(LOOSE, "month"),
        config=CONFIG.format(batch_days=0),
        data=law_data(20, users=40),
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(20), run_id="month")
    (root / "features.py").write_text(features(STRICT, "month"))
    (root / "featurelake.yaml").write_text(CONFIG.format(batch_days=1))
    with featurelake.open(root) as fl:
        with pytest.raises(AuditFailed) as refused:
            fl.backfill(VIEW, day(5), day(12), run_id=RUN)
        assert tip_window(fl, RUN, 5, 12) is None
        spy = AuditSpy().install(monkeypatch)
        again = fl.audit(VIEW, RUN)
        assert not spy.streamed
    assert isinstance(refused.value.report, AuditReport)
    assert comparable(again) == comparable(refused.value.report)
    relax(root, "month")
    with featurelake.open(root) as fl:
        before = rows(fl)
        result = fl.publish(VIEW, RUN)
        assert result.report.passed and result.rows == again.rows
        assert rows(fl) == before  # the same rows written again: the rest of the month is kept


def test_a_table_whose_schema_evolved_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow reads a file by column name, PyIceberg by field id: on a table that has had another schema, the
    kept window is read, audited and published as before."""
    root = make_project(
        tmp_path / "p",
        features=features(LOOSE),
        config=CONFIG.format(batch_days=1),
        data=law_data(8, users=40),
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2), run_id="base")
    # A new feature, then a run with it that is refused and kept.
    evolved = features(STRICT, fields=', "flag": "boolean"').replace(
        "merchant FROM source", "merchant, amount > 0 AS flag FROM source"
    )
    (root / "features.py").write_text(evolved)
    with featurelake.open(root) as fl:
        fl.apply()
        assert len(fl.project.load_table(VIEW).metadata.schemas) == 2
        with pytest.raises(AuditFailed) as refused:
            fl.backfill(VIEW, day(2), day(6), run_id=RUN)
        assert tip_window(fl, RUN, 2, 6) is None
        spy = AuditSpy().install(monkeypatch)
        again = fl.audit(VIEW, RUN)
        assert not spy.streamed
    assert isinstance(refused.value.report, AuditReport)
    assert comparable(again) == comparable(refused.value.report)
    (root / "features.py").write_text(evolved.replace(f"-20, {STRICT}", f"-20, {LOOSE}"))
    with featurelake.open(root) as fl:
        result = fl.publish(VIEW, RUN)
        assert result.report.passed and result.rows == again.rows
        assert result.report.profile["flag"].count > 0 and fl.read(VIEW).num_rows > result.rows


def test_a_window_less_than_the_files_is_read(tmp_path: Path) -> None:
    """Day files are not wholly inside a window of part of a day (say, hours of one): they are not streamed."""
    root = kept_project(tmp_path / "p", first=0, last=2)
    with featurelake.open(root) as fl:
        tbl = fl.project.load_table(VIEW)
        tip = wap.ref_snapshot_id(tbl, "audit_kept")
        engine = fl.project.engine
        assert isinstance(engine, LocalEngine) and tip is not None
        hours = Window(START + timedelta(hours=6), START + timedelta(hours=18))
        assert engine.branch_window(tbl, tip, hours, "event_ts") is None
        whole = engine.branch_window(tbl, tip, Window(START, START + timedelta(days=2)), "event_ts")
        assert whole is not None and whole.num_rows > 0
