"""The server's metrics into the local state, so ``featurelake monitor`` sees latency without Prometheus.

Prometheus scrapes the server's ``/metrics``; a project without Prometheus still wants
``prediction_latency_high`` evaluated. :class:`RegistryFlusher` runs beside the server and every
``monitoring.flush_interval_seconds`` appends what changed in the serving metrics of the one registry (counter
and histogram increases, gauge values) to the local state, under the source ``serve`` (never pushed: Prometheus
scrapes those from the server itself). The request path is untouched: flushing reads the registry from a
background thread.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from featurelake import telemetry as metrics
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import LabelKey, Update, label_key

if TYPE_CHECKING:
    from featurelake.project import Project

log = logging.getLogger("featurelake.monitoring")

_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _snapshot(names: tuple[str, ...]) -> dict[tuple[str, str, LabelKey], tuple[float, str]]:
    """(metric, sample, labels) -> (value, kind) of the wanted metrics as the registry holds them now."""
    wanted = {metrics.SPECS[n].name.removesuffix("_total"): metrics.SPECS[n] for n in names}
    out: dict[tuple[str, str, LabelKey], tuple[float, str]] = {}
    for family in metrics.REGISTRY.collect():
        spec = wanted.get(family.name)
        if spec is None:
            continue
        allowed = {spec.name.removesuffix("_total") + s for s in _SUFFIXES[spec.kind]}
        for s in family.samples:
            if s.name in allowed:
                out[(spec.name, s.name, label_key(s.labels))] = (float(s.value), spec.kind)
    return out


class RegistryFlusher:
    """Appends the serving metrics' changes to the project's local state, now and then, off the hot path."""

    def __init__(
        self,
        project: Project,
        *,
        names: tuple[str, ...] = metrics.SERVING_METRICS,
        interval: float | None = None,
        source: str = "serve",
    ) -> None:
        self.project = project
        self.names = names
        self.source = source
        cfg = project.config.settings.monitoring
        self.interval = cfg.flush_interval_seconds if interval is None else interval
        # Values already in the registry when we start belong to someone else (another app, other tests).
        self._last = {key: value for key, (value, _) in _snapshot(names).items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def updates(self) -> list[Update]:
        """What changed since the previous call, as state updates (complete histograms per label set)."""
        now = _snapshot(self.names)
        groups: dict[tuple[str, LabelKey], list[Update]] = defaultdict(list)
        changed: set[tuple[str, LabelKey]] = set()
        for key, (value, kind) in now.items():
            metric, sample, labels = key
            group = (metric, tuple(kv for kv in labels if kv[0] != "le"))
            before = self._last.get(key)
            self._last[key] = value
            if kind == "gauge":
                if value != before:
                    groups[group].append(Update("set", metric, sample, labels, value, kind))
                    changed.add(group)
                continue
            delta = value - (before or 0.0)
            groups[group].append(Update("inc", metric, sample, labels, delta, kind))
            if delta:
                changed.add(group)
        # A histogram is written whole whenever any of its samples moved, so quantiles see every bucket.
        return [u for group in sorted(changed) for u in groups[group]]

    def flush(self, ts: float | None = None) -> int:
        """Record the changes now; returns how many samples were written (errors are logged)."""
        updates = self.updates()
        if not updates:
            return 0
        try:
            return state_of(self.project).record(updates, self.source, ts=ts)
        except Exception as exc:
            log.error("could not record %d serving metric samples: %s", len(updates), exc)
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def start(self) -> RegistryFlusher:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="featurelake-metrics-flush", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()


__all__ = ["RegistryFlusher"]
