"""The metric catalog, the one registry, the recorder and the local metrics state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from featurelake import telemetry as metrics
from featurelake.monitoring.recorder import Recorder
from featurelake.monitoring.state import MetricsState, Update, label_key

ISSUE_METRICS = {
    "featurelake_predictions_total": ("counter", ("model", "version")),
    "featurelake_job_success_total": ("counter", ("job", "view")),
    "featurelake_job_failure_total": ("counter", ("job", "view", "reason")),
    "featurelake_audit_failures_total": ("counter", ("view", "check")),
    "featurelake_rows_written_total": ("counter", ("job", "table")),
    "featurelake_feature_null_rate": ("gauge", ("view", "feature", "published")),
    "featurelake_feature_drift_score": ("gauge", ("view", "feature")),
    "featurelake_prediction_mean": ("gauge", ("model",)),
    "featurelake_model_age_hours": ("gauge", ("model", "stage")),
    "featurelake_online_store_keys": ("gauge", ("view",)),
    "featurelake_online_sync_lag_snapshots": ("gauge", ("view",)),
    "featurelake_online_sync_lag_seconds": ("gauge", ("view",)),
    # Issue 19 item 5: written by `featurelake consistency`.
    "featurelake_online_consistency_mismatch_ratio": ("gauge", ("view", "store")),
    # Issue 19 item 4: written by `featurelake ingest`.
    "featurelake_stream_lag_seconds": ("gauge", ("view",)),
    "featurelake_stream_messages_total": ("counter", ("view", "outcome")),
    "featurelake_last_success_timestamp_seconds": ("gauge", ("job", "view")),
    "featurelake_prediction_latency_seconds": ("histogram", ("endpoint",)),
    "featurelake_job_duration_seconds": ("histogram", ("job",)),
}


def test_catalog_has_every_metric_of_the_issue_with_its_labels() -> None:
    for name, (kind, labels) in ISSUE_METRICS.items():
        assert (metrics.SPECS[name].kind, metrics.SPECS[name].labels) == (kind, labels), name
    # One addition, documented: the drift rule compares each score with its own check's limit.
    assert set(metrics.SPECS) - set(ISSUE_METRICS) == {"featurelake_feature_drift_threshold"}


def test_every_metric_is_exposed_by_the_one_registry() -> None:
    metrics.observe_prediction_latency("/predict/m", 0.003)
    metrics.count_predictions("m", "1.0.0", 5)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, spec in metrics.SPECS.items():
        family = families[name.removesuffix("_total")]
        assert family.type == spec.kind
        assert family.documentation == spec.help
    latency = families["featurelake_prediction_latency_seconds"]
    les = {s.labels["le"] for s in latency.samples if s.name.endswith("_bucket")}
    assert "0.5" in les and "+Inf" in les  # the rule's 500 ms is a bucket bound, not an interpolation


def test_recorder_refuses_wrong_labels_and_kinds() -> None:
    rec = Recorder("test")
    with pytest.raises(ValueError, match="takes labels job, view, got job"):
        rec.inc("featurelake_job_success_total", {"job": "x"})
    with pytest.raises(ValueError, match="is a gauge, not a counter"):
        rec.inc("featurelake_online_store_keys", {"view": "v"})
    with pytest.raises(KeyError, match="unknown metric 'featurelake_nope': known metrics are"):
        rec.set("featurelake_nope", {}, 1)
    assert rec.updates == []


def _state(tmp_path: Path, **kw: float) -> MetricsState:
    return MetricsState(tmp_path / "metrics.db", **kw)


def test_counters_accumulate_across_flushes_and_histograms_store_buckets(tmp_path: Path) -> None:
    state = _state(tmp_path)
    for ts in (100.0, 200.0):
        rec = Recorder("backfill")
        rec.inc("featurelake_rows_written_total", {"job": "backfill", "table": "t"}, 10)
        rec.inc("featurelake_rows_written_total", {"job": "backfill", "table": "t"}, 5)
        rec.observe("featurelake_job_duration_seconds", {"job": "backfill"}, 3.0)
        state.record(rec.updates, rec.source, ts=ts)
    rows = state.values_at("featurelake_rows_written_total", 1000)
    assert rows == {label_key({"job": "backfill", "table": "t"}): 30.0}
    assert state.values_at("featurelake_rows_written_total", 150) == {
        label_key({"job": "backfill", "table": "t"}): 15.0
    }
    assert state.values_at("featurelake_rows_written_total", 50) == {}
    buckets = {
        dict(k)["le"]: v for k, v in state.values_at("featurelake_job_duration_seconds_bucket", 1000).items()
    }
    assert buckets["1.0"] == 0 and buckets["5.0"] == 2 and buckets["+Inf"] == 2
    assert set(buckets) == {*(str(float(b)) for b in metrics.JOB_DURATION_BUCKETS), "+Inf"}
    assert state.values_at("featurelake_job_duration_seconds_sum", 1000) == {
        label_key({"job": "backfill"}): 6.0
    }


def test_pruning_keeps_the_baseline_sample_of_every_window(tmp_path: Path) -> None:
    state = _state(tmp_path, retention_seconds=3600)
    key = label_key({"job": "j", "table": "t"})
    for minute in range(0, 300, 10):
        state.record(
            [
                Update(
                    "inc",
                    "featurelake_rows_written_total",
                    "featurelake_rows_written_total",
                    key,
                    1,
                    "counter",
                )
            ],
            "j",
            ts=minute * 60.0,
        )
    # Pruning ran on the first write only (it runs at most hourly); force one more at the end.
    state.record([], "j")
    with state._connect(write=True) as con:
        state._maybe_prune(con, 300 * 60.0)
    assert state.sample_count() < 30
    # The value an hour before the end is still known exactly (the newest sample before the cutoff stays).
    assert state.values_at("featurelake_rows_written_total", 240 * 60.0) == {key: 25.0}
    assert state.values_at("featurelake_rows_written_total", 300 * 60.0) == {key: 30.0}


def test_concurrent_processes_lose_no_counter_increment(tmp_path: Path) -> None:
    db = tmp_path / "metrics.db"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from featurelake.monitoring.recorder import Recorder\n"
        "from featurelake.monitoring.state import MetricsState\n"
        "state = MetricsState(Path(sys.argv[1]))\n"
        "for _ in range(10):\n"
        "    rec = Recorder('p')\n"
        "    rec.inc('featurelake_job_success_total', {'job': 'j', 'view': 'v'})\n"
        "    state.record(rec.updates, 'p')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)]) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    total = MetricsState(db).values_at("featurelake_job_success_total", 1e12)
    assert total == {label_key({"job": "j", "view": "v"}): 30.0}


def test_a_clock_stepping_back_between_writers_loses_no_increment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer that waited for the lock reads an earlier time than the one before it (an NTP step back,
    another clock): its sample must still be the newest of the series, or its increment is hidden."""
    from featurelake.monitoring import state as state_module

    state = _state(tmp_path)
    key = label_key({"job": "j", "view": "v"})
    for now, value in ((1000.0, 5.0), (999.5, 7.0), (1001.0, 9.0)):
        monkeypatch.setattr(state_module, "_clock", lambda now=now: now)
        rec = Recorder("p")
        rec.inc("featurelake_job_success_total", {"job": "j", "view": "v"})
        rec.set("featurelake_online_store_keys", {"view": "v"}, value)
        state.record(rec.updates, "p")
    assert state.values_at("featurelake_job_success_total", 1e12) == {key: 3.0}
    assert state.values_at("featurelake_online_store_keys", 1e12) == {label_key({"view": "v"}): 9.0}
    # The stepped-back sample was stamped at its predecessor's time, not before it; a later clock resumes.
    assert state.values_at("featurelake_job_success_total", 1000.0) == {key: 2.0}
    assert state.values_at("featurelake_online_store_keys", 1000.0) == {label_key({"view": "v"}): 7.0}
    # Explicit times (synthetic histories, `monitor --now`) are kept as given.
    state.record([Update("inc", "featurelake_job_success_total", "featurelake_job_success_total", key, 1.0, "counter")], "p", ts=500.0)  # fmt: skip
    assert state.values_at("featurelake_job_success_total", 600.0) == {key: 4.0}
