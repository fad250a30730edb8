"""Batch prediction end to end: the same scikit-learn model as pickle, ONNX and TorchScript scores a view's
snapshot into Iceberg through Write-Audit-Publish, with lineage on every row and in the snapshot summary."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import featurelake
from featurelake.lakehouse import lineage, wap
from featurelake.prediction import table as ptable
from tests import predict_helpers as ph
from tests.helpers import START, make_project

FLAVORS = {"churn_pickle": 1e-9, "churn_onnx": 2e-6, "churn_torch": 2e-6}  # float32 runtimes: looser


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[featurelake.Featurelake, Any]]:
    """One applied project, 10 days published, the model registered three ways and promoted to Production."""
    root = make_project(tmp_path_factory.mktemp("predict") / "proj")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        mp.setenv("FEATURELAKE_CODE_VERSION", "abc123")
        with featurelake.open(root) as fl:
            fl.apply()
            ph.published_project(fl)
            model, _ = ph.register_three(fl, root.parent / "artifacts")
            yield fl, model


@pytest.fixture(autouse=True)
def _code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELAKE_CODE_VERSION", "abc123")


def latest_rows(fl: featurelake.Featurelake, snapshot_id: int) -> dict[int, dict[str, Any]]:
    """The latest row of each user in the view at ``snapshot_id``, computed in plain Python."""
    out: dict[int, dict[str, Any]] = {}
    for r in fl.read("user_features", snapshot_id=snapshot_id).to_pylist():
        best = out.get(r["user_id"])
        if best is None or r["event_ts"] > best["event_ts"]:
            out[r["user_id"]] = r
    return out


def run_rows(fl: featurelake.Featurelake, table: str, run_id: str) -> list[dict[str, Any]]:
    rows = fl.project.catalog.load_table(table).scan().to_arrow().to_pylist()
    return [r for r in rows if r["run_id"] == run_id]


def expected(model: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    x = np.array([[float(r[c]) for c in ph.COLUMNS] for r in rows])
    return np.asarray(model.predict_proba(x)[:, 1])


def test_same_model_three_flavors_same_predictions_with_lineage_on_every_row(
    scored: tuple[featurelake.Featurelake, Any],
) -> None:
    fl, model = scored
    main = wap.main_snapshot_id(fl.project.load_table("user_features"))
    assert main is not None
    latest = latest_rows(fl, main)
    by_flavor: dict[str, dict[int, float]] = {}
    for name, tol in FLAVORS.items():
        result = fl.predict(name, "user_features")
        assert result.table == f"predictions.{name}" and result.rows == len(latest) == 40
        assert result.feature_snapshot_id == main and result.model_version == "1.0.0"
        assert result.report.passed
        assert {r.check for r in result.report.results} == {"row_count", "unique", "null_rate", "between"}
        rows = run_rows(fl, result.table, result.run_id)
        assert len(rows) == result.rows
        for r in rows:  # lineage on every row, and each row is the entity's latest feature row
            assert r["model_name"] == name
            assert r["model_version"] == "1.0.0"
            assert r["feature_snapshot_id"] == main
            assert r["run_id"] == result.run_id
            assert r["predicted_at"] == result.predicted_at
            assert r["event_ts"] == latest[r["user_id"]]["event_ts"]
        want = expected(model, [latest[r["user_id"]] for r in rows])
        got = np.array([r["prediction"] for r in rows])
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        assert ((got >= 0) & (got <= 1)).all()
        by_flavor[name] = {r["user_id"]: r["prediction"] for r in rows}
        # The snapshot main now points at carries the same lineage, plus code-version.
        tbl = fl.project.catalog.load_table(result.table)
        snap = tbl.metadata.snapshot_by_id(result.snapshot_id)
        assert snap is not None and snap.summary is not None
        props = snap.summary.additional_properties
        assert props[lineage.CODE_VERSION] == "abc123"
        assert props[lineage.RUN_ID] == result.run_id
        assert props[lineage.PIPELINE_USER] == "test-user"
        assert props[ptable.MODEL_NAME] == name and props[ptable.MODEL_VERSION] == "1.0.0"
        assert props[ptable.FEATURE_SNAPSHOT] == str(main)
        assert props[ptable.PREDICTED_AT] == result.predicted_at.isoformat()
        assert props[lineage.VIEW] == "user_features"
        assert set(tbl.metadata.refs) == {"main"}  # the run's audit branch is gone once published
    users = sorted(by_flavor["churn_pickle"])
    for name in ("churn_onnx", "churn_torch"):
        np.testing.assert_allclose(
            [by_flavor[name][u] for u in users], [by_flavor["churn_pickle"][u] for u in users], atol=2e-6
        )


def test_window_scores_every_row_and_snapshot_time_travel(
    scored: tuple[featurelake.Featurelake, Any],
) -> None:
    fl, model = scored
    history = fl.history("user_features")
    first = next(h for h in history if h.run_id == "first")
    rows_first = fl.read("user_features", snapshot_id=first.snapshot_id).to_pylist()
    lo, hi = START + timedelta(days=1), START + timedelta(days=3)
    in_window = [r for r in rows_first if lo <= r["event_ts"] < hi]
    result = fl.predict(
        "churn_pickle@1.0.0", snapshot_id=first.snapshot_id, start=lo, end=hi, output="churn_window"
    )
    assert result.mode == "window" and result.table == "predictions.churn_window"
    assert result.view == "user_features"  # inferred from the model's signature
    rows = run_rows(fl, result.table, result.run_id)
    assert len(rows) == len(in_window) == result.rows
    assert {(r["user_id"], r["event_ts"]) for r in rows} == {(r["user_id"], r["event_ts"]) for r in in_window}
    assert {r["feature_snapshot_id"] for r in rows} == {first.snapshot_id}
    feats = {(r["user_id"], r["event_ts"]): r for r in in_window}
    np.testing.assert_allclose(
        [r["prediction"] for r in rows],
        expected(model, [feats[(r["user_id"], r["event_ts"])] for r in rows]),
        atol=1e-9,
    )


def test_as_of_where_and_max_age_select_the_entities(scored: tuple[featurelake.Featurelake, Any]) -> None:
    fl, _ = scored
    history = fl.history("user_features")
    first = next(h for h in history if h.run_id == "first")
    assert first.published_at is not None
    # as of the first publish: the view held days 0..4 only
    res = fl.predict("churn_onnx", "user_features", as_of=first.published_at, output="churn_asof")
    assert res.feature_snapshot_id == first.snapshot_id
    latest = latest_rows(fl, first.snapshot_id)
    rows = run_rows(fl, res.table, res.run_id)
    assert {r["user_id"]: r["event_ts"] for r in rows} == {u: r["event_ts"] for u, r in latest.items()}

    main = wap.main_snapshot_id(fl.project.load_table("user_features"))
    assert main is not None
    now_latest = latest_rows(fl, main)
    res = fl.predict("churn_onnx", where="txn_count_1d >= 6 AND amount_avg_1d > 20", output="churn_where")
    want = {u for u, r in now_latest.items() if r["txn_count_1d"] >= 6 and r["amount_avg_1d"] > 20}
    assert 0 < len(want) < len(now_latest)
    assert {r["user_id"] for r in run_rows(fl, res.table, res.run_id)} == want


def test_max_age_drops_entities_whose_latest_row_is_stale(tmp_path: Path) -> None:
    """``--max-age`` is measured back from now (or --as-of); data here ends yesterday."""
    from tests.helpers import transactions

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=10)
    root = make_project(tmp_path / "proj", data=transactions(users=300, rows_per_day=40, start=start))
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", start.date().isoformat(), today.date().isoformat(), run_id="all")
        ts = ph.training_set(fl)
        fl.models.register(
            "fresh", ph.export_pickle(ph.fit(ts), tmp_path / "m.pkl"), "pickle", training_set=ts
        )
        main = wap.main_snapshot_id(fl.project.load_table("user_features"))
        assert main is not None
        latest = latest_rows(fl, main)
        res = fl.predict("fresh@latest", max_age="3d")
        cutoff = res.predicted_at - timedelta(days=3)
        fresh = {u for u, r in latest.items() if r["event_ts"] >= cutoff}
        assert 0 < len(fresh) < len(latest)
        assert {r["user_id"] for r in run_rows(fl, res.table, res.run_id)} == fresh
        assert res.rows == len(fresh)


def test_runs_append_and_a_used_run_id_is_refused(scored: tuple[featurelake.Featurelake, Any]) -> None:
    fl, _ = scored
    a = fl.predict("churn_pickle", output="churn_runs", run_id="run_a")
    b = fl.predict("churn_pickle", output="churn_runs", run_id="run_b")
    tbl = fl.project.catalog.load_table("predictions.churn_runs")
    assert b.previous_snapshot_id == a.snapshot_id
    runs = [r["run_id"] for r in tbl.scan().to_arrow().to_pylist()]
    assert runs.count("run_a") == a.rows and runs.count("run_b") == b.rows
    before = wap.main_snapshot_id(tbl)
    with pytest.raises(
        featurelake.UsageError, match=r"run id run_a already exists in predictions\.churn_runs"
    ):
        fl.predict("churn_pickle", output="churn_runs", run_id="run_a")
    assert wap.main_snapshot_id(fl.project.catalog.load_table("predictions.churn_runs")) == before


def test_publish_rebases_onto_a_main_that_moved(scored: tuple[featurelake.Featurelake, Any]) -> None:
    """Run A writes and audits its branch; run B publishes first; A's publish re-appends onto B, re-audits."""
    from featurelake.jobs.batch_predict import _properties
    from featurelake.prediction.backend import LocalScoring
    from featurelake.prediction.plan import plan_prediction
    from featurelake.prediction.request import PredictRequest

    fl, _ = scored
    project = fl.project
    plan = plan_prediction(
        project, fl.models, PredictRequest("churn_pickle", output="churn_race", run_id="slow")
    )
    props = _properties(project, plan)

    class Quiet:
        def phase(self, message: str) -> None: ...
        def rows(self, done: int) -> None: ...

    stats = LocalScoring(project).score_and_write(fl.models, plan, props, Quiet())
    checks = ptable.audit_checks(stats.rows, "user_id", "event_ts", (0.0, 1.0), 0.0)

    def audit() -> Any:
        return ptable.audit_branch(project, plan.output, "slow", checks, "user_id", "event_ts")

    assert audit().passed
    fast = fl.predict("churn_pickle", output="churn_race", run_id="fast")  # main moves under run "slow"
    published, reaudited = ptable.publish(project, plan.output, "slow", props, 1000, audit)
    plan.flavor.close()
    assert published.rebases == 1 and reaudited is not None and reaudited.passed
    rows = project.catalog.load_table("predictions.churn_race").scan().to_arrow().to_pylist()
    assert sum(r["run_id"] == "fast" for r in rows) == fast.rows == 40
    assert sum(r["run_id"] == "slow" for r in rows) == stats.rows == 40  # exactly once, nothing lost
    tbl = project.catalog.load_table("predictions.churn_race")
    assert wap.is_ancestor(tbl, fast.snapshot_id, wap.main_snapshot_id(tbl))
    assert set(tbl.metadata.refs) == {"main"}


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI entry point in this process (exit code, stdout, stderr): no interpreter and torch start-up."""
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(["-C", str(root), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_predict_prints_a_summary_and_json(
    scored: tuple[featurelake.Featurelake, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fl, _ = scored
    root = fl.project.root
    done = cli(
        capsys, root, "predict", "churn_onnx@production", "--view", "user_features", "--output", "churn_cli"
    )
    assert done.returncode == 0, done.stderr
    assert "published predictions.churn_cli" in done.stdout and "40 predictions" in done.stdout
    assert "model churn_onnx 1.0.0 (onnx)" in done.stdout and "rows/s" in done.stdout
    assert "audit passed" in done.stdout
    assert "scoring user_features@" in done.stderr  # progress phases (stderr is not a terminal here)
    done = cli(capsys, root, "predict", "churn_torch", "--output", "churn_cli", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == "published" and body["rows"] == 40 and body["flavor"] == "torchscript"
    assert body["audit"]["passed"] is True and body["rows_per_second"] > 0
    tbl = fl.project.catalog.load_table("predictions.churn_cli")
    assert len(tbl.scan().to_arrow()) == 80 and pa.types.is_float64(
        tbl.schema().as_arrow().field("prediction").type
    )


def test_a_publish_that_keeps_losing_the_race_leaves_nothing_behind(
    scored: tuple[featurelake.Featurelake, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurelake.jobs.batch_predict import _properties
    from featurelake.prediction.backend import LocalScoring
    from featurelake.prediction.plan import plan_prediction
    from featurelake.prediction.request import PredictRequest

    monkeypatch.setenv("FEATURELAKE_BACKFILL__PUBLISH_ATTEMPTS", "1")  # no room for the rebase
    with featurelake.open(scored[0].project.root) as fl:
        project = fl.project
        plan = plan_prediction(
            project, fl.models, PredictRequest("churn_onnx", output="churn_lost", run_id="lost")
        )
        props = _properties(project, plan)

        class Quiet:
            def phase(self, message: str) -> None: ...
            def rows(self, done: int) -> None: ...

        LocalScoring(project).score_and_write(fl.models, plan, props, Quiet())
        plan.flavor.close()
        winner = fl.predict("churn_onnx", output="churn_lost", run_id="winner")
        checks = ptable.audit_checks(40, "user_id", "event_ts", (0.0, 1.0), 0.0)
        with pytest.raises(
            featurelake.ConflictError, match=r"could not publish predictions\.churn_lost run lost"
        ):
            ptable.publish(
                project,
                plan.output,
                "lost",
                props,
                1000,
                lambda: ptable.audit_branch(project, plan.output, "lost", checks, "user_id", "event_ts"),
            )
        tbl = project.catalog.load_table("predictions.churn_lost")
        assert wap.main_snapshot_id(tbl) == winner.snapshot_id  # main is the winner's, untouched
        assert set(tbl.metadata.refs) == {"main"}
        assert {r["run_id"] for r in tbl.scan().to_arrow().to_pylist()} == {"winner"}
