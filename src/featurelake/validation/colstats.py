"""Statistics of one column over one set of rows, and how the statistics of disjoint row sets combine.

The record the audit writes per column (see ``validation.stats`` for how it is measured): exact counts and
bounds, 101 quantiles of the finite values (an equi-depth histogram) or the most frequent categorical
values. :func:`merge` combines disjoint parts: counts add, bounds take min/max, quantiles are re-derived
from the count-weighted mixture of the parts' CDFs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

QUANTILES = 101
TOP_VALUES = 20
PROBS = np.linspace(0.0, 1.0, QUANTILES)


def _float(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, Decimal | int):
        return float(v)
    return float(v)


@dataclass
class ColumnStats:
    """Statistics of one column over one set of rows (a run's window, or a whole snapshot)."""

    column: str
    kind: str
    """``numeric``, ``categorical`` or ``other`` (timestamps, dates, binary: counts only)."""
    rows: int = 0
    count: int = 0
    """Non-null values (NaN and infinities included)."""
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0
    min: float | None = None
    """Smallest finite value."""
    max: float | None = None
    sum: float | None = None
    """Sum of the finite values."""
    quantiles: list[float] = field(default_factory=list)
    """101 percentiles of the finite values (from the sample); empty when there are none."""
    top_values: list[str] = field(default_factory=list)
    top_counts: list[int] = field(default_factory=list)
    sample_rows: int = 0

    @property
    def nulls(self) -> int:
        return self.rows - self.count

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.pos_inf - self.neg_inf

    @property
    def missing(self) -> int:
        """Rows without a usable value: nulls, NaN and infinities."""
        return self.rows - (self.finite if self.kind == "numeric" else self.count)

    @property
    def mean(self) -> float | None:
        return self.sum / self.finite if self.sum is not None and self.finite else None

    def quantile(self, p: float) -> float | None:
        if not self.quantiles:
            return None
        return float(self.quantiles[min(QUANTILES - 1, max(0, round(p * (QUANTILES - 1))))])

    # --- distribution ---------------------------------------------------------------------------------
    def cdf(self, x: np.ndarray | float, *, left: bool = False) -> np.ndarray:
        """Share of finite values ``<= x`` (``< x`` with ``left``), from the quantiles (step, ±0.5%)."""
        return _cdf(np.asarray(self.quantiles, dtype=float), np.asarray(x, dtype=float), left)

    def bin_shares(self, edges: np.ndarray) -> np.ndarray:
        """Share of finite values in ``(-inf, e0), [e0, e1), ..., [ek, inf)`` (sums to 1; zeros when empty)."""
        if not self.quantiles:
            return np.zeros(len(edges) + 1)
        cum = np.concatenate([[0.0], self.cdf(edges, left=True), [1.0]])
        return np.clip(np.diff(cum), 0.0, 1.0)

    def histogram(
        self, bins: int = 20, lo: float | None = None, hi: float | None = None
    ) -> dict[str, list[float]]:
        """An equal-width histogram of the finite values over ``[lo, hi]`` (default: min..max), in counts."""
        lo = self.min if lo is None else lo
        hi = self.max if hi is None else hi
        if lo is None or hi is None or not self.quantiles:
            return {"edges": [], "counts": []}
        if hi <= lo:
            return {"edges": [lo, hi], "counts": [float(self.finite)]}
        edges = np.linspace(lo, hi, bins + 1)
        cum = self.cdf(edges[1:-1], left=True)
        shares = np.diff(np.concatenate([[0.0], cum, [1.0]]))
        return {"edges": [float(e) for e in edges], "counts": [float(s * self.finite) for s in shares]}

    def category_shares(self) -> dict[str, float]:
        """Share of non-null values per top value, plus ``"<other>"`` for the rest."""
        if not self.count:
            return {}
        shares = {v: c / self.count for v, c in zip(self.top_values, self.top_counts, strict=True)}
        shares["<other>"] = max(0.0, 1.0 - sum(shares.values()))
        return shares

    # --- serialisation --------------------------------------------------------------------------------
    def to_dict(self, *, histogram: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "column": self.column,
            "kind": self.kind,
            "rows": self.rows,
            "count": self.count,
            "nulls": self.nulls,
            "nan": self.nan,
            "pos_inf": self.pos_inf,
            "neg_inf": self.neg_inf,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "mean": self.mean,
            "quantiles": [float(q) for q in self.quantiles],
            "top_values": self.top_values,
            "top_counts": self.top_counts,
            "sample_rows": self.sample_rows,
        }
        if histogram and self.kind == "numeric":
            d["histogram"] = self.histogram()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnStats:
        return cls(
            column=d["column"],
            kind=d["kind"],
            rows=int(d.get("rows") or 0),
            count=int(d.get("count") or 0),
            nan=int(d.get("nan") or 0),
            pos_inf=int(d.get("pos_inf") or 0),
            neg_inf=int(d.get("neg_inf") or 0),
            min=_float(d.get("min")),
            max=_float(d.get("max")),
            sum=_float(d.get("sum")),
            quantiles=[float(q) for q in d.get("quantiles") or []],
            top_values=[str(v) for v in d.get("top_values") or []],
            top_counts=[int(c) for c in d.get("top_counts") or []],
            sample_rows=int(d.get("sample_rows") or 0),
        )


def _cdf(q: np.ndarray, x: np.ndarray, left: bool) -> np.ndarray:
    if q.size == 0:
        return np.zeros_like(x, dtype=float)
    k = np.searchsorted(q, x, side="left" if left else "right")
    # Between the k-th and (k+1)-th percentile point the true CDF lies in [(k-1)%, k%): take the middle.
    f = (k - 0.5) / (q.size - 1)
    return np.where(k == 0, 0.0, np.where(k >= q.size, 1.0, np.clip(f, 0.0, 1.0)))


def _mixture_quantiles(parts: list[tuple[np.ndarray, int]]) -> list[float]:
    parts = [(q, w) for q, w in parts if q.size and w > 0]
    if not parts:
        return []
    if len(parts) == 1:
        return [float(v) for v in parts[0][0]]
    xs = np.unique(np.concatenate([q for q, _ in parts]))
    total = float(sum(w for _, w in parts))
    f = np.zeros(xs.size)
    for q, w in parts:
        f += w * _cdf(q, xs, left=False)
    f /= total
    f[-1] = 1.0  # the largest point of any part is the mixture's max
    idx = np.searchsorted(f, PROBS, side="left")
    out = xs[np.clip(idx, 0, xs.size - 1)]
    out[0] = xs[0]
    return [float(v) for v in out]


def merge(parts: list[ColumnStats]) -> ColumnStats:
    """Statistics of the union of disjoint row sets, from the statistics of each."""
    if not parts:
        raise ValueError("merge() needs at least one ColumnStats")
    first = parts[0]
    out = ColumnStats(first.column, first.kind)
    for p in parts:
        out.rows += p.rows
        out.count += p.count
        out.nan += p.nan
        out.pos_inf += p.pos_inf
        out.neg_inf += p.neg_inf
        out.sample_rows += p.sample_rows
        if p.min is not None:
            out.min = p.min if out.min is None else min(out.min, p.min)
        if p.max is not None:
            out.max = p.max if out.max is None else max(out.max, p.max)
        if p.sum is not None:
            out.sum = p.sum if out.sum is None else out.sum + p.sum
    out.quantiles = _mixture_quantiles([(np.asarray(p.quantiles, dtype=float), p.finite) for p in parts])
    counts: dict[str, int] = {}
    for p in parts:
        for v, c in zip(p.top_values, p.top_counts, strict=True):
            counts[v] = counts.get(v, 0) + c
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
    out.top_values, out.top_counts = [v for v, _ in top], [c for _, c in top]
    return out


def merge_columns(parts: list[dict[str, ColumnStats]]) -> dict[str, ColumnStats]:
    """Merge per-column statistics of several row sets, column by column (columns missing from a part skip it)."""
    names: list[str] = []
    for part in parts:
        names.extend(n for n in part if n not in names)
    return {n: merge([p[n] for p in parts if n in p]) for n in names}


# --- computing statistics in the audit pass --------------------------------------------------------------
