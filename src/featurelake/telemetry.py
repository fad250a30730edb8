"""Every featurelake metric, in ONE prometheus_client registry, with documented names and labels.

The server exposes :data:`REGISTRY` on ``GET /metrics`` (:func:`exposition`); batch jobs record through a
:class:`~featurelake.monitoring.recorder.Recorder`, which updates these same objects and also appends the
updates to the project's local metrics state (and pushes to a Pushgateway when configured).

Hot-path helpers for the server (no locks beyond prometheus_client's own, no I/O)::

    from featurelake import telemetry as metrics
    metrics.observe_prediction_latency("/predict/churn", 0.0021)
    metrics.count_predictions("churn", "1.0.2", n=100)
    body, content_type = metrics.exposition()

| metric | type | labels | meaning |
|---|---|---|---|
| featurelake_predictions_total | counter | model, version | predictions scored (batch or online) |
| featurelake_job_success_total | counter | job, view | jobs that finished |
| featurelake_job_failure_total | counter | job, view, reason | jobs that raised; reason from the error class |
| featurelake_audit_failures_total | counter | view, check | failed audit checks (error and warn severity) |
| featurelake_rows_written_total | counter | job, table | rows a job wrote to an Iceberg table |
| featurelake_feature_null_rate | gauge | view, feature, published | null share of a feature in the last audited rows (`published`: `true` for the last published run, `false` for the last refused or unpublished one) |
| featurelake_feature_drift_score | gauge | view, feature | last drift score (PSI / JS / KS) of a feature |
| featurelake_feature_drift_threshold | gauge | view, feature | the drift check's limit for that feature |
| featurelake_prediction_mean | gauge | model | mean of the last batch of predictions |
| featurelake_model_age_hours | gauge | model, stage | hours since the served version was registered |
| featurelake_online_store_keys | gauge | view | entity keys in the online store |
| featurelake_online_sync_lag_snapshots | gauge | view | main snapshots not yet synced online |
| featurelake_online_sync_lag_seconds | gauge | view | age of the newest unsynced main snapshot |
| featurelake_online_consistency_mismatch_ratio | gauge | view, store | share of the keys `featurelake consistency` checked whose online value differs from Iceberg main's latest (mismatched, missing, stale or extra) |
| featurelake_stream_lag_seconds | gauge | view | `featurelake ingest`: seconds from the newest event of the last micro-batch to its online visibility (to its publish on main with `--no-online`) |
| featurelake_stream_messages_total | counter | view, outcome | messages `featurelake ingest` consumed, by outcome: `written`, `duplicate` (key and event time already published), `skipped` (offset already committed), `bad` (unreadable, kept aside), `refused` (the audit refused its batch, kept aside) |
| featurelake_last_success_timestamp_seconds | gauge | job, view | Unix time of the last success |
| featurelake_prediction_latency_seconds | histogram | endpoint | server request latency |
| featurelake_job_duration_seconds | histogram | job | wall time of a job, success or failure |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

Kind = Literal["counter", "gauge", "histogram"]

#: Serving latency buckets: fine below 10 ms (the server's p99 target is a few ms), and 0.5 s exactly,
#: the ``prediction_latency_high`` threshold, so the rule's P99 is not an interpolation across it.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Batch jobs run from seconds to hours.
JOB_DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


@dataclass(frozen=True)
class MetricSpec:
    """A metric's contract: what rules, dashboards and the local state may rely on."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("featurelake_predictions_total", "counter", ("model", "version"), "Predictions scored."),
        MetricSpec("featurelake_job_success_total", "counter", ("job", "view"), "Jobs that finished."),
        MetricSpec(
            "featurelake_job_failure_total",
            "counter",
            ("job", "view", "reason"),
            "Jobs that failed, by error reason.",
        ),
        MetricSpec("featurelake_audit_failures_total", "counter", ("view", "check"), "Failed audit checks."),
        MetricSpec("featurelake_rows_written_total", "counter", ("job", "table"), "Rows written by jobs."),
        MetricSpec(
            "featurelake_feature_null_rate",
            "gauge",
            ("view", "feature", "published"),
            "Null share of a feature in the last audited rows (published: of a run that reached main).",
        ),
        MetricSpec(
            "featurelake_feature_drift_score", "gauge", ("view", "feature"), "Last drift score of a feature."
        ),
        MetricSpec(
            "featurelake_feature_drift_threshold",
            "gauge",
            ("view", "feature"),
            "Drift limit of a feature's drift check.",
        ),
        MetricSpec("featurelake_prediction_mean", "gauge", ("model",), "Mean of the last predictions."),
        MetricSpec(
            "featurelake_model_age_hours",
            "gauge",
            ("model", "stage"),
            "Hours since the model version in a stage was registered.",
        ),
        MetricSpec("featurelake_online_store_keys", "gauge", ("view",), "Entity keys in the online store."),
        MetricSpec(
            "featurelake_online_sync_lag_snapshots",
            "gauge",
            ("view",),
            "Main snapshots not yet synced to the online store.",
        ),
        MetricSpec(
            "featurelake_online_sync_lag_seconds",
            "gauge",
            ("view",),
            "Age of the oldest main snapshot not yet synced online.",
        ),
        MetricSpec(
            "featurelake_online_consistency_mismatch_ratio",
            "gauge",
            ("view", "store"),
            "Share of the checked keys whose online value differs from Iceberg main's latest.",
        ),
        MetricSpec(
            "featurelake_stream_lag_seconds",
            "gauge",
            ("view",),
            "Seconds from the newest event of the last ingested micro-batch to its online visibility.",
        ),
        MetricSpec(
            "featurelake_stream_messages_total",
            "counter",
            ("view", "outcome"),
            "Stream messages consumed by featurelake ingest, by outcome.",
        ),
        MetricSpec(
            "featurelake_last_success_timestamp_seconds",
            "gauge",
            ("job", "view"),
            "Unix time of a job's last success.",
        ),
        MetricSpec(
            "featurelake_prediction_latency_seconds",
            "histogram",
            ("endpoint",),
            "Server request latency.",
            LATENCY_BUCKETS,
        ),
        MetricSpec(
            "featurelake_job_duration_seconds",
            "histogram",
            ("job",),
            "Wall time of a job.",
            JOB_DURATION_BUCKETS,
        ),
    )
}

