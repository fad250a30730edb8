"""Audits inside Write-Audit-Publish on real Iceberg tables: drift, warnings, reports, audit log, statistics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import featurelake
from featurelake.auditing import audit_log, logtable, stats_log
from featurelake.auditing.runner import AUDIT_REPORT, AUDIT_REPORT_HTML
from featurelake.errors import AuditFailed, ConfigError
from featurelake.lakehouse import wap
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions, write_source

VIEW = "user_features"
DEFAULT_CHECKS = (
    'checks=[checks.null_rate("amount_avg_1d", max=0.10), checks.between("txn_count_1d", 0, 10_000)]'
)


def project(root: Path, checks_src: str, *, data: pa.Table | None = None, config: str | None = None) -> Path:
    assert DEFAULT_CHECKS in DEFAULT_FEATURES
    return make_project(
        root,
        features=DEFAULT_FEATURES.replace(DEFAULT_CHECKS, f"checks=[{checks_src}]"),
        data=data,
        config=config,
    )


def state(fl: featurelake.Featurelake) -> tuple[int | None, list[dict[str, Any]]]:
    sid = wap.main_snapshot_id(fl.project.load_table(VIEW))
    rows = fl.read(VIEW).to_pylist()
    return sid, sorted(rows, key=lambda r: (r["user_id"], r["event_ts"]))


def add_shifted_days(root: Path, first_day: int, days: int = 3, factor: float = 6.0, **kw: Any) -> None:
    """Days whose amounts are ``factor`` times larger: a plain distribution shift, nothing null or invalid."""
    src = transactions(days=days, start=START + timedelta(days=first_day), seed=11, **kw)
    write_source(
        root,
        src.set_column(2, "amount", pc.multiply(src["amount"], factor)),
        name=f"shift-{first_day}.parquet",
    )


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a child process (exit codes, one-line errors)."""
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_here(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point in this process (no interpreter start-up): exit code, stdout, stderr."""
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(["-C", str(root), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


# --- drift blocks, warnings publish ----------------------------------------------------------------------


def test_drift_refuses_a_shifted_window_and_main_stays_unchanged(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p", 'checks.drift("amount_avg_1d"), checks.drift("amount_sum_1d", metric="ks")'
    )
    with featurelake.open(root) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(5), run_id="base")
        verdicts = {(r.check, r.column): r for r in first.report.results}
        assert verdicts[("drift", "amount_avg_1d")].status == "no-reference"
        assert "first backfill" in verdicts[("drift", "amount_avg_1d")].message
        normal = fl.backfill(VIEW, day(5), day(8), run_id="normal")
        assert all(r.status == "pass" for r in normal.report.results if r.check == "drift")
        assert normal.report.reference_snapshot_id == first.snapshot_id
        before = state(fl)

        add_shifted_days(root, 20)
        with pytest.raises(AuditFailed) as ei:
            fl.backfill(VIEW, day(20), day(23), run_id="shifted")
        msg = str(ei.value)
        assert (
            "PSI of amount_avg_1d vs main" in msg
            and "KS of amount_sum_1d" in msg
            and "main is unchanged" in msg
        )
        assert state(fl) == before
        assert "audit_shifted" in fl.project.load_table(VIEW).metadata.refs

        logged = {a.run_id: a for a in audit_log.read(fl.project, VIEW)}
        assert set(logged) == {"base", "normal", "shifted"}
        assert not logged["shifted"].passed and logged["shifted"].status == "failed"
        failed = {(c["check"], c["column"]) for c in logged["shifted"].failures}
        assert failed == {("drift", "amount_avg_1d"), ("drift", "amount_sum_1d")}
        assert logged["base"].passed and {c["status"] for c in logged["base"].checks} >= {
            "pass",
            "no-reference",
        }

    report = json.loads((root / ".featurelake/audits/user_features/shifted.json").read_text())
    assert report["status"] == "failed" and report["reference"]["snapshot_id"] == before[0]
    drift = next(r for r in report["results"] if r["column"] == "amount_avg_1d" and r["check"] == "drift")
    assert drift["observed"] > 0.2 and len(drift["details"]["new"]) == len(drift["details"]["ref"])
    assert (root / ".featurelake/audits/user_features/shifted.html").stat().st_size > 5000


def test_warn_only_failures_publish_and_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(
        tmp_path / "p", 'checks.drift("amount_avg_1d", severity="warn"), checks.not_null("amount_avg_1d")'
    )
    add_shifted_days(root, 20)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
        result = fl.backfill(VIEW, day(20), day(23), run_id="drifted")
        assert result.report.passed and result.report.status == "passed with warnings"
        assert [(w.check, w.column) for w in result.report.warnings] == [("drift", "amount_avg_1d")]
        assert "1 warning(s)" in result.report.summary()
        assert wap.main_snapshot_id(fl.project.load_table(VIEW)) == result.snapshot_id
        (entry,) = audit_log.read(fl.project, VIEW, run_id="drifted")
        assert entry.passed and entry.status == "passed with warnings" and len(entry.warnings) == 1
    proc = cli_here(capsys, root, "audits", VIEW, "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [(a["run_id"], a["status"], a["warnings"]) for a in listed] == [
        ("drifted", "passed with warnings", 1),
        ("base", "passed", 0),
    ]


# --- the report, referenced from the snapshot -----------------------------------------------------------


def test_snapshots_name_their_audit_report(tmp_path: Path) -> None:
    bad = transactions(days=2, start=START + timedelta(days=30), null_share=0.6, seed=9)
    root = project(tmp_path / "p", 'checks.null_rate("amount_avg_1d", max=0.1)')
    write_source(root, bad, name="bad.parquet")
    with featurelake.open(root) as fl:
        fl.apply()
        ok = fl.backfill(VIEW, day(0), day(3), run_id="ok")
        with pytest.raises(AuditFailed):
            fl.backfill(VIEW, day(30), day(32), run_id="bad")
        tbl = fl.project.load_table(VIEW)
        published = tbl.metadata.snapshot_by_id(ok.snapshot_id).summary.additional_properties  # type: ignore[union-attr]
        refused_tip = wap.ref_snapshot_id(tbl, "audit_bad")
        refused = tbl.metadata.snapshot_by_id(refused_tip).summary.additional_properties  # type: ignore[union-attr, arg-type]
    assert published[AUDIT_REPORT] == ".featurelake/audits/user_features/ok.json"
    assert published[AUDIT_REPORT_HTML] == ".featurelake/audits/user_features/ok.html"
    for props, run, verdict in ((published, "ok", True), (refused, "bad", False)):
        report = json.loads((root / props[AUDIT_REPORT]).read_text())
        assert report["run_id"] == run and report["passed"] is verdict
        assert (root / props[AUDIT_REPORT_HTML]).read_text().startswith("<!DOCTYPE html>")
    assert json.loads((root / refused[AUDIT_REPORT]).read_text())["snapshot_id"] == refused_tip


# --- statistics of published snapshots ------------------------------------------------------------------


def _compare_with_full_scan(fl: featurelake.Featurelake, assembled: Any) -> None:
    tbl = fl.project.load_table(VIEW)
    view = fl.project.view(VIEW)
    scanned = stats_log._profile_scan(fl.project, view, tbl, wap.main_snapshot_id(tbl), None)  # type: ignore[arg-type]
    for col, full in scanned.items():
        got = assembled.columns[col]
        assert (got.rows, got.count, got.nulls, got.min, got.max) == (
            full.rows,
            full.count,
            full.nulls,
            full.min,
            full.max,
        )
        assert got.sum == pytest.approx(full.sum)
        assert got.quantile(0.5) == pytest.approx(full.quantile(0.5), rel=0.1)


def test_statistics_of_published_snapshots_are_assembled_from_the_log(tmp_path: Path) -> None:
    root = project(tmp_path / "p", 'checks.null_rate("amount_avg_1d", max=0.1)')
    with featurelake.open(root) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(3), run_id="r1")
        fl.backfill(VIEW, day(3), day(6), run_id="r2")
        tbl = fl.project.load_table(VIEW)
        view = fl.project.view(VIEW)
        assembled = stats_log.snapshot_stats(fl.project, view, tbl, wap.main_snapshot_id(tbl))
        assert assembled.rescanned_days == 0 and assembled.rows == fl.read(VIEW).num_rows
        _compare_with_full_scan(fl, assembled)
        recorded = logtable.scan(fl.project, stats_log.TABLE)
        assert recorded is not None
        assert sorted(set(recorded["run_id"].to_pylist())) == ["r1", "r2"]
        assert recorded.num_rows == 2 * len(view.fields)

        # A later run replaces days 2..3: r1 and r2 are partly overwritten, their remaining days are read.
        fl.backfill(VIEW, day(2), day(4), run_id="r3")
        tbl = fl.project.load_table(VIEW)
        partial = stats_log.snapshot_stats(fl.project, view, tbl, wap.main_snapshot_id(tbl))
        assert partial.rescanned_days == 4  # days 0, 1 (r1) and 4, 5 (r2); r3's days come from the log
        _compare_with_full_scan(fl, partial)

        # Any older snapshot too, e.g. the first publish.
        old = stats_log.snapshot_stats(fl.project, view, tbl, first.snapshot_id)
        assert old.rows == first.rows and old.rescanned_days == 0


def test_statistics_survive_expired_history(tmp_path: Path) -> None:
    root = project(tmp_path / "p", 'checks.null_rate("amount_avg_1d", max=0.1)')
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(3), run_id="e1")
        fl.backfill(VIEW, day(3), day(6), run_id="e2")
        tbl = fl.project.load_table(VIEW)
        head = wap.main_snapshot_id(tbl)
        older = [sid for sid in wap.ancestors(tbl, head) if sid != head]
        tbl.maintenance.expire_snapshots().by_ids(older).commit()  # e1's snapshots are gone
        tbl = fl.project.load_table(VIEW)
        assert wap.ancestors(tbl, head) == [head]
        view = fl.project.view(VIEW)
        assembled = stats_log.snapshot_stats(fl.project, view, tbl, head)
        # Days 0..2 are no longer explained by any snapshot; the statistics log still names e1.
        assert assembled.rescanned_days == 0
        _compare_with_full_scan(fl, assembled)


def test_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = project(tmp_path / "p", 'checks.null_rate("amount_avg_1d", max=0.1)')
    with featurelake.open(root) as fl:
        fl.apply()
        r = fl.backfill(VIEW, day(0), day(4), run_id="s1")
    proc = cli_here(capsys, root, "stats", VIEW, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["snapshot_id"] == r.snapshot_id and out["rows"] == r.rows and out["rescanned_days"] == 0
    col = out["columns"]["amount_sum_1d"]
    assert col["count"] == r.rows and len(col["quantiles"]) == 101
    assert sum(col["histogram"]["counts"]) == pytest.approx(r.rows)
    text = cli_here(capsys, root, "stats", VIEW)
    assert text.returncode == 0 and "amount_avg_1d" in text.stdout and "median" in text.stdout
    bad = cli_here(capsys, root, "stats", VIEW, "--snapshot", "nope")
    assert bad.returncode == 2 and "no tag, branch or snapshot" in bad.stderr


# --- reference data: the same window in main, a named tag ------------------------------------------------


def test_row_count_change_compares_with_the_same_window_in_main(tmp_path: Path) -> None:
    data = transactions(days=4)
    root = project(tmp_path / "p", "checks.row_count_change(max_ratio=0.25)", data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        first = fl.backfill(VIEW, day(0), day(4), run_id="full")
        assert first.report.results[-1].status == "no-reference"
        again = fl.backfill(VIEW, day(0), day(4), run_id="same")
        assert again.report.results[-1].observed == 0.0
        before = state(fl)
        # Upstream lost most users for these days: far fewer feature rows than main holds.
        write_source(root, data.filter(pc.less(data["user_id"], 10)), name="part-0.parquet")
        with pytest.raises(AuditFailed) as ei:
            fl.backfill(VIEW, day(0), day(4), run_id="shrunk")
        assert f"{first.rows} published ->" in str(ei.value) and "limit 25.0%" in str(ei.value)
        assert state(fl) == before


def test_drift_against_a_named_tag(tmp_path: Path) -> None:
    # JS distance is noisy on small windows (see docs): ~1,200 rows a side keep it well under 0.1.
    data = transactions(days=8, users=500, rows_per_day=2500)
    root = project(
        tmp_path / "p",
        'checks.drift("amount_avg_1d", metric="js", reference="baseline", severity="warn")',
        data=data,
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(3), run_id="t0")
        nothing = fl.backfill(VIEW, day(3), day(5), run_id="t1")
        assert not nothing.report.results[-1].passed  # warn: the tag does not exist yet
        assert "reference 'baseline' is no tag, branch or snapshot" in nothing.report.results[-1].message
        tbl = fl.project.load_table(VIEW)
        first_main = next(s.snapshot_id for s in fl.history(VIEW) if s.run_id == "t0")
        tbl.manage_snapshots().create_tag(first_main, "baseline").commit()
        tagged = fl.backfill(VIEW, day(5), day(8), run_id="t2")
    drift = tagged.report.results[-1]
    assert drift.passed and drift.details is not None
    assert drift.details["reference"] == "tag baseline" and drift.details["reference_snapshot"] == first_main


# --- empty windows, NaN and infinities --------------------------------------------------------------------


def test_an_empty_window_is_refused_by_default(tmp_path: Path) -> None:
    data = transactions()
    root = project(tmp_path / "p", 'checks.null_rate("amount_avg_1d", max=0.1)', data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(4), run_id="full")
        before = state(fl)
        # The source lost days 0..1: publishing would silently delete main's rows for them.
        write_source(
            root,
            data.filter(pc.greater_equal(data["ts"], pa.scalar(START + timedelta(days=2), data["ts"].type))),
            name="part-0.parquet",
        )
        with pytest.raises(AuditFailed) as ei:
            fl.backfill(VIEW, day(0), day(2), run_id="empty")
        assert "the window holds no rows" in str(ei.value)
        assert state(fl) == before


def test_an_empty_window_can_be_configured_as_a_warning(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p", "", config="project: t\nnamespace: features\nbackfill: {empty_window: warn}\n"
    )
    with featurelake.open(root) as fl:
        fl.apply()
        result = fl.backfill(VIEW, day(40), day(42), run_id="nothing")
    assert result.rows == 0 and result.report.passed
    assert [w.check for w in result.report.warnings] == ["row_count"]


def test_nan_and_infinity_in_features(tmp_path: Path) -> None:
    src = transactions(days=3)
    amounts = src["amount"].to_pylist()
    amounts[:40] = [float("nan")] * 20 + [float("inf")] * 20
    broken = src.set_column(2, "amount", pa.array(amounts, pa.float64()))
    root = project(tmp_path / "p", 'checks.no_nan_or_inf("amount_avg_1d")', data=broken)
    with featurelake.open(root) as fl:
        fl.apply()
        before = state(fl)
        with pytest.raises(AuditFailed) as ei:
            fl.backfill(VIEW, day(0), day(3), run_id="nan")
        assert "amount_avg_1d holds" in str(ei.value) and "NaN" in str(ei.value)
        assert state(fl) == before
        report = ei.value.report
        prof = report.profile["amount_avg_1d"]  # type: ignore[attr-defined]
        assert prof.nan + prof.pos_inf > 0 and prof.max is not None and prof.max < float("inf")


# --- definitions checked at apply ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checks_src", "needles"),
    [
        ('checks.null_rate("amount_avg_7d", max=0.1)', ["unknown column 'amount_avg_7d'", "known columns"]),
        ('checks.between("txn_count_1d", 10, 1)', ["lo must be <= hi"]),
        ('checks.drift("txn_count_1d", metric="psi", reference=1.5)', ["reference must be"]),
        ('checks.sql("amount_avg_7d > 0", name="pos")', ["not valid SQL", "amount_avg_7d"]),
    ],
)
def test_bad_checks_are_refused_at_apply(tmp_path: Path, checks_src: str, needles: list[str]) -> None:
    root = project(tmp_path / "p", checks_src)
    with featurelake.open(root) as fl:
        with pytest.raises(ConfigError) as ei:
            fl.apply()
        for n in needles:
            assert n in str(ei.value)
        assert "features.py" in str(ei.value)
        assert not fl.project.catalog.table_exists(f"features.{VIEW}")


# --- the audit command: re-run a kept branch, re-render a published run ---------------------------------


def kept_drift_branch(tmp_path: Path) -> Path:
    """A project with a published run ``base`` and a run ``kept`` that drift refused (its branch kept)."""
    root = project(tmp_path / "p", 'checks.drift("amount_avg_1d")')
    add_shifted_days(root, 20)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
        with pytest.raises(AuditFailed):
            fl.backfill(VIEW, day(20), day(23), run_id="kept")
    return root


def test_audit_command_reruns_and_rerenders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = kept_drift_branch(tmp_path)
    out = tmp_path / "out" / "kept.html"
    rerun = cli(root, "audit", VIEW, "--run-id", "kept", "--html", str(out))
    assert rerun.returncode == 1 and "FAIL" in rerun.stdout and "audit failed" in rerun.stdout
    assert "PSI of amount_avg_1d" in out.read_text()
    shown = cli_here(capsys, root, "audit", VIEW, "--run-id", "base", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["run_id"] == "base" and "recorded audit" in shown.stderr
    with featurelake.open(root) as fl:
        runs = [a.run_id for a in audit_log.read(fl.project, VIEW)]
    assert runs.count("kept") == 2 and runs.count("base") == 1  # the re-run was logged, the re-render not
    per_run = cli_here(capsys, root, "audits", VIEW, "--run-id", "kept")
    assert per_run.returncode == 0 and per_run.stdout.count("audit of user_features run kept") == 2
    missing = cli_here(capsys, root, "audit", VIEW, "--run-id", "never")
    assert missing.returncode == 2 and "no branch audit_never" in missing.stderr
    unknown = cli_here(capsys, root, "audits", "nope")
    assert unknown.returncode == 2 and "unknown feature view 'nope'" in unknown.stderr
    shutil.rmtree(root / ".featurelake" / "audits")
    gone = cli_here(capsys, root, "audit", VIEW, "--run-id", "base")
    assert gone.returncode == 2 and "no branch audit_base" in gone.stderr


def test_a_branch_kept_before_the_view_gained_a_column_is_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = kept_drift_branch(tmp_path)
    src = (root / "features.py").read_text()
    src = src.replace(
        "avg(amount) AS amount_avg_1d", "avg(amount) AS amount_avg_1d, max(amount) AS amount_max"
    )
    src = src.replace('"amount_avg_1d": "double"}', '"amount_avg_1d": "double", "amount_max": "double"}')
    (root / "features.py").write_text(src)
    assert cli_here(capsys, root, "apply").returncode == 0
    with featurelake.open(root) as fl:
        before = state(fl)
    for command in ("audit", "publish"):
        got = cli_here(capsys, root, command, VIEW, "--run-id", "kept")
        assert got.returncode == 2, got.stderr
        assert (
            "branch audit_kept of features.user_features was written before view 'user_features' gained "
            "column(s) amount_max" in got.stderr
        )
        assert f"featurelake backfill {VIEW} --start {day(20)} --end {day(23)}" in got.stderr
        assert f"featurelake discard {VIEW} --run-id kept" in got.stderr
    with featurelake.open(root) as fl:
        assert state(fl) == before  # main as it was
        assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_kept") is not None  # the branch kept
    assert cli_here(capsys, root, "discard", VIEW, "--run-id", "kept").returncode == 0


@pytest.mark.parametrize(
    ("streamed", "how"),
    [
        # The branch's files do not hold exactly the window: it is read into memory as one table.
        (False, "is read into memory as one table"),
        # They do: the audit streams them (engines.local.WrittenWindow).
        (True, "the audit streams the branch's files and holds one batch of days' keys at a time"),
    ],
)
def test_a_reaudit_that_runs_out_of_memory_says_what_to_do_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool, how: str
) -> None:
    from featurelake.engines.local import LocalEngine, WrittenWindow

    root = kept_drift_branch(tmp_path)
    with featurelake.open(root) as fl:
        before = state(fl)
        tip = wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_kept")

    def exhausted(*args: Any, **kwargs: Any) -> Any:
        raise pa.ArrowMemoryError("malloc of size 1048576 failed")

    if streamed:
        monkeypatch.setattr(WrittenWindow, "audit", exhausted)
    else:
        monkeypatch.setattr(LocalEngine, "branch_window", lambda *a, **k: None)
        monkeypatch.setattr(LocalEngine, "read", exhausted)
    with featurelake.open(root) as fl:
        for attempt in (fl.audit, fl.publish):
            with pytest.raises(ConfigError) as info:
                attempt(VIEW, "kept")
            msg = str(info.value)
            assert msg.startswith(f"view '{VIEW}': out of memory re-auditing branch audit_kept "), msg
            assert how in msg and "ArrowMemoryError: malloc of size 1048576 failed" in msg
            assert f"featurelake backfill {VIEW} --start {day(20)} --end {day(23)}" in msg
            assert "backfill.batch_days" in msg and f"featurelake discard {VIEW} --run-id kept" in msg
            assert "main and the branch are unchanged" in msg
    monkeypatch.undo()
    with featurelake.open(root) as fl:
        assert state(fl) == before
        assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_kept") == tip


def test_recorded_report_is_shown_as_written_and_a_lost_page_redrawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Showing a published run's recorded audit leaves its files as they are (the page is the record); a page
    that was deleted is drawn again from the JSON, with the same text the run wrote."""
    root = project(tmp_path / "p", "")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2), run_id="base")
    reports = root / ".featurelake" / "audits" / VIEW
    page = reports / "base.html"
    page.write_text(page.read_text() + "<!-- the user's note -->")
    before = {p.name: p.read_bytes() for p in reports.iterdir()}
    assert cli_here(capsys, root, "audit", VIEW, "--run-id", "base").returncode == 0
    assert {p.name: p.read_bytes() for p in reports.iterdir()} == before
    page.unlink()
    assert cli_here(capsys, root, "audit", VIEW, "--run-id", "base").returncode == 0
    assert page.read_bytes() == before["base.html"].replace(b"<!-- the user's note -->", b"")


