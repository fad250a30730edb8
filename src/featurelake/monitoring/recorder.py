"""Recording metrics from jobs: one :class:`Recorder` per unit of work, flushed to the local state and pushed.

A recorder updates the process-wide registry (so a long-lived process exposes the values on ``/metrics``) and
keeps the same updates in a buffer; :meth:`Recorder.flush` appends them to the project's metrics state in one
transaction and, when ``monitoring.pushgateway`` is set, pushes the state's cumulative series. Recording never
fails the job it observes: a state or Pushgateway problem is logged and the job goes on.

Components that are not jobs record with :func:`recording`::

    with recording(project, "sync") as rec:
        rec.online_store(view, keys=n_keys, lag_snapshots=0, lag_seconds=0.0)
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client.utils import floatToGoString

from featurelake import telemetry as metrics
from featurelake.monitoring.state import LabelKey, MetricsState, Update, label_key

if TYPE_CHECKING:
    from featurelake.project import Project

log = logging.getLogger("featurelake.monitoring")

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


_Child = Any  # a labelled prometheus_client child (Counter/Gauge/Histogram with label values)
#: (metric, labels as given) -> (canonical label key, registry child, spec): validation done once per series.
_SERIES: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[LabelKey, _Child, metrics.MetricSpec]] = {}


def _series(metric: str, kind: str, labels: dict[str, Any]) -> tuple[LabelKey, _Child, metrics.MetricSpec]:
    cache_key = (metric, tuple(labels.items()))
    found = _SERIES.get(cache_key)
    if found is not None:
        return found
    spec = metrics.spec(metric)
    if spec.kind != kind:
        raise ValueError(f"metric {metric} is a {spec.kind}, not a {kind}")
    if set(labels) != set(spec.labels):
        raise ValueError(
            f"metric {spec.name} takes labels {', '.join(spec.labels)}, got {', '.join(sorted(labels))}"
        )
    key = label_key({k: str(v) for k, v in labels.items()})
    child = metrics.OBJECTS[metric].labels(**dict(key))
    _SERIES[cache_key] = found = (key, child, spec)
    return found


class Recorder:
    """Metric updates of one unit of work (``source`` names it: ``backfill``, ``sync``, ``serve``).

    Each update goes to the process-wide registry at once and is aggregated here per series (a counter's sum,
    a gauge's last value, a histogram's bucket counts), so recording many updates costs one dictionary
    update each and the flush writes one sample per series.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._counters: dict[tuple[str, LabelKey], float] = {}
        self._gauges: dict[tuple[str, LabelKey], float] = {}
        self._notes: dict[tuple[str, LabelKey], str | None] = {}
        # (metric, labels) -> [count per bucket (non-cumulative, +Inf last), sum, count]
        self._histograms: dict[tuple[str, LabelKey], tuple[list[float], list[float]]] = {}

    # --- primitives ----------------------------------------------------------------------------------
    def inc(self, metric: str, labels: dict[str, Any], value: float = 1.0) -> None:
        """Add ``value`` (>= 0) to counter ``metric``."""
        key, child, _ = _series(metric, "counter", labels)
        child.inc(value)
        k = (metric, key)
        self._counters[k] = self._counters.get(k, 0.0) + value

    def set(self, metric: str, labels: dict[str, Any], value: float, *, note: str | None = None) -> None:
        """Set gauge ``metric``; ``note`` (JSON) says where the value came from (kept beside it in the state)."""
        key, child, _ = _series(metric, "gauge", labels)
        child.set(value)
        self._gauges[(metric, key)] = float(value)
        self._notes[(metric, key)] = note

    def observe(self, metric: str, labels: dict[str, Any], value: float) -> None:
        """Observe ``value`` in histogram ``metric`` (stored as cumulative buckets, sum and count)."""
        key, child, spec = _series(metric, "histogram", labels)
        child.observe(value)
        k = (metric, key)
        hist = self._histograms.get(k)
        if hist is None:
            hist = self._histograms[k] = ([0.0] * (len(spec.buckets) + 1), [0.0, 0.0])
        hist[0][bisect.bisect_left(spec.buckets, value)] += 1
        hist[1][0] += value
        hist[1][1] += 1

    @property
    def updates(self) -> list[Update]:
        """The aggregated updates as state samples (histograms complete: every bucket, 0 or not)."""
        out = [Update("inc", m, m, key, v, "counter") for (m, key), v in self._counters.items()]
        out += [
            Update("set", m, m, key, v, "gauge", self._notes.get((m, key)))
            for (m, key), v in self._gauges.items()
        ]
        for (m, key), (counts, (total, n)) in self._histograms.items():
            bounds = metrics.SPECS[m].buckets
            cumulative = 0.0
            for le, c in zip((*bounds, math.inf), counts, strict=True):
                cumulative += c
                bucket = label_key((*key, ("le", floatToGoString(le))))
                out.append(Update("inc", m, m + "_bucket", bucket, cumulative, "histogram"))
            out.append(Update("inc", m, m + "_sum", key, total, "histogram"))
            out.append(Update("inc", m, m + "_count", key, n, "histogram"))
        return out

    def clear(self) -> None:
        self._counters.clear()
        self._gauges.clear()
        self._notes.clear()
        self._histograms.clear()

    # --- what components record ----------------------------------------------------------------------
    def rows_written(self, job: str, table: str, rows: int) -> None:
        self.inc("featurelake_rows_written_total", {"job": job, "table": table}, rows)

    def null_rate(
        self, view: str, feature: str, rate: float, *, published: bool = True, run_id: str | None = None
    ) -> None:
        """Null share of ``feature`` in the rows of run ``run_id``: one series for the last published run,
        one for the last run that did not reach main (refused by its audit, or audited but not published)."""
        labels = {"view": view, "feature": feature, "published": "true" if published else "false"}
        note = json.dumps({"run_id": run_id, "published": published}) if run_id is not None else None
        self.set("featurelake_feature_null_rate", labels, rate, note=note)

    def drift(self, view: str, feature: str, score: float, threshold: float | None = None) -> None:
        """A feature's drift score, and the limit it is judged against (the rule compares the two)."""
        self.set("featurelake_feature_drift_score", {"view": view, "feature": feature}, score)
        if threshold is not None:
            self.set("featurelake_feature_drift_threshold", {"view": view, "feature": feature}, threshold)

    def predictions(self, model: str, version: str, n: int, mean: float | None = None) -> None:
        """``n`` predictions by ``model`` at ``version``; ``mean`` of their values when numeric."""
        self.inc("featurelake_predictions_total", {"model": model, "version": version}, n)
        if mean is not None and math.isfinite(mean):
            self.set("featurelake_prediction_mean", {"model": model}, mean)

    def model_age(self, model: str, stage: str, hours: float) -> None:
        """Age of the version of ``model`` in ``stage``; stages are lower-cased (``production``)."""
        self.set("featurelake_model_age_hours", {"model": model, "stage": stage.lower()}, hours)

    def online_store(
        self,
        view: str,
        *,
        keys: int | None = None,
        lag_snapshots: int | None = None,
        lag_seconds: float | None = None,
    ) -> None:
        """Online store size and sync lag of ``view`` (pass what the caller knows)."""
        if keys is not None:
            self.set("featurelake_online_store_keys", {"view": view}, keys)
        if lag_snapshots is not None:
            self.set("featurelake_online_sync_lag_snapshots", {"view": view}, lag_snapshots)
        if lag_seconds is not None:
            self.set("featurelake_online_sync_lag_seconds", {"view": view}, lag_seconds)

    def audit_report(
        self, report: Any, features: Collection[str] | None = None, *, published: bool = False
    ) -> None:
        """Failed checks, null rates and drift scores from an :class:`~featurelake.validation.audit.AuditReport`
        (null rates of ``features`` only, when given: the view's fields, not its key and timestamp);
        ``published`` says whether the audited rows reached main (the null rates' ``published`` label)."""
        view, rows = report.view, report.rows
        rates: dict[str, float] = {}
        # The audit's column profile covers every column, checked or not; checks fill in without one.
        for column, stats in (getattr(report, "profile", None) or {}).items():
            n, count = getattr(stats, "rows", 0), getattr(stats, "count", None)
            if n and isinstance(count, int):
                rates[column] = (n - count) / n
        for r in report.results:
            check = f"{r.check}({r.column})" if r.column else r.check
            if not r.passed:
                self.inc("featurelake_audit_failures_total", {"view": view, "check": check})
            if r.column is None or not isinstance(r.observed, int | float) or isinstance(r.observed, bool):
                continue
            if r.check == "null_rate" and r.column not in rates:
                rates[r.column] = float(r.observed)
            elif r.check == "not_null" and rows and r.column not in rates:
                rates[r.column] = float(r.observed) / rows
            elif r.check.startswith("drift"):
                found = _NUMBER.search(str(r.limit))
                self.drift(view, r.column, float(r.observed), float(found.group()) if found else None)
        for feature, rate in rates.items():
            if features is None or feature in features:
                run_id = getattr(report, "run_id", None)
                self.null_rate(view, feature, rate, published=published, run_id=run_id)

    # --- persistence ---------------------------------------------------------------------------------
    def flush(self, project: Project, *, ts: float | None = None) -> bool:
        """Append the buffered updates to the local state, then push; False (logged) if the state failed."""
        updates = self.updates
        self.clear()
        if not updates:
            return True
        cfg = project.config.settings.monitoring
        where = cfg.state
        try:
            state = state_of(project)
            where = str(state.path)
            if cfg.pushgateway:
                from featurelake.monitoring.push import push_state

                push_state(project, state, updates, self.source, ts=ts)
            else:
                state.record(updates, self.source, ts=ts)
        except Exception as exc:
            log.error(
                "could not record %d metric samples of %s to %s: %s (the job is not affected; fix "
                "monitoring.state)",
                len(updates),
                self.source,
                where,
                exc,
            )
            return False
        return True


def state_of(project: Project) -> MetricsState:
    """The project's local metrics state (``monitoring.state``)."""
    cfg = project.config.settings.monitoring
    retention = cfg.state_retention.total_seconds()
    return MetricsState(project.config.path(cfg.state), retention_seconds=retention)


@contextmanager
def recording(project: Project, source: str) -> Iterator[Recorder]:
    """A recorder flushed when the block ends (also when it raises)."""
    rec = Recorder(source)
    try:
        yield rec
    finally:
        rec.flush(project)


__all__ = ["Recorder", "recording", "state_of"]