#: The one registry every featurelake metric lives in (not prometheus_client's global default, so that
#: embedding featurelake in another app does not mix its metrics into the host's).
REGISTRY = CollectorRegistry(auto_describe=True)

MetricObject = Counter | Gauge | Histogram


def _make(spec: MetricSpec) -> MetricObject:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=REGISTRY)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=REGISTRY)
    return Histogram(spec.name, spec.help, spec.labels, registry=REGISTRY, buckets=spec.buckets)


OBJECTS: dict[str, MetricObject] = {name: _make(spec) for name, spec in SPECS.items()}

PREDICTIONS_TOTAL: Counter = OBJECTS["featurelake_predictions_total"]  # type: ignore[assignment]
JOB_SUCCESS_TOTAL: Counter = OBJECTS["featurelake_job_success_total"]  # type: ignore[assignment]
JOB_FAILURE_TOTAL: Counter = OBJECTS["featurelake_job_failure_total"]  # type: ignore[assignment]
AUDIT_FAILURES_TOTAL: Counter = OBJECTS["featurelake_audit_failures_total"]  # type: ignore[assignment]
ROWS_WRITTEN_TOTAL: Counter = OBJECTS["featurelake_rows_written_total"]  # type: ignore[assignment]
FEATURE_NULL_RATE: Gauge = OBJECTS["featurelake_feature_null_rate"]  # type: ignore[assignment]
FEATURE_DRIFT_SCORE: Gauge = OBJECTS["featurelake_feature_drift_score"]  # type: ignore[assignment]
FEATURE_DRIFT_THRESHOLD: Gauge = OBJECTS["featurelake_feature_drift_threshold"]  # type: ignore[assignment]
PREDICTION_MEAN: Gauge = OBJECTS["featurelake_prediction_mean"]  # type: ignore[assignment]
MODEL_AGE_HOURS: Gauge = OBJECTS["featurelake_model_age_hours"]  # type: ignore[assignment]
ONLINE_STORE_KEYS: Gauge = OBJECTS["featurelake_online_store_keys"]  # type: ignore[assignment]
ONLINE_SYNC_LAG_SNAPSHOTS: Gauge = OBJECTS["featurelake_online_sync_lag_snapshots"]  # type: ignore[assignment]
ONLINE_SYNC_LAG_SECONDS: Gauge = OBJECTS["featurelake_online_sync_lag_seconds"]  # type: ignore[assignment]
LAST_SUCCESS_TIMESTAMP: Gauge = OBJECTS["featurelake_last_success_timestamp_seconds"]  # type: ignore[assignment]
PREDICTION_LATENCY: Histogram = OBJECTS["featurelake_prediction_latency_seconds"]  # type: ignore[assignment]
JOB_DURATION: Histogram = OBJECTS["featurelake_job_duration_seconds"]  # type: ignore[assignment]

#: Metrics the server produces itself (scraped from ``/metrics``, never pushed from jobs).
SERVING_METRICS: tuple[str, ...] = (
    "featurelake_predictions_total",
    "featurelake_prediction_latency_seconds",
    "featurelake_prediction_mean",
)


def spec(name: str) -> MetricSpec:
    """The spec of metric ``name``; KeyError names the known metrics."""
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}: known metrics are {', '.join(sorted(SPECS))}") from None


def observe_prediction_latency(endpoint: str, seconds: float) -> None:
    """Server hot path: one request's latency on ``endpoint`` (e.g. ``/predict/churn``)."""
    PREDICTION_LATENCY.labels(endpoint).observe(seconds)


def count_predictions(model: str, version: str, n: int = 1) -> None:
    """Server hot path: ``n`` predictions scored by ``model`` at ``version``."""
    PREDICTIONS_TOTAL.labels(model, version).inc(n)


def exposition() -> tuple[bytes, str]:
    """The body and content type of a ``GET /metrics`` response (Prometheus text format)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


__all__ = [
    "JOB_DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "REGISTRY",
    "SERVING_METRICS",
    "SPECS",
    "MetricSpec",
    "count_predictions",
    "exposition",
    "observe_prediction_latency",
    "spec",
]
