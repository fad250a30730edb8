"""The server's Prometheus metrics, in the one featurelake registry (``featurelake.telemetry``).

The monitoring component owns the registry and the shared metrics (``featurelake_prediction_latency_seconds``
among them); the serving-only ones are added to the same registry here.

Several worker processes (``featurelake serve --workers N``) each count their own requests. ``serve`` then
sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts them, so prometheus_client keeps every process's values in
memory-mapped files there, and :func:`exposition` (whichever worker answers ``GET /metrics``) sums them:
counters and histograms over all workers, including workers that have since been replaced; the gauge
``featurelake_model_load_seconds`` is the most recent value any worker set.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

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
    multiprocess_mode="mostrecent",
)

#: Set (by ``serve``, for its worker processes) before prometheus_client was imported: multiprocess mode.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def observe(endpoint: str, status: int, seconds: float) -> None:
    """One answered request: its status and latency (the labelled children are looked up once)."""
    pair = _children.get((endpoint, status))
    if pair is None:
        if len(_children) > 10_000:  # endpoints carry model names: keep the cache bounded
            _children.clear()
        pair = _children[(endpoint, status)] = (
            REQUESTS.labels(endpoint, str(status)),
            LATENCY.labels(endpoint),
        )
    pair[0].inc()
    pair[1].observe(seconds)


def count_predictions(model: str, version: str, n: int) -> None:
    """``n`` predictions served by ``model`` at ``version``."""
    shared.count_predictions(model, version, n)


def exposition() -> tuple[bytes, str]:
    """Body and content type of ``GET /metrics``: this process's registry, or every worker's, summed."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    summed = CollectorRegistry()
    MultiProcessCollector(summed, path=MULTIPROCESS_DIR)
    return generate_latest(summed), CONTENT_TYPE_LATEST


__all__ = [
    "LATENCY",
    "MODEL_LOAD_SECONDS",
    "MULTIPROCESS_DIR",
    "ONLINE_STORE_ERRORS",
    "REGISTRY",
    "REQUESTS",
    "count_predictions",
    "exposition",
    "observe",
]
