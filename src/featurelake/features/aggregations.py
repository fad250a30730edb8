"""Declarative window aggregations and lookback: what a view reads before its backfill window, and why.

``FeatureView(..., aggregations=[Aggregation("amount", "sum", window=timedelta(days=7))],
step=timedelta(days=1))`` declares sliding-window features; ``lookback=timedelta(days=N)`` lets a hand-written
query see the N days of source rows before each backfill window. Both only widen what a backfill *reads*:
what it *writes* is always the rows of ``[start, end)``.

Semantics of an aggregation view (the engines compile it: ``engines/aggregate_sql.py``):

- **Rows aggregated**: the rows of ``source`` or, when the view also has a ``query``, the query's output
  (which must keep the join key, the source's timestamp field and the aggregated columns). Rows with a
  null timestamp are ignored.
- **Output timestamps**: the step grid ``t = k * step`` counted from 1970-01-01T00:00Z (midnights for
  ``step=timedelta(days=1)``), inside the backfill window.
- **Window**: the row at ``t`` holds each aggregation over the entity's rows with ``t - window < ts <= t``:
  a row stamped exactly ``t`` counts, one stamped exactly ``t - window`` does not. The row at ``t`` never
  depends on anything after ``t``, so it is point-in-time correct for any label at ``t`` or later.
- **Which rows exist**: an entity gets a row at every step whose longest window holds at least one of its
  rows, plus one closing row at the first step after its last row left the longest window (counts 0,
  everything else null), so a point-in-time lookup never keeps serving a stale value.
- **Empty windows**: ``count`` and ``approx_count_distinct`` give 0; the others null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from featurelake.errors import ConfigError
from featurelake.lakehouse.window import Window
from featurelake.units import format_duration

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView

#: function -> the field type its output gets unless ``fields`` declares another
FUNCTIONS: dict[str, str] = {
    "sum": "double",
    "count": "long",
    "mean": "double",
    "min": "double",
    "max": "double",
    "stddev": "double",
    "last": "double",
    "approx_count_distinct": "long",
}
#: functions that need a numeric column
NUMERIC_FUNCTIONS = frozenset({"sum", "mean", "stddev"})
US = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: timedelta) -> int:
    return value // US


@dataclass(frozen=True)
class Aggregation:
    """``function`` of ``column`` over a sliding ``window``, e.g. ``Aggregation("amount", "sum", window=
    timedelta(days=7))`` (output ``amount_sum_7d``); ``Aggregation("*", "count", ...)`` counts rows.

    Functions: ``sum``, ``count`` (non-null values; rows with ``"*"``), ``mean``, ``min``, ``max``,
    ``stddev`` (sample), ``last`` (the latest non-null value by the source timestamp; ties: the largest)
    and ``approx_count_distinct`` (HyperLogLog: a few percent off on large counts).
    """

    column: str
    function: str
    window: timedelta
    name: str | None = None

    def __post_init__(self) -> None:
        from featurelake.features.definitions import shown, validate_identifier

        what = f"Aggregation({shown(self.column)}, {shown(self.function)})"
        if self.function not in FUNCTIONS:
            raise ConfigError(
                f"{what}: unknown function {shown(self.function)}; use one of {', '.join(FUNCTIONS)}"
            )
        if self.column == "*":
            if self.function != "count":
                raise ConfigError(f"{what}: '*' only counts rows; name a column to {self.function}")
        else:
            validate_identifier(self.column, f"column of {what}")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise ConfigError(f"{what}: window must be a positive timedelta, got {shown(self.window)}")
        if self.window % timedelta(seconds=1):
            raise ConfigError(f"{what}: window {self.window} must be a whole number of seconds")
        if self.name is not None:
            validate_identifier(self.name, f"name of {what}")

    @property
    def output(self) -> str:
        """The feature's name: ``name``, else ``<column>_<function>_<window>`` (``count_<window>`` for ``*``)."""
        if self.name is not None:
            return self.name
        label = format_duration(self.window)
        return f"count_{label}" if self.column == "*" else f"{self.column}_{self.function}_{label}"


