"""Drift metrics and feature statistics, checked against scipy and exact computations on the raw values."""

from __future__ import annotations

from typing import cast

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from featurelake.validation.audit import evaluate
from featurelake.validation.checks import AuditContext, Observation, ReferenceStats
from featurelake.validation.colstats import ColumnStats, merge
from featurelake.validation.drift import (
    Drift,
    js_distance,
    ks_statistic,
    numeric_edges,
    numeric_shares,
    psi,
)
from featurelake.validation.stats import Profiler
from tests.test_validation_checks import T0, FakeReference, view

RNG = np.random.default_rng(7)


def stats_of(values: np.ndarray | list, kind: str = "numeric", sample: int = 1_000_000) -> ColumnStats:
    """Statistics of one column computed the way an audit computes them."""
    arr = pa.array(values, pa.float64() if kind == "numeric" else pa.string())
    prof = Profiler({"c": kind}, sample, seed=3)
    evaluate(pa.table({"c": arr}), [prof])
    return prof.result["c"]


def exact_shares(new: np.ndarray, ref: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """PSI bins computed directly on the raw values: reference deciles, open ends, no missing values."""
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins, method="inverted_cdf"))

    def shares(x: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1) / len(x)

    return shares(new), shares(ref)


# --- the metrics against reference implementations -------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 1.5])
def test_ks_matches_scipy(shift: float) -> None:
    ref = RNG.normal(0, 1, 20_000)
    new = RNG.normal(shift, 1, 5_000)
    ours = ks_statistic(stats_of(new), stats_of(ref))
    assert ours == pytest.approx(ks_2samp(new, ref).statistic, abs=0.015)


@pytest.mark.parametrize("scale", [1.0, 1.3, 3.0])
def test_psi_and_js_match_exact_binned_values(scale: float) -> None:
    ref = RNG.lognormal(3, 0.8, 20_000)
    new = RNG.lognormal(3, 0.8 * scale, 8_000)
    a_exact, b_exact = exact_shares(new, ref)
    s_new, s_ref = stats_of(new), stats_of(ref)
    edges = numeric_edges(s_ref, 10)
    a, b = (
        numeric_shares(s_new, edges)[:-1],
        numeric_shares(s_ref, edges)[:-1],
    )  # drop the (empty) missing bin
    assert np.abs(a - a_exact).max() < 0.012 and np.abs(b - b_exact).max() < 0.012
    exact_psi = float(
        np.sum((a_exact - b_exact) * np.log(np.maximum(a_exact, 1e-4) / np.maximum(b_exact, 1e-4)))
    )
    assert psi(a, b) == pytest.approx(exact_psi, abs=0.02 + 0.05 * exact_psi)
    assert js_distance(a, b) == pytest.approx(jensenshannon(a_exact, b_exact), abs=0.015)


def test_js_distance_is_scipys_definition() -> None:
    p, q = np.array([0.1, 0.4, 0.5, 0.0]), np.array([0.3, 0.3, 0.2, 0.2])
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q))
    assert js_distance(p, p) == 0.0


def test_psi_of_identical_distributions_is_small_and_of_a_shift_large() -> None:
    ref = RNG.normal(50, 10, 30_000)
    same = stats_of(RNG.normal(50, 10, 30_000))
    moved = stats_of(RNG.normal(60, 10, 30_000))
    s_ref = stats_of(ref)
    edges = numeric_edges(s_ref, 10)
    assert psi(numeric_shares(same, edges), numeric_shares(s_ref, edges)) < 0.01
    assert psi(numeric_shares(moved, edges), numeric_shares(s_ref, edges)) > 0.5


def test_discrete_columns_get_fewer_bins() -> None:
    ref = stats_of(np.array([0] * 600 + [1] * 300 + [2] * 100, dtype=float))
    edges = numeric_edges(ref, 10)
    assert list(edges) == [0.0, 1.0]  # the deciles are 0 (x6) and 1 (x3): bins (-inf, 0), [0, 1), [1, inf)
    shares = numeric_shares(ref, edges)
    assert shares[:3] == pytest.approx([0.0, 0.6, 0.4], abs=0.011) and shares[3] == 0.0  # missing


def test_a_jump_in_missing_values_is_drift() -> None:
    base = RNG.normal(0, 1, 10_000)
    holes = np.where(RNG.random(10_000) < 0.3, np.nan, RNG.normal(0, 1, 10_000))
    s_ref, s_new = stats_of(base), stats_of(holes)
    assert s_new.nan == pytest.approx(3000, rel=0.1)
    edges = numeric_edges(s_ref, 10)
    assert psi(numeric_shares(s_new, edges), numeric_shares(s_ref, edges)) > 0.2


