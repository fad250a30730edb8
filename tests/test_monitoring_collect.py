"""Live gauges (online store keys, sync lag, model ages) measured from the real components, and the server's
metrics flushed into the local state."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

import featurelake
from featurelake import telemetry as metrics
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.serving import RegistryFlusher
from featurelake.monitoring.state import label_key
from tests.helpers import day, make_project

VIEW = "user_features"
CONFIG = "project: mon\nmonitoring:\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"


def _open(tmp_path: Path) -> featurelake.Featurelake:
    fl = featurelake.open(make_project(tmp_path / "proj", config=CONFIG))
    fl.apply()
    return fl


def _gauge(fl: featurelake.Featurelake, name: str, **labels: str) -> float | None:
    return state_of(fl.project).values_at(name, time.time() + 10 * 86400).get(label_key(labels))


def test_sync_records_keys_and_monitor_measures_lag_and_an_emptied_store(tmp_path: Path) -> None:
    with _open(tmp_path) as fl:
        # Never synced: nothing is measured, so online_store_empty cannot fire on a project without serving.
        assert fl.monitor().firing == []
        assert _gauge(fl, "featurelake_online_store_keys", view=VIEW) is None

        fl.backfill(VIEW, day(0), day(3))
        [synced] = fl.sync(VIEW)
        keys = fl.online.store.count(VIEW)
        assert keys == synced.keys > 0
        assert _gauge(fl, "featurelake_online_store_keys", view=VIEW) == keys
        assert _gauge(fl, "featurelake_online_sync_lag_snapshots", view=VIEW) == 0
        assert _gauge(fl, "featurelake_job_success_total", job="sync", view="all") == 1

        # Main moves on; until the next sync, monitor sees the store one snapshot behind.
        fl.backfill(VIEW, day(3), day(5))
        fl.monitor()
        assert _gauge(fl, "featurelake_online_sync_lag_snapshots", view=VIEW) == 1
        lag = _gauge(fl, "featurelake_online_sync_lag_seconds", view=VIEW)
        assert lag is not None and 0 <= lag < 600

        # The store loses its keys (a flushed Redis, say): critical alert, resolved by the next sync.
        fl.online.store.delete(VIEW, list(fl.online.store.keys(VIEW)))
        result = fl.monitor()
        assert [(r.name, i.labels) for r, i in result.firing] == [("online_store_empty", {"view": VIEW})]
        fl.sync(VIEW)
        after = fl.monitor()
        assert after.firing == []
        assert [(e.alert, e.status) for e in after.events] == [("online_store_empty", "resolved")]


def test_monitor_measures_model_ages_and_fires_model_too_old(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with _open(tmp_path) as fl:
        v1 = fl.models.register("churn", artifact, "pickle")
        fl.models.promote("churn", v1.version, "Staging")
        fl.models.promote("churn", v1.version, "Production")
        v2 = fl.models.register("churn", artifact, "pickle")
        fl.models.promote("churn", v2.version, "Staging")

        fresh = fl.monitor()
        assert fresh.firing == []
        age = _gauge(fl, "featurelake_model_age_hours", model="churn", stage="production")
        assert age is not None and 0 <= age < 1

        eight_days = time.time() + 8 * 86400
        result = fl.monitor(now=eight_days)
        [(rule, instance)] = result.firing
        assert rule.name == "model_too_old" and rule.severity == "info"
        assert instance.labels == {"model": "churn", "stage": "production"}  # staging is as old, not alerted
        assert instance.value == pytest.approx(8 * 24, abs=0.5)
        assert _gauge(fl, "featurelake_model_age_hours", model="churn", stage="staging") == pytest.approx(
            8 * 24, abs=0.5
        )


def test_registry_flusher_writes_only_changes_and_whole_histograms(tmp_path: Path) -> None:
    project = featurelake.open(make_project(tmp_path / "proj", config=CONFIG)).project
    metrics.observe_prediction_latency("/predict/old", 0.2)  # before the flusher: not ours
    flusher = RegistryFlusher(project, interval=0)
    assert flusher.flush() == 0

    for seconds in (0.002, 0.003, 0.7):
        metrics.observe_prediction_latency("/predict/churn", seconds)
    metrics.count_predictions("churn", "1.0.0", 3)
    written = flusher.flush(ts=1000)
    state = state_of(project)
    buckets = state.values_at("featurelake_prediction_latency_seconds_bucket", 2000)
    mine = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["endpoint"] == "/predict/churn"}
    assert len(mine) == len(metrics.LATENCY_BUCKETS) + 1  # every bucket, zeros included
    assert (mine["0.0025"], mine["0.005"], mine["0.5"], mine["1.0"], mine["+Inf"]) == (1, 2, 2, 3, 3)
    assert not any(dict(k)["endpoint"] == "/predict/old" for k in buckets)
    assert written == len(mine) + 2 + 1  # buckets, _sum and _count, predictions

    metrics.count_predictions("churn", "1.0.0", 2)
    assert flusher.flush(ts=1100) == 1  # only the counter moved
    assert state.values_at("featurelake_predictions_total", 2000) == {
        label_key({"model": "churn", "version": "1.0.0"}): 5.0
    }
    assert all(row.source == "serve" for row in state.latest())
