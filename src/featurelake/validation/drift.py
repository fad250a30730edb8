"""Distribution drift between the rows a run writes and the published data: PSI, Jensen-Shannon, KS.

Both sides are :class:`~featurelake.validation.stats.ColumnStats`: the new rows' come from the audit's own
pass, the reference's from the statistics recorded when its windows were published (no rescan of history).

Binning (PSI and JS on numeric columns): ``bins`` (default 10) equal-frequency bins cut at the
*reference's* quantiles (deciles by default), open at both ends so every new value lands in a bin, with
duplicate cut points merged (a column that is 60% zeros gets fewer, wider bins). One more bin holds the
missing values (null, NaN, ±inf), so a jump in the null rate shows up as drift too. Categorical columns
(strings, booleans) use one bin per frequent value (the 20 most frequent on either side), one for the
rest and one for nulls. Empty bins are floored at 1e-4 before PSI's logarithm, as Evidently does.

Defaults: PSI 0.2 (the industry rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant); JS
distance 0.1 (Evidently's and NannyML's default), the square root of the JS divergence with natural
logarithms, in [0, sqrt(ln 2)]; KS 0.1, the largest gap between the two CDFs over finite values (numeric
columns only; nulls are left to ``null_rate``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featurelake.errors import ConfigError
from featurelake.validation.checks import (
    NUMERIC_KINDS,
    AuditContext,
    Check,
    CheckResult,
    Observation,
    ReferenceStats,
    Severity,
    column_kind,
)

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.validation.colstats import ColumnStats
    from featurelake.validation.core import ProfileSource

Metric = Literal["psi", "js", "ks"]
DEFAULT_MAX: dict[str, float] = {"psi": 0.2, "js": 0.1, "ks": 0.1}
EPSILON = 1e-4


def numeric_edges(reference: ColumnStats, bins: int) -> np.ndarray:
    """Cut points of ``bins`` equal-frequency bins at the reference's quantiles (duplicates merged)."""
    probs = np.arange(1, bins) / bins
    cuts = [reference.quantile(float(p)) for p in probs]
    return np.unique(np.array([c for c in cuts if c is not None], dtype=float))


def numeric_shares(stats: ColumnStats, edges: np.ndarray) -> np.ndarray:
    """Shares of all rows per bin of ``edges``, then one for missing values (sums to 1 when rows > 0)."""
    if stats.rows == 0:
        return np.zeros(len(edges) + 2)
    missing = stats.missing / stats.rows
    return np.concatenate([stats.bin_shares(edges) * (1.0 - missing), [missing]])


def categorical_shares(new: ColumnStats, ref: ColumnStats) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels = list(dict.fromkeys([*ref.top_values, *new.top_values]))

    def shares(s: ColumnStats) -> np.ndarray:
        if s.rows == 0:
            return np.zeros(len(labels) + 2)
        present = 1.0 - s.nulls / s.rows
        own = dict(zip(s.top_values, s.top_counts, strict=True))
        known = np.array([own.get(v, 0) / s.count if s.count else 0.0 for v in labels])
        other = max(0.0, 1.0 - known.sum()) if s.count else 0.0
        return np.concatenate([known * present, [other * present, s.nulls / s.rows]])

    return [*labels, "<other>", "<null>"], shares(new), shares(ref)


def noise_level(metric: str, bins: int, n_new: int, n_ref: int) -> float:
    """Typical value of ``metric`` between two samples of these sizes from the *same* distribution.

    Small windows drift by chance: PSI ~ (bins - 1)(1/n + 1/m) (its chi-square approximation), JS
    distance ~ sqrt((bins - 1)(1/n + 1/m) / 8), KS ~ 0.87 sqrt(1/n + 1/m) (the Kolmogorov mean).
    """
    inv = 1 / max(n_new, 1) + 1 / max(n_ref, 1)
    if metric == "psi":
        return (bins - 1) * inv
    if metric == "js":
        return math.sqrt((bins - 1) * inv / 8)
    return 0.87 * math.sqrt(inv)


def psi(new: np.ndarray, ref: np.ndarray) -> float:
    """Population stability index: sum of (new - ref) * ln(new / ref) over bins, empty bins floored."""
    a, b = np.maximum(new, EPSILON), np.maximum(ref, EPSILON)
    return float(np.sum((a - b) * np.log(a / b)))


