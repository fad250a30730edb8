"""Write-Audit-Publish: main only ever moves forward to audited data, and every commit carries lineage."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.exceptions import CommitFailedException

import featurelake
from featurelake.auditing import audit_log
from featurelake.errors import AuditFailed, StorageUnavailableError, UsageError
from featurelake.lakehouse import compat, lineage, wap
from tests.helpers import START, day, make_project, transactions, write_source


def main_id(fl: featurelake.Featurelake) -> int | None:
    return wap.main_snapshot_id(fl.project.load_table("user_features"))


def sorted_rows(table: pa.Table) -> list[dict]:
    return table.sort_by([("user_id", "ascending"), ("event_ts", "ascending")]).to_pylist()


def expected_days(table: pa.Table) -> set[str]:
    return {d.date().isoformat() for d in table.column("event_ts").to_pylist()}


def add_corrupt_days(project_dir: Path, first_day: int, days: int = 2) -> None:
    bad = transactions(days=days, start=START + timedelta(days=first_day), null_share=0.6, seed=9)
    write_source(project_dir, bad, name=f"corrupt-{first_day}.parquet")


def test_failed_audit_leaves_main_byte_for_byte_unchanged(
    fl: featurelake.Featurelake, project_dir: Path
) -> None:
    fl.backfill("user_features", day(0), day(5), run_id="good")
    before_id, before_rows = main_id(fl), sorted_rows(fl.read("user_features"))
    add_corrupt_days(project_dir, 20)

    with pytest.raises(AuditFailed) as info:
        fl.backfill("user_features", day(20), day(22), run_id="bad")

    msg = str(info.value)
    assert "null rate of amount_avg_1d" in msg and "limit 0.1000" in msg
    assert "main is unchanged" in msg and "audit_bad" in msg
    assert main_id(fl) == before_id
    assert sorted_rows(fl.read("user_features")) == before_rows
    tbl = fl.project.load_table("user_features")
    assert "audit_bad" in tbl.metadata.refs  # kept for inspection
    report = json.loads((project_dir / ".featurelake/audits/user_features/bad.json").read_text())
    assert report["passed"] is False
    failed = [r for r in report["results"] if not r["passed"]]
    assert [r["check"] for r in failed] == ["null_rate"] and failed[0]["observed"] > 0.1
    # Re-auditing the kept branch reads it back and reaches the same verdict.
    again = fl.audit("user_features", "bad")
    assert not again.passed and again.rows == report["rows"]


def test_rerun_of_a_window_is_idempotent(fl: featurelake.Featurelake) -> None:
    first = fl.backfill("user_features", day(0), day(4))
    rows_once = sorted_rows(fl.read("user_features"))
    second = fl.backfill("user_features", day(0), day(4))
    rows_twice = sorted_rows(fl.read("user_features"))
    assert first.run_id != second.run_id
    assert rows_once == rows_twice
    keys = [(r["user_id"], r["event_ts"]) for r in rows_twice]
    assert len(keys) == len(set(keys)) == first.rows


def test_rerun_replaces_only_the_window(fl: featurelake.Featurelake, project_dir: Path) -> None:
    fl.backfill("user_features", day(0), day(10))
    before = fl.read("user_features")
    # Corrected upstream data for days 3..4 only: amounts doubled.
    src = transactions()
    doubled = src.set_column(2, "amount", pc.multiply(src.column("amount"), 2.0))
    write_source(project_dir, doubled, name="part-0.parquet")
    fl.backfill("user_features", day(3), day(5))
    after = fl.read("user_features")
    assert after.num_rows == before.num_rows
    in_window = pc.and_(
        pc.greater_equal(after["event_ts"], pa.scalar(START + timedelta(days=3), after["event_ts"].type)),
        pc.less(after["event_ts"], pa.scalar(START + timedelta(days=5), after["event_ts"].type)),
    )
    new_sum = pc.sum(after.filter(in_window)["amount_sum_1d"]).as_py()
    old_in = pc.and_(
        pc.greater_equal(before["event_ts"], pa.scalar(START + timedelta(days=3), before["event_ts"].type)),
        pc.less(before["event_ts"], pa.scalar(START + timedelta(days=5), before["event_ts"].type)),
    )
    assert new_sum == pytest.approx(2 * pc.sum(before.filter(old_in)["amount_sum_1d"]).as_py())
    outside = sorted_rows(after.filter(pc.invert(in_window)))
    assert outside == sorted_rows(before.filter(pc.invert(old_in)))


def test_lineage_on_every_snapshot(fl: featurelake.Featurelake, project_dir: Path) -> None:
    fl.backfill("user_features", day(0), day(3), run_id="a1")
    fl.backfill("user_features", day(3), day(6), run_id="a2")
    add_corrupt_days(project_dir, 30)
    with pytest.raises(AuditFailed):
        fl.backfill("user_features", day(30), day(32), run_id="a3")
    tbl = fl.project.load_table("user_features")
    snaps = tbl.metadata.snapshots
    assert len(snaps) >= 4
    by_run: dict[str, dict[str, str]] = {}
    for snap in snaps:
        assert snap.summary is not None
        props = snap.summary.additional_properties
        assert props[lineage.CODE_VERSION] == "unknown"  # the tmp project is not in git
        assert props[lineage.PIPELINE_USER] == "test-user"
        assert props[lineage.RUN_ID]
        by_run[props[lineage.RUN_ID]] = props
    assert by_run["a2"][lineage.VIEW] == "user_features"
    assert by_run["a2"][lineage.WINDOW_START] == f"{day(3)}T00:00:00+00:00"
    assert by_run["a2"][lineage.WINDOW_END] == f"{day(6)}T00:00:00+00:00"
    assert by_run["a3"][lineage.WINDOW_START].startswith(day(30))  # the refused run is traceable too
    hist = fl.history("user_features")
    assert [h.run_id for h in hist][:2] == ["a2", "a1"]
    assert all(h.on_main for h in hist)
    assert hist[0].published_at is not None and hist[0].published_at >= hist[0].committed_at


def git_project(path: Path) -> tuple[Path, str]:
    """A project whose definitions are committed to a new git repository; returns it and its HEAD."""
    proj = make_project(path)
    (proj / ".gitignore").write_text(".featurelake/\n")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(proj), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("-c", "user.email=t@e", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "defs")
    return proj, git("rev-parse", "HEAD")


def test_code_version_follows_git(tmp_path: Path) -> None:
    proj, head = git_project(tmp_path / "gitproj")
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(2), run_id="clean")
        (proj / "features.py").write_text((proj / "features.py").read_text() + "\n# edited\n")
        fl.backfill("user_features", day(2), day(4), run_id="dirty")
        versions = {h.run_id: h.code_version for h in fl.history("user_features")}
    assert versions["clean"] == head
    assert versions["dirty"] == f"{head}-dirty"


def test_a_backfill_reads_git_once_and_names_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branch, the audit-log rows and the statistics rows of one backfill name one code version, read once."""
    proj, head = git_project(tmp_path / "gitproj")
    reads: list[str] = []
    real = lineage._git_version

    def recorded(d: str) -> str:
        reads.append(d)
        return real(d)

    monkeypatch.setattr(lineage, "_git_version", recorded)
    with featurelake.open(proj) as fl:
        fl.apply()
        reads.clear()
        result = fl.backfill("user_features", day(0), day(2), run_id="once")
        assert reads == [str(proj)]
        ns = fl.project.namespace
        logs = [fl.project.catalog.load_table(f"{ns}.{t}").current_snapshot() for t in ("_audits", "_stats")]
        snap = fl.project.load_table("user_features").snapshot_by_id(result.snapshot_id)
    for s in (snap, *logs):
        assert s is not None and s.summary is not None
        assert s.summary[lineage.CODE_VERSION] == head and s.summary[lineage.RUN_ID] == "once"
    assert lineage.code_version(proj) == head and reads[-1] == str(proj)  # outside a job: read every time