@dataclass(frozen=True)
class AggregationPlan:
    """The integer grid the engines compile against, in microseconds since the epoch.

    Rows fall into tiles ``((i - 1) * tile, i * tile]``; output rows sit at tile indices that are multiples
    of ``per_step``; an aggregation over ``window`` at tile ``i`` combines tiles ``i - tiles(window) + 1 .. i``.
    """

    tile: int
    step: int
    longest: int  # the longest window

    @property
    def per_step(self) -> int:
        return self.step // self.tile

    def tiles(self, window: timedelta) -> int:
        return _micros(window) // self.tile

    def first_step(self, start: datetime) -> int:
        """Index (in steps) of the first output timestamp at or after ``start``."""
        return -(-_micros(start - EPOCH) // self.step)


def plan(view: FeatureView) -> AggregationPlan:
    assert view.step is not None and view.aggregations
    windows = [_micros(a.window) for a in view.aggregations]
    step = _micros(view.step)
    return AggregationPlan(tile=math.gcd(step, *windows), step=step, longest=max(windows))


def reads_history(view: FeatureView) -> bool:
    """Whether the view reads source rows from before its backfill window (lookback or aggregations)."""
    return bool(view.lookback) or bool(view.aggregations)


def source_start(view: FeatureView, start: datetime) -> datetime:
    """Where a backfill of a window starting at ``start`` begins reading the source.

    ``start - lookback``; aggregations first move it back by their longest window plus one step (the
    closing row), to a tile boundary, so every tile an output row combines is complete.
    """
    if view.aggregations:
        p = plan(view)
        back = _micros(start - EPOCH) - p.longest - p.step
        start = EPOCH + (back // p.tile) * p.tile * US
    return start - (view.lookback or timedelta(0))


def source_window(view: FeatureView, window: Window) -> Window:
    """The span of source rows a backfill of ``window`` reads: ``[source_start(view, start), end)``."""
    return Window(source_start(view, window.start), window.end)


def table_properties(view: FeatureView) -> dict[str, str]:
    """What ``apply`` records on the view's table about its lookback and aggregations (none for plain views):
    they change what a backfill computes without changing the schema."""
    props = {}
    if view.lookback:
        props["featurelake.lookback"] = format_duration(view.lookback)
    if view.aggregations and view.step is not None:
        listed = ", ".join(
            f"{a.function}({a.column}) over {format_duration(a.window)} as {a.output}"
            for a in view.aggregations
        )
        props["featurelake.aggregations"] = f"{listed}; step {format_duration(view.step)}"
    return props


def resolve(view: FeatureView) -> None:
    """Check ``lookback``, ``aggregations`` and ``step`` of a view being defined; give its aggregation
    outputs their fields (declared ``fields`` may override an output's type, e.g. ``"string"`` for the
    ``last`` of a text column)."""
    where = f"view {view.name!r}"
    if view.lookback is not None and (
        not isinstance(view.lookback, timedelta) or view.lookback < timedelta(0)
    ):
        raise ConfigError(f"{where}: lookback must be a timedelta >= 0, e.g. timedelta(days=7)")
    if not view.aggregations:
        if view.step is not None:
            raise ConfigError(f"{where}: step is only used with aggregations=[...]; remove it or add some")
        if not isinstance(view.query, str) or not view.query.strip():
            raise ConfigError(
                f"{where} has no query: add query='SELECT ... FROM source' or aggregations=[Aggregation(...)]"
            )
        return
    if not isinstance(view.query, str):
        raise ConfigError(f"{where}: query must be a SQL string")
    aggs = list(view.aggregations)
    if not all(isinstance(a, Aggregation) for a in aggs):
        raise ConfigError(f"{where}: aggregations must be a list of Aggregation(column, function, window)")
    if not isinstance(view.step, timedelta) or view.step <= timedelta(0) or view.step % timedelta(seconds=1):
        raise ConfigError(
            f"{where}: aggregations need step=, a positive whole number of seconds such as "
            "timedelta(days=1): the view gets one row per entity and step"
        )
    outputs = _unique_outputs(where, aggs)
    declared = dict(view.fields or {})
    stray = [n for n in declared if n not in outputs]
    if stray:
        raise ConfigError(
            f"{where}: fields declares {', '.join(stray)}, which no aggregation produces; with aggregations "
            f"the view's fields are the aggregation outputs ({', '.join(outputs)}): use fields only to "
            "change an output's type, or name an aggregation with Aggregation(..., name=...)"
        )
    view.aggregations = aggs
    view.fields = {a.output: declared.get(a.output, FUNCTIONS[a.function]) for a in aggs}


def _unique_outputs(where: str, aggs: Iterable[Aggregation]) -> list[str]:
    seen: list[str] = []
    for a in aggs:
        if a.output in seen:
            raise ConfigError(
                f"{where}: two aggregations are both named {a.output!r}; give one a name=... of its own"
            )
        seen.append(a.output)
    return seen


__all__ = [
    "EPOCH",
    "FUNCTIONS",
    "NUMERIC_FUNCTIONS",
    "Aggregation",
    "AggregationPlan",
    "plan",
    "reads_history",
    "resolve",
    "source_start",
    "source_window",
    "table_properties",
]
