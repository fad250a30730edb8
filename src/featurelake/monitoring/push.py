"""Pushing a project's batch metrics to a Prometheus Pushgateway.

Batch jobs end before a scrape, so they push. A naive push of one process's counters would reset them to
that run's count; instead every push carries the local state's *cumulative* series, so counters in the
Pushgateway only grow and ``increase()`` works across runs.

Grouping: the Pushgateway overwrites a pushed ``job`` label with the group's ``job``, and our metrics carry
their own ``job`` label (``backfill``, ``apply``, …). So a series with a ``job`` label is pushed in the group
``job=<that value>``, and series without one in the group ``job=featurelake``; every group also carries
``project=<project name>``. Each push replaces its whole group (PUT) with everything the state holds for it,
so pushes from concurrent jobs never delete each other's series; a file lock orders state write and push, so
an older state never overwrites a newer one in the Pushgateway.
"""

from __future__ import annotations

import fcntl
import logging
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from featurelake import telemetry as metrics
from featurelake.monitoring.state import LabelKey, MetricsState, SeriesRow, Update

if TYPE_CHECKING:
    from featurelake.project import Project

log = logging.getLogger("featurelake.monitoring")

#: Group for series without a ``job`` label.
DEFAULT_GROUP = "featurelake"
#: Sources whose series Prometheus scrapes from the server itself; pushing them too would double count.
SCRAPED_SOURCES = ("serve",)


def group_of(labels: LabelKey) -> str:
    return dict(labels).get("job", DEFAULT_GROUP)


def redact(url: str) -> str:
    """``url`` without user and password, for log lines."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


class StateCollector(Collector):
    """Exposes stored series (latest values) as Prometheus metric families."""

    def __init__(self, rows: Iterable[SeriesRow]) -> None:
        self.rows = list(rows)

    def collect(self) -> Iterator[Metric]:
        by_metric: dict[str, list[SeriesRow]] = defaultdict(list)
        for row in self.rows:
            by_metric[row.metric].append(row)
        for name, rows in by_metric.items():
            spec = metrics.SPECS.get(name)
            if spec is None:
                continue  # a metric the catalog no longer has: nothing documents it, do not push it
            if spec.kind == "histogram":
                yield self._histogram(spec, rows)
                continue
            family: Metric = (
                CounterMetricFamily(name, spec.help, labels=spec.labels)
                if spec.kind == "counter"
                else GaugeMetricFamily(name, spec.help, labels=spec.labels)
            )
            for row in rows:
                values = _values(spec, row.labels)
                if values is not None:
                    family.add_metric(values, row.value)  # type: ignore[attr-defined]
            yield family

    @staticmethod
    def _histogram(spec: metrics.MetricSpec, rows: list[SeriesRow]) -> Metric:
        buckets: dict[tuple[str, ...], list[tuple[str, float]]] = defaultdict(list)
        sums: dict[tuple[str, ...], float] = {}
        for row in rows:
            labels = dict(row.labels)
            le = labels.pop("le", None)
            values = _values(spec, tuple(labels.items()))
            if values is None:
                continue
            key = tuple(values)
            if row.sample.endswith("_bucket") and le is not None:
                buckets[key].append((le, row.value))
            elif row.sample.endswith("_sum"):
                sums[key] = row.value
        family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        for key, bs in buckets.items():
            bs.sort(key=lambda b: float(b[0]))
            family.add_metric(list(key), buckets=bs, sum_value=sums.get(key, 0.0))
        return family


def _values(spec: metrics.MetricSpec, labels: LabelKey) -> list[str] | None:
    d = dict(labels)
    if set(d) != set(spec.labels):
        return None
    return [d[name] for name in spec.labels]


def _handler(
    url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
) -> Callable[[], None]:
    """prometheus_client's push handler, but closing the response (its own leaves the socket open)."""

    def handle() -> None:
        req = urllib.request.Request(url, data=data, method=method)
        for key, value in headers:
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode(errors="replace").strip()
            exc.close()
            raise OSError(f"the Pushgateway answered {exc.code}: {body}") from None

    return handle


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def push_state(
    project: Project, state: MetricsState, updates: list[Update], source: str, *, ts: float | None = None
) -> None:
    """Record ``updates`` in ``state``, then push every group they touched (push errors are logged)."""
    cfg = project.config.settings.monitoring
    assert cfg.pushgateway
    gateway = cfg.pushgateway.get_secret_value()
    with file_lock(state.path.with_name(state.path.name + ".pushlock")):
        state.record(updates, source, ts=ts)
        if source in SCRAPED_SOURCES:
            return
        touched = {group_of(u.labels) for u in updates}
        by_group: dict[str, list[SeriesRow]] = defaultdict(list)
        for row in state.latest(exclude_sources=SCRAPED_SOURCES):
            by_group[group_of(row.labels)].append(row)
        for group in sorted(touched):
            registry = CollectorRegistry(auto_describe=False)
            registry.register(StateCollector(by_group[group]))
            try:
                push_to_gateway(
                    gateway,
                    job=group,
                    registry=registry,
                    grouping_key={"project": project.config.settings.project},
                    timeout=cfg.push_timeout_seconds,
                    handler=_handler,
                )
            except Exception as exc:
                log.error(
                    "could not push metrics group job=%s to the Pushgateway at %s: %s (recorded locally in %s; "
                    "the next successful push carries them)",
                    group,
                    redact(gateway),
                    exc,
                    state.path,
                )


__all__ = ["DEFAULT_GROUP", "StateCollector", "file_lock", "group_of", "push_state", "redact"]
