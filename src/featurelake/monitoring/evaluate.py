"""Evaluating a rule now: which alert instances are active, from the local state or from Prometheus.

The local evaluator follows PromQL's meaning for each rule shape (:func:`~featurelake.monitoring.rules.promql.expr`):
``increase`` is the counter's value now minus its value at the start of the window (a drop is a reset),
``rate`` that divided by the window, and ``quantile`` is ``histogram_quantile`` over the bucket increases.
Unlike Prometheus it does not extrapolate: with exact per-run samples there is nothing to guess.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

from featurelake.errors import FeaturelakeError
from featurelake.monitoring.push import redact
from featurelake.monitoring.rules import Rule
from featurelake.monitoring.rules.promql import expr
from featurelake.monitoring.state import LabelKey, MetricsState, label_key


@dataclass(frozen=True)
class Active:
    """One alert instance whose condition holds now."""

    labels: LabelKey
    value: float
    threshold: float


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative ``(upper bound, count)`` buckets."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    # Counts must be monotonic; a non-monotonic set (mixed scrapes) is repaired as Prometheus does.
    fixed, top = [], 0.0
    for le, count in buckets:
        top = max(top, count)
        fixed.append((le, top))
    total = fixed[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, (_, count) in enumerate(fixed) if count >= rank)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, before = (0.0, 0.0) if b == 0 else fixed[b - 1]
    end, count = fixed[b][0], fixed[b][1] - before
    return start + (end - start) * (rank - before) / count


def _matches(rule: Rule, labels: LabelKey) -> bool:
    d = dict(labels)
    return all(re.fullmatch(p, d.get(k, "")) is not None for k, p in rule.match.items())


class RuleSource(ABC):
    """Where rule inputs come from: the one method ``monitor`` needs."""

    @abstractmethod
    def active(self, rule: Rule, now: float) -> list[Active]:
        """The alert instances of ``rule`` whose condition holds at ``now`` (Unix seconds)."""


class LocalSource(RuleSource):
    """Rules over the project's local metrics state."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def active(self, rule: Rule, now: float) -> list[Active]:
        if rule.aggregate == "last":
            return self._last(rule, now)
        if rule.aggregate in ("increase", "rate"):
            values = self._increases(rule, rule.metric, now, keep=())
        else:
            values = self._quantiles(rule, now)
        return [
            Active(labels, v, rule.threshold)
            for labels, v in sorted(values.items())
            if rule.compare(v, rule.threshold)
        ]

    def _last(self, rule: Rule, now: float) -> list[Active]:
        current = self.state.values_at(rule.metric, now)
        own = self.state.values_at(rule.threshold_metric, now) if rule.threshold_metric else {}
        out = []
        for labels, value in sorted(current.items()):
            if not _matches(rule, labels):
                continue
            threshold = own.get(labels, rule.threshold)
            if rule.compare(value, threshold):
                out.append(Active(labels, value, threshold))
        return out

    def _increases(self, rule: Rule, sample: str, now: float, keep: tuple[str, ...]) -> dict[LabelKey, float]:
        window = rule.window_seconds
        now_values = self.state.values_at(sample, now)
        then = self.state.values_at(sample, now - window)
        sums: dict[LabelKey, float] = defaultdict(float)
        for labels, value in now_values.items():
            if not _matches(rule, labels):
                continue
            base = then.get(labels, 0.0)
            delta = value - base if value >= base else value  # a drop means the counter was reset
            d = dict(labels)
            group = label_key({k: d.get(k, "") for k in (*rule.output_labels, *keep)})
            sums[group] += delta
        if rule.aggregate == "rate" and window > 0:
            return {k: v / window for k, v in sums.items()}
        return dict(sums)

    def _quantiles(self, rule: Rule, now: float) -> dict[LabelKey, float]:
        per_le = self._increases(rule, rule.metric + "_bucket", now, keep=("le",))
        groups: dict[LabelKey, list[tuple[float, float]]] = defaultdict(list)
        for labels, count in per_le.items():
            d = dict(labels)
            le = float(d.pop("le"))
            groups[label_key(d)].append((le, count))
        assert rule.quantile is not None
        out = {}
        for labels, buckets in groups.items():
            q = histogram_quantile(rule.quantile, buckets)
            if not math.isnan(q):
                out[labels] = q
        return out


class PrometheusSource(RuleSource):
    """Rules evaluated by a Prometheus server: its HTTP query API runs each rule's exported expression."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str, now: float) -> list[tuple[LabelKey, float]]:
        qs = urllib.parse.urlencode({"query": promql, "time": f"{now:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
            exc.close()
            raise FeaturelakeError(
                f"Prometheus at {redact(self.url)} refused {promql!r} ({detail}): check the rule and the server"
            ) from None
        except Exception as exc:
            detail = str(exc)
            raise FeaturelakeError(
                f"cannot query Prometheus at {redact(self.url)} ({detail}): check that it runs and "
                "monitoring.prometheus_url, or unset it to evaluate the local state"
            ) from None
        if body.get("status") != "success":
            raise FeaturelakeError(
                f"Prometheus at {redact(self.url)} refused {promql!r}: {body.get('error')}: check the rule and the "
                "server"
            )
        data = body["data"]
        if data.get("resultType") != "vector":
            return []
        out = []
        for item in data["result"]:
            labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
            out.append((label_key(labels), float(item["value"][1])))
        return out

    def active(self, rule: Rule, now: float) -> list[Active]:
        found = self.query(expr(rule), now)
        own: dict[LabelKey, float] = {}
        if rule.threshold_metric is not None:
            own = dict(self.query(rule.threshold_metric, now))
        return [Active(labels, value, own.get(labels, rule.threshold)) for labels, value in sorted(found)]


__all__ = ["Active", "LocalSource", "PrometheusSource", "RuleSource", "histogram_quantile"]
