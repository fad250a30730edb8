"""Synthetic metric histories, one per shipped alert rule, each making its rule fire and then resolve.

The same scenario feeds the local evaluator (``featurelake monitor`` over the metrics state) and
``promtool test rules`` (over the exported Prometheus rules): both must find the same firing alerts with
the same values at the same minutes. Values are one sample per minute from minute 0; evaluation windows
at the check minutes are fully covered by samples, so Prometheus does not extrapolate.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Series:
    metric: str
    sample: str
    kind: str
    labels: dict[str, str]
    values: list[float]

    def promql(self) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.sample}{{{inner}}}"


@dataclass
class Expect:
    labels: dict[str, str]
    value: float
    threshold: float


@dataclass
class Scenario:
    rule: str
    minutes: int
    series: list[Series]
    #: minute -> the alerts firing then
    checks: dict[int, list[Expect]]
    #: evaluate every minute (rules with a `for`), else only at the check minutes
    every_minute: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def gauge(name: str, labels: dict[str, str], values: list[float]) -> Series:
    return Series(name, name, "gauge", labels, values)


def counter(name: str, labels: dict[str, str], values: list[float]) -> Series:
    return Series(name, name, "counter", labels, values)


def buckets(name: str, labels: dict[str, str], by_le: dict[str, list[float]]) -> list[Series]:
    return [Series(name, name + "_bucket", "histogram", {**labels, "le": le}, v) for le, v in by_le.items()]


def _cumulative(per_minute: list[float]) -> list[float]:
    out, total = [], 0.0
    for x in per_minute:
        total += x
        out.append(total)
    return out


VIEW = "user_features"


def _null_rate() -> Scenario:
    feature = {"view": VIEW, "feature": "amount_avg_1d", "published": "true"}
    fine = {"view": VIEW, "feature": "txn_count_1d", "published": "true"}
    refused = {"view": VIEW, "feature": "amount_sum_1d", "published": "false"}
    return Scenario(
        "high_feature_null_rate",
        10,
        [
            gauge("featurelake_feature_null_rate", feature, [0.02] * 3 + [0.35] * 4 + [0.02] * 3),
            gauge("featurelake_feature_null_rate", fine, [0.1] * 10),  # at the limit, not over it
            gauge("featurelake_feature_null_rate", refused, [0.9] * 10),  # a refused run: never main's data
        ],
        {2: [], 4: [Expect(feature, 0.35, 0.1)], 8: []},
    )


def _latency() -> Scenario:
    endpoint = {"endpoint": "/predict/churn"}
    # 10 requests a minute: 20 minutes slow (0.5 s < latency <= 1 s), then 20 minutes fast (<= 0.25 s).
    slow, fast = [0.0] + [10.0] * 20 + [0.0] * 20, [0.0] * 21 + [10.0] * 20
    le_fast = _cumulative(fast)
    le_slow = _cumulative([s + f for s, f in zip(slow, fast, strict=True)])
    series = buckets(
        "featurelake_prediction_latency_seconds",
        endpoint,
        {"0.25": le_fast, "0.5": le_fast, "1": le_slow, "+Inf": le_slow},
    )
    # P99 of the slow phase: 0.5 + 0.5 * 0.99 = 0.995 s. Active from minute 1, firing after `for: 5m`.
    return Scenario(
        "prediction_latency_high",
        41,
        series,
        {3: [], 10: [Expect(endpoint, 0.995, 0.5)], 35: []},
        every_minute=True,
    )


def _failures() -> Scenario:
    key = {"job": "backfill", "view": VIEW}
    audit = [float(sum(1 for k in range(70, 121, 10) if k <= m)) for m in range(181)]
    conflict = [1.0 if m >= 95 else 0.0 for m in range(181)]
    other_view = [float(m // 30) for m in range(181)]  # one failure every 30 minutes: never a spike
    return Scenario(
        "job_failure_spike",
        181,
        [
            counter("featurelake_job_failure_total", {**key, "reason": "audit_failed"}, audit),
            counter("featurelake_job_failure_total", {**key, "reason": "conflict"}, conflict),
            counter(
                "featurelake_job_failure_total",
                {"job": "backfill", "view": "other", "reason": "conflict"},
                other_view,
            ),
        ],
        # Over the hour to minute 100: 4 audit failures (70..100) + 1 conflict (95) = 5 > 3.
        {75: [], 100: [Expect(key, 5.0, 3.0)], 175: []},
    )


def _drift() -> Scenario:
    own = {"view": VIEW, "feature": "amount_avg_1d"}  # its drift check says max=0.1
    default = {"view": VIEW, "feature": "txn_count_1d"}  # no drift limit recorded: the rule's 0.2
    return Scenario(
        "feature_drift_detected",
        10,
        [
            gauge("featurelake_feature_drift_score", own, [0.05] * 3 + [0.15] * 3 + [0.05] * 4),
            gauge("featurelake_feature_drift_threshold", own, [0.1] * 10),
            gauge("featurelake_feature_drift_score", default, [0.15] * 6 + [0.25] * 2 + [0.1] * 2),
        ],
        {2: [], 4: [Expect(own, 0.15, 0.1)], 6: [Expect(default, 0.25, 0.2)], 9: []},
    )


def _online_empty() -> Scenario:
    view = {"view": VIEW}
    return Scenario(
        "online_store_empty",
        6,
        [
            gauge("featurelake_online_store_keys", view, [100, 100, 0, 0, 50, 50]),
            gauge("featurelake_online_store_keys", {"view": "other"}, [5] * 6),
        ],
        {1: [], 3: [Expect(view, 0.0, 0.0)], 5: []},
    )


def _model_age() -> Scenario:
    prod = {"model": "churn", "stage": "production"}
    return Scenario(
        "model_too_old",
        6,
        [
            gauge("featurelake_model_age_hours", prod, [100, 150, 170, 200, 10, 11]),
            gauge("featurelake_model_age_hours", {"model": "churn", "stage": "staging"}, [500] * 6),
        ],
        {1: [], 3: [Expect(prod, 200.0, 168.0)], 5: []},
    )


def _online_inconsistent() -> Scenario:
    redis = {"view": VIEW, "store": "redis"}
    return Scenario(
        "online_inconsistent",
        6,
        [
            # A check finds 5% of the keys differ; a full resync brings it back to 0.
            gauge("featurelake_online_consistency_mismatch_ratio", redis, [0, 0.005, 0.05, 0.05, 0, 0]),
            gauge(
                "featurelake_online_consistency_mismatch_ratio",
                {"view": "other", "store": "sqlite"},
                [0.01] * 6,
            ),
        ],
        {1: [], 3: [Expect(redis, 0.05, 0.01)], 5: []},
    )


SCENARIOS: list[Scenario] = [
    _null_rate(),
    _latency(),
    _failures(),
    _drift(),
    _online_empty(),
    _model_age(),
    _online_inconsistent(),
]
BASE_TS = 1_700_000_000.0