# --- statistics -----------------------------------------------------------------------------------------


def test_profile_counts_are_exact_and_non_finite_values_counted() -> None:
    vals = [1.0, 2.0, None, float("nan"), float("inf"), float("-inf"), 5.0]
    s = stats_of(vals)
    assert (s.rows, s.count, s.nulls, s.nan, s.pos_inf, s.neg_inf) == (7, 6, 1, 1, 1, 1)
    assert (s.min, s.max, s.sum, s.mean) == (1.0, 5.0, 8.0, pytest.approx(8 / 3))
    assert s.quantiles[0] == 1.0 and s.quantiles[-1] == 5.0


@pytest.mark.parametrize("shape", ["normal", "few values", "outlier", "signed zeros", "holes"])
def test_sample_quantiles_are_the_inverted_cdf_percentiles_of_its_finite_values(shape: str) -> None:
    # Drift's bins are cut at these: always observed values, whatever the distribution.
    from featurelake.validation.colstats import PROBS
    from featurelake.validation.stats import summarise

    rng = np.random.default_rng(len(shape))
    x = {
        "normal": lambda: rng.normal(3, 2, 20_000),
        "few values": lambda: rng.integers(0, 10, 19_800).astype(float),
        "outlier": lambda: np.append(rng.normal(0, 1, 4_096), 1e12),
        "signed zeros": lambda: rng.choice([0.0, -0.0, 1.0], 101),
        "holes": lambda: np.where(rng.random(5_000) < 0.2, np.nan, rng.lognormal(0, 3, 5_000)),
    }[shape]()
    values = pa.chunked_array([pa.array(x[:100]), pa.array(x[100:], mask=np.arange(x.size - 100) % 7 == 0)])
    present = np.concatenate([x[:100], x[100:][np.arange(x.size - 100) % 7 != 0]])
    finite = present[np.isfinite(present)]
    got = summarise("numeric", values)
    assert got.present == present.size
    assert got.quantiles == list(np.percentile(finite, PROBS * 100, method="inverted_cdf"))


def test_numeric_columns_summarised_together_as_each_alone() -> None:
    # The profile summarises a sample's numeric columns in one sort (nulls as NaN, NaN last, infinities at
    # the ends): each column's counts and percentiles are those of its own finite values, whatever the
    # others hold (NaN, infinities, nulls, integers, nothing finite at all).
    from featurelake.validation.colstats import QUANTILES
    from featurelake.validation.stats import summarise_numeric

    rng = np.random.default_rng(3)
    n = 2_000
    specials = rng.choice([np.nan, np.inf, -np.inf, 1.5], n)
    floats = np.where(rng.random(n) < 0.05, specials, rng.normal(0, 10, n))
    columns = {
        "floats with nulls": pa.chunked_array(
            [pa.array(floats[:700], mask=rng.random(700) < 0.1), pa.array(floats[700:])]
        ),
        "integers with nulls": pa.chunked_array([pa.array(rng.integers(-5, 5, n), mask=rng.random(n) < 0.3)]),
        "nothing finite": pa.chunked_array([pa.array(np.where(rng.random(n) < 0.5, np.nan, np.inf))]),
        "all null": pa.chunked_array([pa.nulls(n, pa.float64())]),
        "float32": pa.chunked_array([pa.array(rng.normal(0, 1, n).astype(np.float32))]),
    }
    got = summarise_numeric(list(columns.values()))
    for (name, col), summary in zip(columns.items(), got, strict=True):
        present = col.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False)
        finite = present[np.isfinite(present)]
        assert (summary.present, summary.nan, summary.pos_inf, summary.neg_inf) == (
            present.size,
            int(np.isnan(present).sum()),
            int((present == np.inf).sum()),
            int((present == -np.inf).sum()),
        ), name
        # The inverted CDF at i/100 by its definition, in integers: the smallest k with k/m >= i/100.
        # (numpy's percentile takes i/100 as a float and can land one rank off: 0.57 * 2000 > 1140.)
        m, ordered = finite.size, np.sort(finite)
        ks = np.searchsorted(100 * np.arange(1, m + 1), np.arange(QUANTILES) * m, side="left")
        want = [float(ordered[k]) for k in ks] if m else []
        assert summary.quantiles == want, name


def test_merged_statistics_match_statistics_of_the_union() -> None:
    parts = [RNG.normal(0, 1, 7_000), RNG.exponential(3, 11_000), RNG.uniform(-5, 20, 4_000)]
    merged = merge([stats_of(p) for p in parts])
    union = np.concatenate(parts)
    whole = stats_of(union)
    assert (merged.rows, merged.count, merged.min, merged.max) == (
        whole.rows,
        whole.count,
        whole.min,
        whole.max,
    )
    assert merged.sum == pytest.approx(whole.sum)
    ranks = np.searchsorted(np.sort(union), merged.quantiles[1:-1]) / union.size
    assert np.abs(ranks - np.arange(1, 100) / 100).max() < 0.015


