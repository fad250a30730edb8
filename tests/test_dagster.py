"""featurelake.integrations.dagster: real Dagster in process over a small project (tests/orchestration_helpers.py).

Partitions are materialized with ``dagster.materialize`` (one day, a refused day, a range of days in one run),
and every outcome is checked on the Iceberg tables, not only in Dagster's events.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dagster as dg
import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import ConfigError
from featurelake.integrations.dagster import definitions, last_complete_day, online_key
from featurelake.lakehouse import lineage, wap
from tests.orchestration_helpers import (
    BROKEN_DAY,
    DoubleAmount,
    NanScore,
    days_of,
    main_snapshot,
    orchestrated_project,
    register_model,
    summary,
)

UF = dg.AssetKey(["features", "user_features"])
ROLLUP = dg.AssetKey(["features", "user_rollup"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return orchestrated_project(tmp_path / "proj")


@pytest.fixture
def instance() -> Any:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def _views(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    return [defs.resolve_assets_def(UF), defs.resolve_assets_def(ROLLUP)]


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], Any]:
    return {
        (e.asset_check_evaluation_data.asset_key.path[-1], e.asset_check_evaluation_data.check_name): (
            e.asset_check_evaluation_data
        )
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _materializations(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> list[dg.AssetMaterialization]:
    return [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key]


def test_partitions_checks_lineage_refusal_and_range(
    project: Path, instance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURELAKE_CODE_VERSION", "abc123")
    defs = definitions(project)
    dg.Definitions.validate_loadable(defs)  # what `dagster dev` / the daemon load: unique names, valid crons
    graph = defs.resolve_asset_graph()
    assert graph.get(ROLLUP).parent_keys == {UF}  # Source.table("features.user_features")
    assert graph.get(online_key("user_features")).parent_keys == {UF}
    assert defs.resolve_assets_def(UF).partitions_def == dg.DailyPartitionsDefinition(
        "2024-01-01", timezone="UTC"
    )

    # One day, both views: published, audited, lineage on the materialization.
    ok = dg.materialize(_views(defs), partition_key="2024-01-01", instance=instance)
    assert ok.success
    checks = _checks(ok)
    assert {name for view, name in checks if view == "user_features"} == {
        "row_count",
        "not_null_user_id",
        "not_null_event_ts",
        "unique",
        "null_rate_amount_avg_1d",
        "between_txn_count_1d",
    }
    assert all(c.passed for c in checks.values())
    assert checks[("user_features", "null_rate_amount_avg_1d")].metadata["observed"].value == "0.0"
    (mat,) = _materializations(ok, UF)
    md: dict[str, Any] = {k: v.value for k, v in mat.metadata.items()}
    with featurelake.open(project) as fl:
        sid = main_snapshot(fl, "user_features")
        assert md["snapshot_id"] == str(sid)
        props = summary(fl, "features.user_features", sid)  # type: ignore[arg-type]
        assert md["run_id"] == props[lineage.RUN_ID] == f"20240101_{md['run_id'].split('_')[1]}"
        assert md["code_version"] == props[lineage.CODE_VERSION] == "abc123"
        assert Path(md["audit_report"]).is_file() and md["audit_report"].endswith(md["run_id"] + ".json")
        table = fl.read("user_features")
        assert md["rows"] == table.num_rows > 0
        assert days_of(table) == ["2024-01-01"]
        assert days_of(fl.read("user_rollup")) == ["2024-01-01"]
        before = sid
        rollup_before = main_snapshot(fl, "user_rollup")

    # The broken day: the audit refuses, the materialization fails with the report, main does not move.
    refused = dg.materialize(_views(defs), partition_key=BROKEN_DAY, instance=instance, raise_on_error=False)
    assert not refused.success
    bad = _checks(refused)
    assert not bad[("user_features", "null_rate_amount_avg_1d")].passed
    assert bad[("user_features", "null_rate_amount_avg_1d")].metadata["observed"].value == "1.0"
    assert bad[("user_features", "row_count")].passed
    (failure,) = [e for e in refused.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None and "null rate of amount_avg_1d" in (data.description or "")
    report = Path(cast(str, data.metadata["audit_report"].value))
    assert report.is_file()
    branch = cast(str, data.metadata["branch"].value)
    assert not _materializations(refused, UF)
    assert not any(e.step_key == "features__user_rollup" for e in refused.all_events if e.is_step_start)
    with featurelake.open(project) as fl:
        assert main_snapshot(fl, "user_features") == before
        assert main_snapshot(fl, "user_rollup") == rollup_before
        assert wap.ref_snapshot_id(fl.project.load_table("user_features"), branch) == int(
            cast(str, data.metadata["branch_snapshot_id"].value)
        )
        assert days_of(fl.read("user_features")) == ["2024-01-01"]

    # A range of days is one run and one WAP backfill per view.
    ranged = dg.materialize(
        _views(defs),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2024-01-04",
            "dagster/asset_partition_range_end": "2024-01-06",
        },
    )
    assert ranged.success
    mats = _materializations(ranged, UF)
    assert sorted(cast(str, m.partition) for m in mats) == ["2024-01-04", "2024-01-05", "2024-01-06"]
    assert {m.metadata["snapshot_id"].value for m in mats} == {mats[0].metadata["snapshot_id"].value}
    with featurelake.open(project) as fl:
        props = summary(fl, "features.user_features", main_snapshot(fl, "user_features"))  # type: ignore[arg-type]
        assert props[lineage.WINDOW_START].startswith("2024-01-04")
        assert props[lineage.WINDOW_END].startswith("2024-01-07")
        assert props[lineage.RUN_ID].startswith("20240104-20240106_")
        want = ["2024-01-01", "2024-01-04", "2024-01-05", "2024-01-06"]
        assert days_of(fl.read("user_features")) == want
        assert days_of(fl.read("user_rollup")) == want
        rollup = fl.read("user_rollup").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
        base = fl.read("user_features").sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
        assert rollup["txn_count_x2"].to_pylist() == [2 * n for n in base["txn_count_1d"].to_pylist()]


def test_schedules_crons_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = orchestrated_project(tmp_path / "p")
    defs = definitions(project)
    crons = {s.name: s.cron_schedule for s in defs.schedules or []}  # type: ignore[union-attr]
    assert crons == {
        "featurelake_daily_schedule": "0 1 * * *",
        "featurelake_compaction_schedule": "0 3 * * 0",
        "featurelake_expiry_schedule": "0 2 * * *",
        "featurelake_orphans_schedule": "0 4 * * 0",
    }
    daily = defs.resolve_schedule_def("featurelake_daily_schedule")
    repo = defs.get_repository_def()
    with dg.build_schedule_context(
        repository_def=repo, scheduled_execution_time=datetime(2024, 1, 8, 1, 0, tzinfo=UTC)
    ) as ctx:
        (request,) = daily.evaluate_tick(ctx).run_requests or []
    assert request.partition_key == "2024-01-07"
    with dg.build_schedule_context(
        repository_def=repo, scheduled_execution_time=datetime(2024, 1, 1, 1, 0, tzinfo=UTC)
    ) as ctx:
        skipped = daily.evaluate_tick(ctx)
    assert not skipped.run_requests and "before orchestration.start_date" in (skipped.skip_message or "")
    assert last_complete_day(datetime(2024, 3, 1, 23, 59, tzinfo=UTC)).isoformat() == "2024-02-29"

    # featurelake.yaml and env overrides
    yaml = project / "featurelake.yaml"
    yaml.write_text(
        yaml.read_text() + "  schedules:\n    compaction: '30 5 * * 6'\n    features: '15 0 * * *'\n"
    )
    monkeypatch.setenv("FEATURELAKE_ORCHESTRATION__SCHEDULES__EXPIRY", "0 */6 * * *")
    monkeypatch.setenv("FEATURELAKE_ORCHESTRATION__START_DATE", "2024-01-05")
    defs = definitions(project)
    crons = {s.name: s.cron_schedule for s in defs.schedules or []}  # type: ignore[union-attr]
    assert crons["featurelake_compaction_schedule"] == "30 5 * * 6"
    assert crons["featurelake_daily_schedule"] == "15 0 * * *"
    assert crons["featurelake_expiry_schedule"] == "0 */6 * * *"
    assert crons["featurelake_orphans_schedule"] == "0 4 * * 0"
    partitions = defs.resolve_assets_def(UF).partitions_def
    assert partitions is not None and partitions.get_first_partition_key() == "2024-01-05"
    partitions = definitions(project, start_date="2024-01-02").resolve_assets_def(UF).partitions_def
    assert partitions is not None and partitions.get_first_partition_key() == "2024-01-02"

    monkeypatch.setenv("FEATURELAKE_ORCHESTRATION__SCHEDULES__ORPHANS", "weekly")
    with pytest.raises(ConfigError, match=r"orchestration\.schedules\.orphans.*not a cron expression"):
        definitions(project)


def test_start_date_is_required_and_predictions_are_checked(tmp_path: Path) -> None:
    project = orchestrated_project(tmp_path / "p")
    yaml = project / "featurelake.yaml"
    text = yaml.read_text()
    yaml.write_text(text.replace("orchestration:\n  start_date: 2024-01-01\n", ""))
    with pytest.raises(ConfigError, match=r"set orchestration\.start_date"):
        definitions(project)
    with pytest.raises(ConfigError, match="start_date 'yesterday' is not a date"):
        definitions(project, start_date="yesterday")
    yaml.write_text(text + "  predictions:\n    - {model: spend, view: nope}\n")
    with pytest.raises(
        ConfigError, match=r"model spend scores view 'nope', which features\.py does not define"
    ):
        definitions(project)
    # A cycle of views reading each other cannot be ordered.
    features = project / "features.py"
    features.write_text(
        features.read_text().replace(
            'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
            'Source.table("features.user_rollup", timestamp_field="event_ts")',
        )
    )
    yaml.write_text(text)
    with pytest.raises(ConfigError, match="cycle"):
        definitions(project)


def test_predictions_sync_sensor_and_maintenance(project: Path, instance: Any, tmp_path: Path) -> None:
    defs = definitions(project)
    assert not [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "predictions"]
    for day in ("2024-01-01", "2024-01-02"):
        assert dg.materialize(_views(defs), partition_key=day, instance=instance).success
    with featurelake.open(project) as fl:
        version = register_model(fl, tmp_path)

    # The registered Production model gets a daily asset after its view.
    defs = definitions(project)
    dg.Definitions.validate_loadable(defs)
    key = dg.AssetKey(["predictions", "spend"])
    assert defs.resolve_asset_graph().get(key).parent_keys == {UF}
    daily = defs.resolve_job_def("featurelake_daily")
    run = daily.execute_in_process(instance=instance, partition_key="2024-01-04")
    assert run.success
    (mat,) = _materializations(run, key)
    with featurelake.open(project) as fl:
        preds = fl.read("predictions.spend")
        assert (
            preds.num_rows
            == fl.read("user_features")
            .filter(
                [
                    d.date().isoformat() == "2024-01-04"
                    for d in fl.read("user_features")["event_ts"].to_pylist()
                ]
            )
            .num_rows
        )
        assert days_of(preds) == ["2024-01-04"]
        assert set(preds["model_version"].to_pylist()) == {version}
        current = fl.project.load_any_table("predictions.spend").current_snapshot()
        assert current is not None
        assert mat.metadata["snapshot_id"].value == str(current.snapshot_id)
        assert set(preds["run_id"].to_pylist()) == {mat.metadata["run_id"].value}

    # The sensor asks for one sync per view that was published since its last tick; the run fills the store.
    sensor = defs.resolve_sensor_def("featurelake_sync_after_publish")
    with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
        result = sensor.evaluate_tick(ctx)
    requests = {tuple(r.asset_selection or []): r for r in result.run_requests or []}
    assert set(requests) == {(online_key("user_features"),), (online_key("user_rollup"),)}
    assert {r.partition_key for r in requests.values()} == {"2024-01-04"}
    with dg.build_sensor_context(instance=instance, definitions=defs, cursor=result.cursor) as ctx:
        assert not sensor.evaluate_tick(ctx).run_requests  # nothing new since
    sync = defs.resolve_job_def("featurelake_sync")
    for r in requests.values():
        assert sync.execute_in_process(
            instance=instance, partition_key=r.partition_key, asset_selection=r.asset_selection
        ).success
    with featurelake.open(project) as fl:
        latest = fl.read("user_features").sort_by([("event_ts", "descending")]).to_pylist()[0]
        (row,) = fl.online.get(
            "user_features", [latest["user_id"]], now=latest["event_ts"] + timedelta(hours=1)
        )
        assert row.status == "PRESENT" and row.event_ts == latest["event_ts"]
        assert row.values["amount_sum_1d"] == pytest.approx(latest["amount_sum_1d"])

    # Maintenance jobs run fl.maintain on every table of the project.
    compaction = defs.resolve_job_def("featurelake_compaction").execute_in_process(instance=instance)
    assert compaction.success
    done = compaction.output_for_node("maintain_compaction")
    tables = set(done["tables"].split(", "))
    assert {"features.user_features", "features.user_rollup", "predictions.spend"} <= tables
    with featurelake.open(project) as fl:
        assert days_of(fl.read("user_features")) == ["2024-01-01", "2024-01-02", "2024-01-04"]


def test_unapplied_view_fails_the_materialization_naming_the_fix(tmp_path: Path, instance: Any) -> None:
    from tests.helpers import make_project
    from tests.orchestration_helpers import FEATURES, source_with_broken_day

    root = make_project(
        tmp_path / "p",
        features=FEATURES,
        config="project: t\norchestration:\n  start_date: 2024-01-01\n",
        data=source_with_broken_day(),
    )
    defs = definitions(root)
    result = dg.materialize(
        [defs.resolve_assets_def(UF)], partition_key="2024-01-01", instance=instance, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "featurelake apply" in str(failure.step_failure_data.error)


@pytest.mark.spark
def test_spark_engine_partition(tmp_path: Path, spark: Any, instance: Any) -> None:
    root = orchestrated_project(tmp_path / "p", engine="spark")
    defs = definitions(root)
    assert dg.materialize(
        [defs.resolve_assets_def(UF)], partition_key="2024-01-02", instance=instance
    ).success
    refused = dg.materialize(
        [defs.resolve_assets_def(UF)], partition_key=BROKEN_DAY, instance=instance, raise_on_error=False
    )
    assert not refused.success and not _checks(refused)[("user_features", "null_rate_amount_avg_1d")].passed
    with featurelake.open(root) as fl:
        assert fl.project.engine.name == "spark"
        assert days_of(fl.read("user_features")) == ["2024-01-02"]


def test_refused_prediction_models_without_one_view_and_refused_maintenance(
    project: Path, instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = definitions(project)
    assert dg.materialize(_views(defs), partition_key="2024-01-01", instance=instance).success
    with featurelake.open(project) as fl:
        register_model(fl, tmp_path, name="broken", model=NanScore())
        # A model whose features come from two views: which one to score cannot be told.
        ents = pa.table(
            {
                "user_id": pa.array([1, 2, 3], pa.int64()),
                "event_timestamp": pa.array(
                    [datetime(2024, 1, 2, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC")
                ),
            }
        )
        ts = fl.training_set(ents, ["user_features:amount_sum_1d", "user_rollup:txn_count_x2"])
        path = tmp_path / "two.pkl"
        path.write_bytes(pickle.dumps(DoubleAmount()))
        mv = fl.models.register("two_views", path, "pickle", training_set=ts)
        fl.models.promote("two_views", mv.version, "Staging")
        fl.models.promote("two_views", mv.version, "Production")

    defs = definitions(project)
    (notes,) = [v for k, v in (defs.metadata or {}).items() if k == "notes"]
    assert "model two_views: cannot tell which view to score" in cast(str, notes.value)
    keys = {k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "predictions"}
    assert keys == {dg.AssetKey(["predictions", "broken"])}

    # Every prediction is NaN: the predictions audit refuses, the materialization fails with the report.
    key = dg.AssetKey(["predictions", "broken"])
    refused = dg.materialize(
        [defs.resolve_assets_def(key)], partition_key="2024-01-01", instance=instance, raise_on_error=False
    )
    assert not refused.success
    (failure,) = [e for e in refused.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None and "audit failed" in (data.description or "")
    assert Path(cast(str, data.metadata["audit_report"].value)).is_file()
    with featurelake.open(project) as fl:
        assert fl.read("predictions.broken").num_rows == 0

    # Listed in featurelake.yaml without its view, the same model is a configuration error.
    yaml = project / "featurelake.yaml"
    yaml.write_text(yaml.read_text() + "  predictions:\n    - {model: two_views}\n")
    with pytest.raises(
        ConfigError, match=r"model two_views: cannot tell which view.*orchestration\.predictions"
    ):
        definitions(project)

    # Maintenance refusing its settings fails the job, naming them.
    monkeypatch.setenv("FEATURELAKE_MAINTENANCE__ORPHAN_MIN_AGE", "10m")
    yaml.write_text(yaml.read_text().replace("  predictions:\n    - {model: two_views}\n", ""))
    orphans = definitions(project).resolve_job_def("featurelake_orphans")
    result = orphans.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    cause = failure.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and "--orphan-min-age 0:10:00 is under 1 hour" in cause.message


@pytest.mark.parametrize("extra", ["dagster", "airflow"])
def test_missing_extras_name_their_install(extra: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{extra!r}] = None  # as if the package were not installed\n"
        "from featurelake.errors import ConfigError\n"
        "try:\n"
        f"    import featurelake.integrations.{extra}\n"
        "except ConfigError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"REFUSED featurelake.integrations.{extra} needs ")
    assert f"pip install 'featurelake[{extra}]'" in out
