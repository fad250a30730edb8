"""Which feature rows get scored, streamed as Arrow record batches from one snapshot of one view.

Two modes:

- **latest** (default): the latest row of each entity in the snapshot, one prediction per entity;
  ``max_age`` drops entities whose latest row is older than ``reference - max_age`` (pushed into the Iceberg
  scan as ``event_ts >= cutoff``, which drops exactly those entities and prunes day partitions);
- **window** (``start``/``end``): every row with ``start <= event_ts < end``.

The Iceberg scan reads only the columns needed (key, timestamp, the model's inputs, the columns ``--where``
mentions) as a stream of record batches; DuckDB picks the latest row per entity and applies ``--where`` on
its sandboxed connection (see ``prediction.where``) and hands the rows back in batches of ``batch_rows``.
Memory stays bounded by DuckDB's own limits (it spills to disk), never the whole table in pandas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.table import Table

from featurelake.prediction.where import sandbox
from featurelake.training.scan import stream_scan
from featurelake.validation.checks import quote


@dataclass(frozen=True)
class FeatureSelection:
    """What to read: a snapshot, the columns, the mode and the filters."""

    snapshot_id: int
    keys: tuple[str, ...]
    """The view's key column(s): the latest row is picked per key (every key column, for a composite key)."""
    timestamp: str
    columns: list[str]
    """Columns to read besides the key and the timestamp."""
    start: datetime | None = None
    end: datetime | None = None
    min_event_ts: datetime | None = None
    """The ``--max-age`` cutoff: rows older than this are not read."""
    where: str | None = None

    @property
    def mode(self) -> str:
        return "window" if self.start is not None else "latest"

    def iceberg_filter(self) -> BooleanExpression:
        parts: list[BooleanExpression] = []
        ts = self.timestamp
        # PyIceberg's predicates are pydantic models whose generated signature mypy misreads.
        if self.start is not None:
            parts.append(GreaterThanOrEqual(ts, self.start.isoformat()))  # type: ignore[call-arg, arg-type]
        if self.end is not None:
            parts.append(LessThan(ts, self.end.isoformat()))  # type: ignore[call-arg, arg-type]
        if self.min_event_ts is not None:
            parts.append(GreaterThanOrEqual(ts, self.min_event_ts.isoformat()))  # type: ignore[call-arg, arg-type]
        if not parts:
            return AlwaysTrue()
        out = parts[0]
        for p in parts[1:]:
            out = And(out, p)
        return out

    def sql(self) -> str:
        names = [*self.keys, self.timestamp, *self.columns]
        cols = ", ".join(quote(c) for c in names)
        keys = ", ".join(quote(k) for k in self.keys)
        if self.mode == "latest" and len(set(names)) == len(names):
            # A hash aggregate keeps one row per key (memory follows the keys, not the rows read); a window
            # function would hold every row of the view until its partitions are sorted.
            packed = ", ".join(f"{quote(c)} := {quote(c)}" for c in [self.timestamp, *self.columns])
            inner = (
                f"SELECT {keys}, unnest(__featurelake_latest) FROM (SELECT {keys}, "
                f"arg_max(struct_pack({packed}), {quote(self.timestamp)}) AS __featurelake_latest "
                f"FROM feats GROUP BY {keys})"
            )
        elif self.mode == "latest":
            inner = (
                f"SELECT {cols} FROM feats QUALIFY row_number() OVER "
                f"(PARTITION BY {keys} ORDER BY {quote(self.timestamp)} DESC) = 1"
            )
        else:
            inner = f"SELECT {cols} FROM feats"
        if self.where:
            return f"SELECT * FROM ({inner}) AS batch WHERE ({self.where})"
        return inner


@contextmanager
def stream_features(table: Table, sel: FeatureSelection, batch_rows: int) -> Iterator[pa.RecordBatchReader]:
    """The selected rows as a RecordBatchReader of at most ``batch_rows`` rows per batch."""
    fields = tuple(dict.fromkeys([*sel.keys, sel.timestamp, *sel.columns]))
    scan = table.scan(row_filter=sel.iceberg_filter(), selected_fields=fields, snapshot_id=sel.snapshot_id)
    source = stream_scan(scan)  # one data file in memory at a time (PyIceberg's reader reads them all ahead)
    # The latest row per entity: one thread builds one hash table. Two threads would each hold one of the
    # entities they saw, about twice the memory (which grows with the entities), for ~10% less time.
    con = sandbox(threads=1) if sel.mode == "latest" else sandbox()
    try:
        con.register("feats", source)
        reader = con.sql(sel.sql()).to_arrow_reader(batch_rows)
        yield reader
    finally:
        con.close()
        source.close()


__all__ = ["FeatureSelection", "stream_features"]
