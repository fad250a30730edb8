"""Scoring one Arrow record batch at a time: inputs in signature order, the model, lineage on every row.

``BatchScorer`` is engine-agnostic: it takes a feature batch and returns the predictions batch in the
predictions table's schema. The local job drives it over a DuckDB stream; a Spark ``mapInArrow`` can build
one per executor from a :class:`~featurelake.prediction.flavors.ModelPayload` (whose digest is checked again
where it is loaded).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import pyarrow as pa

from featurelake.prediction.flavors.base import proba_column
from featurelake.prediction.inputs import InputBinding
from featurelake.prediction.table import PREDICTION, PROBA_PREFIX


@dataclass(frozen=True)
class Lineage:
    """The lineage columns written on every prediction row of one run."""

    model_name: str
    model_version: str
    feature_snapshot_id: int
    run_id: str
    predicted_at: datetime


class PredictProgress(Protocol):
    """What a batch prediction reports while it runs (the CLI draws a progress bar with rows/s)."""

    def phase(self, message: str) -> None:
        """A new phase started (resolving, scoring, auditing, publishing)."""

    def rows(self, done: int) -> None:
        """``done`` rows have been scored so far."""


@dataclass
class ScoreStats:
    """Running totals of a scoring pass."""

    rows: int = 0
    batches: int = 0
    nulls: int = 0
    total: float = 0.0
    score_seconds: float = 0.0
    """Time spent building input matrices and calling the model (the rest is reading and writing)."""
    started: float = field(default_factory=time.perf_counter)

    @property
    def mean(self) -> float | None:
        n = self.rows - self.nulls
        return self.total / n if n else None


class BatchScorer:
    """Turns feature batches into prediction batches (key columns, timestamp, prediction, lineage)."""

    def __init__(self, binding: InputBinding, lineage: Lineage, schema: pa.Schema, timestamp: str) -> None:
        self.binding = binding
        self.schema = schema
        self.keys = binding.keys
        self.timestamp = timestamp
        self.lineage = lineage
        self.stats = ScoreStats()
        self._scalars = {
            "model_name": pa.scalar(lineage.model_name, schema.field("model_name").type),
            "model_version": pa.scalar(lineage.model_version, schema.field("model_version").type),
            "feature_snapshot_id": pa.scalar(
                lineage.feature_snapshot_id, schema.field("feature_snapshot_id").type
            ),
            "run_id": pa.scalar(lineage.run_id, schema.field("run_id").type),
            "predicted_at": pa.scalar(lineage.predicted_at, schema.field("predicted_at").type),
        }
        self._const: dict[str, pa.Array] = {}

    def _constant(self, name: str, n: int) -> pa.Array:
        # The lineage columns are the same on every row: built once at the largest batch size, then sliced.
        arr = self._const.get(name)
        if arr is None or len(arr) < n:
            arr = self._const[name] = pa.repeat(self._scalars[name], n)
        return arr.slice(0, n)

    def predict(self, batch: pa.RecordBatch, matrix: np.ndarray | None = None) -> np.ndarray:
        """The model's predictions for ``batch`` (float64, one per row; NaN where it produced no number).

        ``matrix``: the batch's input matrix when already built (see :meth:`score_all`).
        """
        t0 = time.perf_counter()
        x = self.binding.matrix(batch) if matrix is None else matrix
        out = self.binding.flavor.predict(x)
        self.stats.score_seconds += time.perf_counter() - t0
        return out

    def predict_classes(
        self, batch: pa.RecordBatch, matrix: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """A multi-output model's labels for ``batch`` and its probability columns (``proba_<class>``)."""
        t0 = time.perf_counter()
        x = self.binding.matrix(batch) if matrix is None else matrix
        labels, proba = self.binding.flavor.predict_classes(x)
        self.stats.score_seconds += time.perf_counter() - t0
        classes = self.binding.flavor.classes or ()
        columns = {}
        for j, c in enumerate(classes):
            col = proba[:, j]
            bad = ~np.isfinite(col)
            columns[proba_column(c)] = pa.array(col, pa.float64(), mask=bad if bad.any() else None)
        return labels, columns

    def score(self, batch: pa.RecordBatch, matrix: np.ndarray | None = None) -> pa.RecordBatch:
        """The predictions batch for ``batch``, in the predictions table's schema."""
        probas: dict[str, pa.Array] = {}
        if self.binding.flavor.classes is not None:
            preds, probas = self.predict_classes(batch, matrix)
        else:
            preds = self.predict(batch, matrix)
        n = batch.num_rows
        bad = ~np.isfinite(preds)
        nulls = int(bad.sum())
        # A NaN/inf prediction is no prediction: stored as null, counted by the audit's null-rate check.
        prediction = pa.array(preds, pa.float64(), mask=bad if nulls else None)
        arrays: list[pa.Array] = []
        for f in self.schema:
            if f.name in self.keys or f.name == self.timestamp:
                col = batch.column(f.name)
                arrays.append(col if col.type == f.type else col.cast(f.type))
            elif f.name == PREDICTION:
                arrays.append(prediction)
            elif f.name in probas:
                arrays.append(probas[f.name])
            elif f.name.startswith(PROBA_PREFIX):  # a table written by a multi-output version before
                arrays.append(pa.nulls(n, f.type))
            else:
                arrays.append(self._constant(f.name, n))
        st = self.stats
        st.rows += n
        st.batches += 1
        st.nulls += nulls
        if nulls < n:
            total = float(np.sum(preds[~bad])) if nulls else float(np.sum(preds))
            st.total += total if math.isfinite(total) else 0.0
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def score_all(
        self, batches: Iterable[pa.RecordBatch], progress: PredictProgress | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Score ``batches`` in order; the next batch's input matrix is built while the model runs.

        Building the matrix (Arrow columns -> one row-major array) costs as much as a small model itself;
        both release the GIL, so on two cores they overlap. Errors surface in batch order.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fl-matrix") as pool:
            pending: tuple[pa.RecordBatch, Future[np.ndarray]] | None = None
            for batch in itertools.chain(batches, [None]):
                if batch is not None and batch.num_rows == 0:
                    continue
                ahead = (batch, pool.submit(self.binding.matrix, batch)) if batch is not None else None
                if pending is not None:
                    out = self.score(pending[0], pending[1].result())
                    if progress is not None:
                        progress.rows(self.stats.rows)
                    yield out
                pending = ahead


__all__ = ["BatchScorer", "Lineage", "PredictProgress", "ScoreStats"]