def test_report_json_keeps_the_seconds_the_page_shows() -> None:
    """The page shows the audit's seconds to 2 places; the JSON keeps them unrounded, so a page drawn again
    from the JSON reads the same (0.3349 s rounded to 0.335 would show as 0.34 instead of 0.33)."""
    from featurelake.validation.audit import AuditReport

    report = AuditReport(view=VIEW, run_id="r", branch="audit_r", snapshot_id=1, rows=0, results=[])
    report.seconds = 0.3349
    assert AuditReport.from_dict(json.loads(json.dumps(report.to_dict(), default=str))).seconds == 0.3349


def test_no_audits_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = project(tmp_path / "p", "")
    with featurelake.open(root) as fl:
        fl.apply()
    proc = cli_here(capsys, root, "audits", VIEW)
    assert proc.returncode == 0 and "no audits recorded for user_features yet" in proc.stdout
    assert json.loads(cli_here(capsys, root, "audits", VIEW, "--json").stdout) == []


def test_audit_log_failure_keeps_main_and_says_how_to_finish(tmp_path: Path) -> None:
    import sqlite3

    root = project(
        tmp_path / "p",
        "",
        config="project: t\nnamespace: features\ncatalog: {lock_timeout_seconds: 0.2, retries: 1}\n",
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2), run_id="first")
        before = state(fl)
    lock = sqlite3.connect(root / ".featurelake" / "catalog.db", isolation_level=None)
    original = audit_log.record

    def locked_record(project: Any, report: Any) -> int:
        lock.execute("BEGIN EXCLUSIVE")  # the branch is written; the log append finds the catalog locked
        return original(project, report)

    try:
        with featurelake.open(root) as fl, pytest.MonkeyPatch.context() as mp:
            mp.setattr(audit_log, "record", locked_record)
            with pytest.raises(featurelake.CatalogUnavailableError) as ei:
                fl.backfill(VIEW, day(2), day(4), run_id="unlogged")
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    msg = str(ei.value)
    assert "could not be logged" in msg and "main is unchanged" in msg and "--run-id unlogged" in msg
    with featurelake.open(root) as fl:
        assert state(fl) == before
        result = fl.publish(VIEW, "unlogged")
        newest = audit_log.read(fl.project, VIEW)[0]
        assert result.report.passed and newest.run_id == "unlogged" and newest.passed


