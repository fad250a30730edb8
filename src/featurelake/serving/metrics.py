"""The server's Prometheus metrics, in the one featurelake registry (``featurelake.telemetry``).

The monitoring component owns the registry and the shared metrics (``featurelake_prediction_latency_seconds``
among them); the serving-only ones are added to the same registry here.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from featurelake import telemetry as shared

REGISTRY = shared.REGISTRY
LATENCY = shared.PREDICTION_LATENCY

REQUESTS = Counter(
    "featurelake_http_requests_total",
    "HTTP requests the feature server answered, by endpoint and status code.",
    ("endpoint", "status"),
    registry=REGISTRY,
)
ONLINE_STORE_ERRORS = Counter(
    "featurelake_online_store_errors_total",
    "Requests that failed because the online store was unreachable (answered 503).",
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "featurelake_model_load_seconds",
    "How long the last load of a model's Production version took (not part of the prediction latency).",
    ("model",),
    registry=REGISTRY,
)


def observe(endpoint: str, status: int, seconds: float) -> None:
    """One answered request: its status and latency."""
    REQUESTS.labels(endpoint, str(status)).inc()
    LATENCY.labels(endpoint).observe(seconds)


def count_predictions(model: str, version: str, n: int) -> None:
    """``n`` predictions served by ``model`` at ``version``."""
    shared.count_predictions(model, version, n)


def exposition() -> tuple[bytes, str]:
    """Body and content type of ``GET /metrics``."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


__all__ = [
    "LATENCY",
    "MODEL_LOAD_SECONDS",
    "ONLINE_STORE_ERRORS",
    "REGISTRY",
    "REQUESTS",
    "count_predictions",
    "exposition",
    "observe",
]