def test_sampled_quantiles_stay_close() -> None:
    big = RNG.lognormal(2, 1, 200_000)
    s = stats_of(big, sample=20_000)
    assert s.sample_rows == 20_000 and s.count == 200_000 and s.max == big.max()
    ranks = np.searchsorted(np.sort(big), s.quantiles[1:-1]) / big.size
    assert np.abs(ranks - np.arange(1, 100) / 100).max() < 0.015


def test_histogram_from_quantiles_counts_every_finite_value() -> None:
    s = stats_of(RNG.normal(0, 1, 5_000))
    h = s.histogram(bins=20)
    assert len(h["edges"]) == 21 and sum(h["counts"]) == pytest.approx(5_000)
    assert ColumnStats.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_categorical_statistics_and_drift() -> None:
    ref = stats_of(["a"] * 500 + ["b"] * 300 + ["c"] * 200, kind="categorical")
    assert ref.top_values == ["a", "b", "c"] and ref.top_counts == [500, 300, 200]
    same = stats_of(["a"] * 50 + ["b"] * 30 + ["c"] * 20, kind="categorical")
    moved = stats_of(["a"] * 10 + ["b"] * 10 + ["z"] * 80, kind="categorical")
    v = view(Drift("cat"), Drift("cat", metric="js"))
    results: dict[tuple[str, str], float] = {}
    for name, new in (("same", same), ("moved", moved)):
        for check in v.checks:
            bound = _bound(cast(Drift, check), new, ReferenceStats(1, "main", 1000, {"cat": ref}))
            results[(name, bound.metric)] = cast(float, bound.judge(_obs()).observed)
    assert results[("same", "psi")] < 0.01 and results[("same", "js")] < 0.01
    assert results[("moved", "psi")] > 1.0 and results[("moved", "js")] > 0.3


# --- the drift check's verdicts ---------------------------------------------------------------------------


def _obs() -> Observation:
    return Observation([], 0)


def _bound(check: Drift, new: ColumnStats, ref: ReferenceStats | None) -> Drift:
    v = view(check)
    prof = Profiler.for_view(v, 1000, 1)
    prof.result[check.column] = new
    reference = FakeReference(
        stats_by_ref={None if check.reference is None else str(check.reference): ref} if ref else {}
    )
    return cast(Drift, check.bind(AuditContext(v, None, T0, reference, prof)))


def test_drift_without_reference_data_is_recorded_not_failed() -> None:
    res = _bound(Drift("x"), stats_of([1.0, 2.0]), ReferenceStats(5, "main", 0, {})).judge(_obs())
    assert res.passed and res.status == "no-reference"
    assert "first backfill" in res.message and "no reference" in res.message


def test_drift_with_an_unknown_reference_fails_and_says_why() -> None:
    ref = ReferenceStats(None, "ref nope", problem="reference 'nope' is no tag, branch or snapshot")
    res = _bound(Drift("x", reference="nope"), stats_of([1.0]), ref).judge(_obs())
    assert not res.passed and "reference 'nope' is no tag" in res.message


def test_ks_on_an_all_null_window_fails() -> None:
    ref = ReferenceStats(5, "main", 3, {"x": stats_of([1.0, 2.0, 3.0])})
    res = _bound(Drift("x", metric="ks"), stats_of([None, None]), ref).judge(_obs())
    assert not res.passed and "hold no finite values" in res.message


def test_psi_on_an_all_null_window_fails_through_the_missing_bin() -> None:
    ref = ReferenceStats(5, "main", 300, {"x": stats_of(RNG.normal(0, 1, 300))})
    res = _bound(Drift("x"), stats_of([None] * 50), ref).judge(_obs())
    assert not res.passed and cast(float, res.observed) > 5
    assert res.details is not None and res.details["new"][-1] == 1.0


def test_drift_defaults_and_limits() -> None:
    assert (Drift("x").max, Drift("x", metric="js").max, Drift("x", metric="ks").max) == (0.2, 0.1, 0.1)
    ref = ReferenceStats(5, "main", 4000, {"x": stats_of(RNG.normal(0, 1, 4000))})
    new = stats_of(RNG.normal(0.3, 1, 4000))
    loose = _bound(Drift("x", metric="ks", max=0.5), new, ref).judge(_obs())
    strict = _bound(Drift("x", metric="ks", max=0.05), new, ref).judge(_obs())
    assert loose.passed and not strict.passed and loose.observed == strict.observed
    assert strict.limit == "ks <= 0.05"