def test_the_code_version_read_early_runs_git_on_a_thread_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    proj, head = git_project(tmp_path / "gitproj")
    threads: list[str] = []
    real = lineage._git_version

    def recorded(d: str) -> str:
        threads.append(threading.current_thread().name)
        return real(d)

    monkeypatch.setattr(lineage, "_git_version", recorded)
    lineage.read_code_version_early(proj)  # outside a job: nothing to prepare
    assert threads == []
    with lineage.one_code_version(proj):
        lineage.read_code_version_early(proj)
        lineage.read_code_version_early(proj)  # once is enough
        assert lineage.code_version(proj) == head and lineage.code_version(proj) == head
    assert threads == ["featurelake-code-version"]
    monkeypatch.setenv("FEATURELAKE_CODE_VERSION", "pinned")
    with lineage.one_code_version(proj):
        lineage.read_code_version_early(proj)
        assert lineage.code_version(proj) == "pinned"
    assert threads == ["featurelake-code-version"]


def test_time_travel_by_snapshot_and_timestamp(fl: featurelake.Featurelake) -> None:
    first = fl.backfill("user_features", day(0), day(3))
    old_rows = sorted_rows(fl.read("user_features"))
    second = fl.backfill("user_features", day(3), day(6))
    assert fl.read("user_features").num_rows == first.rows + second.rows

    assert sorted_rows(fl.read("user_features", snapshot_id=first.snapshot_id)) == old_rows
    hist = {h.snapshot_id: h for h in fl.history("user_features")}
    published = hist[first.snapshot_id].published_at
    assert published is not None
    assert sorted_rows(fl.read("user_features", as_of=published)) == old_rows
    assert sorted_rows(fl.read("user_features", as_of=published.isoformat())) == old_rows
    with pytest.raises(UsageError, match="no data at"):
        fl.read("user_features", as_of="2000-01-01")
    with pytest.raises(UsageError, match="does not exist"):
        fl.read("user_features", snapshot_id=12345)