def test_features_py_example_in_docs_loads(tmp_path: Path) -> None:
    src = textwrap.dedent(
        """
        checks.null_rate("amount_avg_1d", max=0.10),
        checks.between("txn_count_1d", 0, 10_000),
        checks.in_set("txn_count_1d", list(range(1000)), severity="warn"),
        checks.unique(),
        checks.row_count(min=1),
        checks.row_count_change(max_ratio=0.5),
        checks.freshness(timedelta(days=1)),
        checks.no_nan_or_inf("amount_avg_1d"),
        checks.sql("amount_sum_1d >= amount_avg_1d", name="sum_covers_avg"),
        checks.drift("amount_avg_1d", metric="psi"),
        checks.drift("amount_sum_1d", metric="ks", max=0.15, severity="warn"),
        """
    ).replace("\n", " ")
    root = project(tmp_path / "p", src)
    with featurelake.open(root) as fl:
        fl.apply()
        r = fl.backfill(VIEW, day(0), day(3), run_id="doc")
    # 11 declared + the implicit not_null(user_id), not_null(event_ts); unique() and row_count(min=1)
    # are declared, so they replace the implicit ones instead of running twice.
    assert r.report.passed and len(r.report.results) == 13
    assert {x.status for x in r.report.results} == {"pass", "no-reference"}