def js_distance(new: np.ndarray, ref: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log), as ``scipy.spatial.distance.jensenshannon``."""
    p, q = new / new.sum(), ref / ref.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log(x[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def ks_statistic(new: ColumnStats, ref: ColumnStats) -> float:
    """Largest distance between the two CDFs of finite values (both sides from their quantiles)."""
    xs = np.unique(np.concatenate([new.quantiles, ref.quantiles]))
    gaps = [np.abs(new.cdf(xs, left=side) - ref.cdf(xs, left=side)) for side in (False, True)]
    return float(max(g.max() for g in gaps))


class Drift(Check):
    """The column's distribution in the new rows is within ``max`` of the reference's (see module doc)."""

    name = "drift"
    judge_late = True

    def __init__(
        self,
        column: str,
        metric: Metric = "psi",
        max: float | None = None,
        *,
        bins: int = 10,
        reference: str | int | None = None,
        severity: Severity = "error",
    ) -> None:
        super().__init__(severity)
        if metric not in DEFAULT_MAX:
            raise ConfigError(f"drift({column!r}): metric must be 'psi', 'js' or 'ks', got {metric!r}")
        limit = DEFAULT_MAX[metric] if max is None else max
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 <= limit < math.inf:
            raise ConfigError(f"drift({column!r}): max must be a finite number >= 0, got {max!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 100:
            raise ConfigError(f"drift({column!r}): bins must be an integer from 2 to 100, got {bins!r}")
        if reference is not None and (isinstance(reference, bool) or not isinstance(reference, str | int)):
            raise ConfigError(f"drift({column!r}): reference must be a tag/branch name or a snapshot id")
        self.column, self.metric, self.max, self.bins = column, metric, float(limit), bins
        self.reference = reference
        self._profiler: ProfileSource | None = None
        self._ref: ReferenceStats | None = None

    def columns(self) -> list[str]:
        return [self.column]

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return (self.name, (self.column, self.metric, str(self.reference)))

    def validate(self, view: FeatureView) -> None:
        kind = column_kind(view, self.column)
        if self.column in (*view.join_keys, view.timestamp_field):
            raise ConfigError(
                f"view {view.name!r}: drift({self.column!r}) needs a feature column, not the key or timestamp"
            )
        allowed = NUMERIC_KINDS if self.metric == "ks" else (*NUMERIC_KINDS, "string", "boolean")
        if kind not in allowed:
            what = "a numeric column" if self.metric == "ks" else "a numeric, string or boolean column"
            raise ConfigError(
                f"view {view.name!r}: drift({self.column!r}, metric={self.metric!r}) needs {what}, "
                f"but {self.column} is {kind}"
            )

    def bind(self, ctx: AuditContext) -> Check:
        bound: Drift = self._copy()
        bound._profiler = ctx.profiler
        if ctx.reference is not None:
            bound._ref = ctx.reference.stats(self.reference)
        return bound

    def _limit(self) -> str:
        return f"{self.metric} <= {self.max:g}"

    def judge(self, obs: Observation) -> CheckResult:
        col, limit = self.column, self._limit()
        new = self._profiler.result.get(col) if self._profiler else None
        ref = self._ref
        if ref is not None and ref.problem:
            return self._result(col, False, None, limit, f"drift of {col}: {ref.problem}")
        ref_col = ref.columns.get(col) if ref is not None else None
        where = ref.label if ref is not None else "main"
        if ref is None or ref_col is None or ref_col.rows == 0:
            return self._result(
                col,
                True,
                None,
                limit,
                f"drift of {col} not measured: {where} holds no published data to compare with"
                + (" yet (first backfill)" if where == "main" else "")
                + "; recorded as no reference",
                status="no-reference",
            )
        if new is None or new.rows == 0:
            return self._result(col, True, None, limit, f"drift of {col}: no new rows", status="no-data")
        details: dict[str, Any] = {
            "metric": self.metric,
            "reference": where,
            "reference_snapshot": ref.snapshot_id,
        }
        if self.metric == "ks":
            if not new.quantiles or not ref_col.quantiles:
                side = "new rows" if not new.quantiles else where
                return self._result(
                    col,
                    False,
                    None,
                    limit,
                    f"drift of {col}: the {side} hold no finite values, KS is undefined",
                )
            value = ks_statistic(new, ref_col)
        else:
            if new.kind == "numeric":
                edges = numeric_edges(ref_col, self.bins)
                a, b = numeric_shares(new, edges), numeric_shares(ref_col, edges)
                details["edges"] = [float(e) for e in edges]
                details["labels"] = [*(f"bin {i}" for i in range(len(edges) + 1)), "<missing>"]
            else:
                labels, a, b = categorical_shares(new, ref_col)
                details["labels"] = labels
            details["new"] = [round(float(v), 6) for v in a]
            details["ref"] = [round(float(v), 6) for v in b]
            value = psi(a, b) if self.metric == "psi" else js_distance(a, b)
        passed = value <= self.max
        bins = len(details.get("labels", [])) - 1 if self.metric != "ks" else 0
        noise = noise_level(self.metric, max(bins, 2), new.rows, ref_col.rows)
        details["noise"] = round(noise, 6)
        msg = (
            f"{self.metric.upper()} of {col} vs {where} is {value:.4f} (limit {self.max:g}; "
            f"{new.rows} new rows vs {ref_col.rows} published, chance level ~{noise:.3f})"
        )
        return self._result(col, passed, round(value, 6), limit, msg, details=details)


def drift(
    column: str,
    metric: Literal["psi", "js", "ks"] = "psi",
    max: float | None = None,
    *,
    bins: int = 10,
    reference: str | int | None = None,
    severity: Severity = "error",
) -> Check:
    """Fail when ``column``'s distribution in the new rows drifted from the published data.

    ``metric``: ``psi`` (default limit 0.2), ``js`` (Jensen-Shannon distance, 0.1) or ``ks`` (Kolmogorov-
    Smirnov statistic, 0.1). ``reference``: a tag, branch or snapshot id instead of main. See docs/validation.md.
    """
    return Drift(column, metric, max, bins=bins, reference=reference, severity=severity)