def test_publish_rebases_when_main_moved(fl: featurelake.Featurelake) -> None:
    """Run A forks, run B publishes in between, A must rebase, re-audit and keep B's rows."""
    inner: list = []

    def progress(msg: str) -> None:
        if msg.startswith("audit passed") and not inner:
            inner.append(fl.backfill("user_features", day(5), day(10), run_id="b"))

    a = fl.backfill("user_features", day(0), day(5), run_id="a", progress=progress)
    b = inner[0]
    assert a.rebases == 1 and any("rebased" in n for n in a.notes)
    tbl = fl.project.load_table("user_features")
    assert wap.is_ancestor(tbl, b.snapshot_id, a.snapshot_id)  # B's commit stays in main's history
    data = fl.read("user_features")
    assert data.num_rows == a.rows + b.rows
    assert expected_days(data) == {day(i) for i in range(10)}
    assert "audit_a" not in tbl.metadata.refs and "audit_b" not in tbl.metadata.refs


def test_a_rebase_that_runs_out_of_memory_says_what_to_do(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A must rebase because B published meanwhile, and writing A's window again runs out of memory: a
    ConfigError naming the setting and the way out (was the raw MemoryError); main keeps B's publish only,
    and the advice, followed, publishes A's window."""
    from featurelake.errors import ConfigError
    from featurelake.jobs import backfill as job

    real = job._write_and_audit
    calls: list[int] = []
    inner: list[job.BackfillResult] = []

    def write_and_audit(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:  # A, B, then A again onto B's main
            raise pa.ArrowMemoryError("malloc of size 1048576 failed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    def progress(msg: str) -> None:
        if msg.startswith("audit passed") and not inner:
            inner.append(fl.backfill("user_features", day(5), day(10), run_id="b"))

    monkeypatch.setattr(job, "_write_and_audit", write_and_audit)
    with pytest.raises(ConfigError) as info:
        fl.backfill("user_features", day(0), day(5), run_id="a", progress=progress)
    msg = str(info.value)
    assert msg.startswith("view 'user_features': out of memory writing the backfill "), msg
    assert "again onto main after another run published to it" in msg
    assert "ArrowMemoryError: malloc of size 1048576 failed" in msg and "backfill.batch_days" in msg
    assert "main holds only the other run's publish" in msg
    assert "featurelake discard user_features --run-id a" in msg and "new --run-id" in msg
    assert main_id(fl) == inner[0].snapshot_id
    assert expected_days(fl.read("user_features")) == {day(i) for i in range(5, 10)}
    monkeypatch.undo()
    fl.discard("user_features", "a")
    fl.backfill("user_features", day(0), day(5))
    assert expected_days(fl.read("user_features")) == {day(i) for i in range(10)}


def test_stale_handle_cannot_rewind_main(fl: featurelake.Featurelake) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="x")
    stale = fl.project.load_table("user_features")
    wap.create_branch(stale, "audit_manual")
    stale = fl.project.load_table("user_features")  # sees the branch, main at x
    fl.backfill("user_features", day(2), day(4), run_id="y")  # main moves on
    head = main_id(fl)
    # The branch forked before y: not a fast-forward of the fresh main, and the stale handle's commit is refused.
    fresh = fl.project.load_table("user_features")
    assert wap.fast_forward(fresh, "audit_manual") is False
    with pytest.raises(CommitFailedException):
        stale.manage_snapshots().set_current_snapshot(ref_name="audit_manual").commit()
    assert main_id(fl) == head


def test_publish_moves_main_and_removes_the_branch_in_one_commit(fl: featurelake.Featurelake) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="x")
    tbl = fl.project.load_table("user_features")
    wap.create_branch(tbl, "audit_manual")
    tbl = fl.project.load_table("user_features")
    one = tbl.scan().to_arrow().slice(0, 1)
    tbl.append(one, snapshot_properties={lineage.RUN_ID: "manual"}, branch="audit_manual")
    tip = wap.ref_snapshot_id(tbl, "audit_manual")
    stale = fl.project.load_table("user_features")  # main at x, the branch at its tip
    versions = len(stale.metadata.metadata_log)
    result = wap.publish(
        fl.project.catalog,
        fl.project.table_name("user_features"),
        "audit_manual",
        "manual",
        rebase=lambda t, base: pytest.fail("main did not move"),
        drop_branch=True,
    )
    after = fl.project.load_table("user_features")
    assert result.branch_removed and result.snapshot_id == tip == main_id(fl)
    assert "audit_manual" not in after.metadata.refs
    assert len(after.metadata.metadata_log) == versions + 1  # one metadata commit for both ref changes
    # Main's requirement survives the merge: the same commit from a handle that saw the old main is refused.
    with pytest.raises(CommitFailedException):
        wap.fast_forward(stale, "audit_manual", remove=True)
    assert main_id(fl) == tip


def test_publish_kept_branch_after_fixing_the_check(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", data=transactions(null_share=0.3, seed=3))
    with featurelake.open(proj) as fl:
        fl.apply()
        before = main_id(fl)
        with pytest.raises(AuditFailed):
            fl.backfill("user_features", day(0), day(3), run_id="loose")
        assert main_id(fl) == before
    # The team decides 50% nulls are acceptable for this feature: relax the check, publish the kept branch.
    src = (proj / "features.py").read_text().replace("max=0.10", "max=0.50")
    (proj / "features.py").write_text(src)
    with featurelake.open(proj) as fl:
        result = fl.publish("user_features", "loose")
        assert result.report.passed and main_id(fl) == result.snapshot_id != before
        assert fl.read("user_features").num_rows == result.rows
        with pytest.raises(UsageError, match="no branch audit_loose"):
            fl.publish("user_features", "loose")


def test_keep_published_branches(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "k", config="backfill: {keep_published_branches: true}\n")
    with featurelake.open(proj) as fl:
        fl.apply()
        r = fl.backfill("user_features", day(0), day(2), run_id="kept")
        tbl = fl.project.load_table("user_features")
        assert tbl.metadata.refs["audit_kept"].snapshot_id == r.snapshot_id == main_id(fl)


def test_string_entity_keys(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "s", data=transactions(string_keys=True))
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
        data = fl.read("user_features")
    assert pa.types.is_string(data.schema.field("user_id").type) or pa.types.is_large_string(
        data.schema.field("user_id").type
    )
    assert not data.schema.field("user_id").nullable
    assert all(k.startswith("u") for k in data.column("user_id").to_pylist())


def _run_cli(proj: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurelake", "-C", str(proj), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_concurrent_backfills_in_separate_processes(tmp_path: Path) -> None:
    data = transactions(days=12, rows_per_day=300)
    proj = make_project(tmp_path / "c", data=data)
    with featurelake.open(proj) as fl:
        fl.apply()
    windows = [(day(0), day(3)), (day(3), day(6)), (day(6), day(9)), (day(9), day(12))]
    procs = [
        _run_cli(proj, "backfill", "user_features", "--start", s, "--end", e, "--json") for s, e in windows
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    with featurelake.open(proj) as fl:
        got = fl.read("user_features")
        tbl = fl.project.load_table("user_features")
        main_lineage = set(wap.ancestors(tbl, wap.main_snapshot_id(tbl)))
    assert got.num_rows == sum(r["rows"] for r in results)
    assert expected_days(got) == {day(i) for i in range(12)}
    keys = list(zip(got["user_id"].to_pylist(), got["event_ts"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys))
    # Every published run's final snapshot is in main's lineage: nothing was rewound.
    assert all(r["snapshot_id"] in main_lineage for r in results)


def _storage_down(*args: object, **kwargs: object) -> None:
    raise StorageUnavailableError("object storage failed (test)")


def test_a_failed_branch_write_leaves_no_branch_and_the_run_id_can_be_used_again(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="base")
    before = fl.project.load_table("user_features").metadata.current_snapshot_id
    with monkeypatch.context() as mp:
        mp.setattr(compat, "write_data_files", _storage_down)
        with pytest.raises(StorageUnavailableError) as caught:
            fl.backfill("user_features", day(2), day(4), run_id="again")
    message = str(caught.value)
    assert "main is unchanged" in message and "Branch audit_again was not created" in message
    tbl = fl.project.load_table("user_features")
    assert "audit_again" not in tbl.metadata.refs and tbl.metadata.current_snapshot_id == before
    assert fl.backfill("user_features", day(2), day(4), run_id="again").rows > 0


def test_a_storage_failure_after_the_branch_commit_says_to_discard_the_branch(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="base")
    before = fl.project.load_table("user_features").metadata.current_snapshot_id
    with monkeypatch.context() as mp:
        mp.setattr(audit_log, "record", _storage_down)  # the branch is written, its audit cannot be logged
        with pytest.raises(StorageUnavailableError) as caught:
            fl.backfill("user_features", day(2), day(4), run_id="kept")
    message = str(caught.value)
    assert "main is unchanged" in message
    assert (
        "To run the window again: repeat the backfill under a new --run-id (or none) and drop branch audit_kept "
        "with `featurelake discard user_features --run-id kept`" in message
    )
    tbl = fl.project.load_table("user_features")
    assert "audit_kept" in tbl.metadata.refs and tbl.metadata.current_snapshot_id == before
    # The way out works as said: the run id stays taken, a new one runs the window.
    fl.discard("user_features", "kept")
    with pytest.raises(UsageError, match="run id kept already exists"):
        fl.backfill("user_features", day(2), day(4), run_id="kept")
    assert fl.backfill("user_features", day(2), day(4), run_id="kept2").rows > 0


def test_when_the_catalog_cannot_tell_whether_the_branch_exists_both_ways_are_named(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="base")
    project, load = fl.project, fl.project.load_table
    down: list[bool] = []

    def write_fails(*args: object, **kwargs: object) -> None:
        down.append(True)  # from here on, the catalog fails too
        _storage_down()

    def load_table(name: str) -> object:
        if down:
            raise StorageUnavailableError("catalog unreachable (test)")
        return load(name)

    monkeypatch.setattr(compat, "write_data_files", write_fails)
    monkeypatch.setattr(project, "load_table", load_table)
    with pytest.raises(StorageUnavailableError) as caught:
        fl.backfill("user_features", day(2), day(4), run_id="unknown")
    assert (
        "repeat the backfill under a new --run-id (or none) and drop branch audit_unknown with "
        "`featurelake discard user_features --run-id unknown` if it was created" in str(caught.value)
    )
