"""From a view's Arrow batches to a model's input matrix: the recorded signature, bound to columns, in order.

Binding happens once, before any row is read (:meth:`InputBinding.bind`): every signature input must name a
column of the view (``view:feature`` as recorded from the training set, else the input's own name), of a
type the flavor takes. Missing features are listed together; nothing is scored until all are there.

Missing values (null, or NaN in a float column) follow the NaN policy:

- ``fill`` (default): an input with a default recorded at registration (``models register --default
  COL=VALUE``) gets that value; an input without one fails the run, naming it;
- ``fail``: any missing value fails the run, defaults or not.

Infinite values always fail. A failure raises DataError before the batch is scored; the job then discards
its audit branch, so the predictions table is never left half written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurelake.errors import DataError, SchemaError, UsageError
from featurelake.features.keys import as_keys, describe_key
from featurelake.prediction.flavors.base import ModelFlavor, ModelInfo, ModelInput

NanPolicy = Literal["fail", "fill"]
NAN_POLICIES: tuple[str, ...] = ("fail", "fill")


@dataclass(frozen=True)
class BoundInput:
    """One model input bound to a view column (with the column's type name)."""

    name: str
    column: str
    type: str
    default: float | None


def _column_for(inp: ModelInput, view: str) -> tuple[str | None, str]:
    """(view the input comes from, or None when unknown; the view column that holds it)."""
    if inp.feature and ":" in inp.feature:
        source, _, feature = inp.feature.partition(":")
        return source, feature
    return None, inp.name


def match_inputs(
    info: ModelInfo, view: str, key: str | Sequence[str], column_types: dict[str, str]
) -> list[BoundInput]:
    """Bind each signature input of ``info`` to a column of ``view`` (``column_types``: column -> type name;
    ``key``: the view's key column, or its key columns; they are never model inputs).

    Raises UsageError when no signature was recorded and SchemaError naming every feature the view lacks.
    """
    if not info.inputs:
        raise UsageError(
            f"{info.ref} has no recorded input signature, so its inputs cannot be matched to view {view}: "
            "register it with --training-set (the signature is read from the training set), or pass "
            "signature=[...] to fl.models.register"
        )
    keys = as_keys(key)
    other: dict[str, list[str]] = {}
    missing: list[str] = []
    bound: list[BoundInput] = []
    for inp in info.inputs:
        source, column = _column_for(inp, view)
        if source is not None and source != view:
            other.setdefault(source, []).append(inp.feature or inp.name)
            continue
        if column not in column_types or column in keys:
            missing.append(column)
            continue
        bound.append(BoundInput(inp.name, column, column_types[column], inp.default))
    if other:
        listing = "; ".join(f"{v}: {', '.join(fs)}" for v, fs in other.items())
        raise SchemaError(
            f"{info.ref} reads features of other views ({listing}); batch prediction scores one view, "
            f"--view {view}: score with the view the model was trained on, or train on one view"
        )
    if missing:
        raise SchemaError(
            f"{info.ref} needs features that view {view} does not have: {', '.join(missing)} (the view has "
            f"{', '.join(c for c in column_types if c not in keys)}); add them to the view and backfill, or "
            "score a model trained on this view"
        )
    return bound


class InputBinding:
    """Builds the ``(n, k)`` input matrix of one model from batches of one view."""

    def __init__(
        self,
        flavor: ModelFlavor,
        inputs: Sequence[BoundInput],
        key: str | Sequence[str],
        nan_policy: NanPolicy,
        view: str,
    ) -> None:
        self.flavor = flavor
        self.inputs = list(inputs)
        self.keys = as_keys(key)
        """The view's key column(s): never model inputs; they name the rows an error is about."""
        self.nan_policy = nan_policy
        self.view = view
        self.dtype = flavor.input_dtype
        self.order = flavor.input_order

    @property
    def columns(self) -> list[str]:
        """View columns the model reads, in signature order."""
        return [b.column for b in self.inputs]

    @classmethod
    def bind(
        cls,
        flavor: ModelFlavor,
        inputs: Sequence[BoundInput],
        view: str,
        key: str | Sequence[str],
        nan_policy: str,
    ) -> InputBinding:
        """Check that ``flavor`` takes every bound input's type (SchemaError naming the input if not)."""
        if nan_policy not in NAN_POLICIES:
            raise UsageError(f"nan policy {nan_policy!r} is not one of {', '.join(NAN_POLICIES)}")
        for b, inp in zip(inputs, flavor.info.inputs, strict=True):
            flavor.check_input_type(inp)
            if b.type != inp.type:
                flavor.check_input_type(ModelInput(f"{inp.name} (column {b.column} of view {view})", b.type))
        return cls(flavor, inputs, key, nan_policy, view)  # type: ignore[arg-type]

    # --- per batch ----------------------------------------------------------------------------------------
    def _keys(self, batch: pa.RecordBatch, rows: pa.Array, *, more: bool = True) -> str:
        """``user_id 3, 5`` (``...`` after five): the keys of the rows ``rows`` marks, for messages; a
        composite key as ``user_id=1,merchant_id=7; ...``."""
        values = list(zip(*(batch.column(k).filter(rows).to_pylist() for k in self.keys), strict=True))
        tail = " ..." if more and len(values) > 5 else ""
        if len(self.keys) == 1:
            return f"{self.keys[0]} {', '.join(str(v[0]) for v in values[:5])}{tail}"
        return "; ".join(describe_key(self.keys, v) for v in values[:5]) + tail

    def _missing(self, b: BoundInput, count: int, shown: str) -> DataError:
        where = f"input {b.name}" + (
            f" (column {b.column} of view {self.view})" if b.column != b.name else ""
        )
        if self.nan_policy == "fill":
            why = "the model has no recorded default for it (nan policy 'fill')"
            todo = (
                f"register the model with --default {b.name}=VALUE, or skip those rows with "
                f"--where '{b.column} IS NOT NULL AND NOT isnan({b.column})'"
            )
        else:
            why = "nan policy 'fail' refuses missing inputs"
            todo = (
                "use --nan-policy fill with the model's recorded defaults, or skip those rows with "
                f"--where '{b.column} IS NOT NULL AND NOT isnan({b.column})'"
            )
        return DataError(
            f"{self.flavor.info.ref}: {where} is missing (null or NaN) for {count} row(s) of this batch "
            f"({shown}); {why}. Nothing was written: {todo}"
        )

    def _fillable(self, b: BoundInput) -> bool:
        return self.nan_policy == "fill" and b.default is not None

    def matrix(self, batch: pa.RecordBatch) -> np.ndarray:
        """The input matrix of ``batch``; missing values filled or refused (DataError) per the policy."""
        n = batch.num_rows
        x = np.empty((n, len(self.inputs)), dtype=self.dtype, order=self.order)
        for j, b in enumerate(self.inputs):
            col = batch.column(b.column)
            if col.null_count:
                if not self._fillable(b):
                    raise self._missing(b, col.null_count, self._keys(batch, pc.is_null(col)))
                col = pc.fill_null(col, pa.scalar(b.default).cast(col.type, safe=False))
            x[:, j] = col.to_numpy(zero_copy_only=False)
        # One contiguous reduction proves the whole matrix finite; only when it is not (NaN, inf, or an
        # overflowing sum) are the columns inspected one by one.
        if np.issubdtype(self.dtype, np.floating) and not np.isfinite(x.sum()):
            for j in range(x.shape[1]):
                if not np.isfinite(x[:, j].sum()):
                    self._fix_column(batch, x, j)
        return x

    def _fix_column(self, batch: pa.RecordBatch, x: np.ndarray, j: int) -> None:
        b = self.inputs[j]
        col = x[:, j]
        nan = np.isnan(col)
        inf = np.isinf(col)
        if inf.any():
            raise DataError(
                f"{self.flavor.info.ref}: input {b.name} is infinite for {int(inf.sum())} row(s) of this batch "
                f"({self._keys(batch, pa.array(inf), more=False)}); no model input may be infinite. Nothing was "
                f"written: fix the view's query, or skip them with --where 'isfinite({b.column})'"
            )
        if nan.any():
            if not self._fillable(b):
                raise self._missing(b, int(nan.sum()), self._keys(batch, pa.array(nan)))
            col[nan] = b.default


__all__ = ["NAN_POLICIES", "BoundInput", "InputBinding", "NanPolicy", "match_inputs"]