def test_backfill_statistics_computed_beside_the_write_equal_a_one_pass_profile(tmp_path: Path) -> None:
    from featurelake.lakehouse.window import Window
    from featurelake.validation.stats import Profiler

    root = project(tmp_path, DEFAULT_CHECKS[len("checks=[") : -1])
    with featurelake.open(root) as fl:
        fl.apply()
        res = fl.backfill(VIEW, day(0), day(3), run_id="beside")
        view = fl.project.view(VIEW)
        frame = fl.project.engine.compute(view, Window.parse(day(0), day(3)), fl.project.load_table(VIEW))
        one_pass = Profiler.for_view(view, 20_000, 0)
        fl.project.engine.audit(frame, [one_pass])
    for col, want in one_pass.result.items():
        got = res.report.profile[col]
        assert (got.rows, got.count, got.nan, got.pos_inf, got.neg_inf) == (
            want.rows,
            want.count,
            want.nan,
            want.pos_inf,
            want.neg_inf,
        ), col
        assert got.min == want.min and got.max == want.max, col
        assert got.sum == pytest.approx(want.sum, rel=1e-12), col
        assert got.quantiles and got.sample_rows == want.sample_rows, col


def test_a_branch_featurelake_did_not_write_is_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A branch named like a run's but made by hand (here at the empty snapshot `apply` commits) records no
    window: `audit` and `publish --run-id` refuse it, and main and the branch stay as they were."""
    root = project(tmp_path / "p", DEFAULT_CHECKS.removeprefix("checks=[").removesuffix("]"))
    with featurelake.open(root) as fl:
        fl.apply()
        tbl = fl.project.load_table(VIEW)
        empty = wap.main_snapshot_id(tbl)
        assert empty is not None
        wap.reset_branch(tbl, "audit_byhand", empty)
        before = state(fl)
    for command in ("audit", "publish"):
        got = cli_here(capsys, root, command, VIEW, "--run-id", "byhand")
        assert got.returncode == 2, got.stderr
        assert (
            "branch audit_byhand of features.user_features holds no backfill written by featurelake (its tip "
            "records no window), so it cannot be audited or published" in got.stderr
        )
        assert f"featurelake backfill {VIEW} --start" in got.stderr
        assert f"featurelake discard {VIEW} --run-id byhand" in got.stderr
    with featurelake.open(root) as fl:
        assert state(fl) == before
        assert wap.ref_snapshot_id(fl.project.load_table(VIEW), "audit_byhand") == empty
    assert cli_here(capsys, root, "discard", VIEW, "--run-id", "byhand").returncode == 0
    with featurelake.open(root) as fl:
        assert "audit_byhand" not in fl.project.load_table(VIEW).metadata.refs
        assert state(fl) == before
