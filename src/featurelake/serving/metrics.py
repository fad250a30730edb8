"""The server's Prometheus metrics, in the one featurelake registry (``featurelake.telemetry``).

The monitoring component owns the registry and the shared metrics (``featurelake_prediction_latency_seconds``
among them); the serving-only ones are added to the same registry here.

Several worker processes (``featurelake serve --workers N``) each count their own requests. ``serve`` then
sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts them, so prometheus_client keeps every process's values in
memory-mapped files there, and :func:`exposition` (whichever worker answers ``GET /metrics``) sums them:
counters and histograms over all workers, including workers that have since been replaced; the gauges
``featurelake_model_load_seconds`` and ``featurelake_online_visibility_lag_seconds`` are the most recent
value any worker set.

``featurelake_online_visibility_lag_seconds{view}`` is measured when ``/metrics`` is scraped: now minus
the newest event time the online store has made visible for the view (:class:`Visibility`; one read of the
store's newest-event marker per view, whatever the number of keys). It is how far the served data trails
the world: with a stream or pushes arriving continuously, the lag from an event to its online visibility;
with a daily batch sync, up to a day plus the sync's own delay. While the store cannot be reached the last
known newest event is kept, so the gauge keeps growing instead of disappearing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

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
from featurelake.errors import OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurelake.serving.base import OnlineStore

log = logging.getLogger("featurelake.server")

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

VISIBILITY_LAG = Gauge(
    "featurelake_online_visibility_lag_seconds",
    "Seconds from the newest event the online store serves for a view to now (measured at each scrape).",
    ("view",),
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


class Visibility:
    """Sets ``featurelake_online_visibility_lag_seconds`` for ``views`` from ``store``'s newest events."""

    def __init__(self, store: OnlineStore, views: Iterable[str]) -> None:
        self.store = store
        self.views = sorted(views)
        self._newest: dict[str, int] = {}
        self._warned = 0.0

    def measure(self, now: float | None = None) -> dict[str, float]:
        """Read each view's newest event now and set the gauge; returns the lags set (seconds per view)."""
        t = time.time() if now is None else now
        try:
            for view in self.views:
                newest = self.store.newest_event_ts(view)
                if newest is not None:
                    self._newest[view] = newest
        except OnlineStoreUnavailableError as exc:
            if time.monotonic() - self._warned > 60:  # once a minute, not at every scrape
                self._warned = time.monotonic()
                log.warning("online visibility lag: %s; reporting the last newest events known", exc)
        lags = {view: max(0.0, t - ts / 1_000_000) for view, ts in self._newest.items()}
        for view in self.views:
            if view in lags:
                VISIBILITY_LAG.labels(view).set(lags[view])
            else:  # nothing visible yet: no series rather than a made-up (or another app's) value
                with contextlib.suppress(KeyError):
                    VISIBILITY_LAG.remove(view)
        return lags


def exposition(visibility: Visibility | None = None) -> tuple[bytes, str]:
    """Body and content type of ``GET /metrics``: this process's registry, or every worker's, summed;
    ``visibility`` is measured first."""
    if visibility is not None:
        visibility.measure()
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
    "VISIBILITY_LAG",
    "Visibility",
    "count_predictions",
    "exposition",
    "observe",
]
