"""The point-in-time join itself: an entity frame against one or more views' feature rows, over Arrow.

For every entity row (join key, time ``t``) and every view, the chosen feature row is the one with the same
key (every key column equal, for a composite key) and the greatest ``event_ts <= t``; it is used only when ``t - event_ts <= ttl`` (else the features are
null: every earlier row is older still). Rows are never dropped or reordered: the output has exactly one row
per entity row, in the entity frame's order.

DuckDB's ASOF LEFT JOIN finds the candidate over narrow Arrow tables (key, time as int64 microseconds, row
position); the feature columns themselves never pass through DuckDB but are gathered with one Arrow ``take``,
so their types come out exactly as stored.

Duplicate feature rows (same key and ``event_ts``) are legal in a table but would make the ASOF pick one
arbitrarily. The matched rows are checked for such ties (a cheap hash join of the matches against the
view) and a tie is resolved by content: the row with the greatest values of the view's features, compared
in the order the view declares them, nulls lowest and NaN highest. The result therefore depends only on the
data, never on file layout or thread scheduling, which is what byte-identical reproduction needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


@dataclass(frozen=True)
class ViewFrame:
    """One view's feature rows and how to join them onto the entity frame."""

    name: str
    entity_key: str | tuple[str, ...]
    """Join key column(s) in the entity frame (already of types comparable with ``key`` in ``data``)."""
    key: str | tuple[str, ...]
    """Join key column in ``data``; a tuple of them (in the order of ``entity_key``) for a composite key."""
    timestamp_field: str
    """Event time column in ``data`` (timestamptz)."""
    features: tuple[str, ...]
    """Columns of ``data`` to fetch, in output order."""
    output_names: tuple[str, ...]
    """Names the fetched columns get in the result."""
    ttl: timedelta | None
    data: pa.Table
    tie_order: tuple[str, ...] = ()
    """Columns that decide between duplicate rows (default: ``features``)."""
    parts: Iterable[pa.Table] | None = None
    """The feature rows in parts read one at a time (``data`` is then an empty table of their schema)."""

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    @property
    def entity_keys(self) -> tuple[str, ...]:
        return (self.entity_key,) if isinstance(self.entity_key, str) else tuple(self.entity_key)


@dataclass
class JoinStats:
    """What happened per view: rows matched, rows whose latest value was too old, ties resolved."""

    matched: dict[str, int] = field(default_factory=dict)
    outside_ttl: dict[str, int] = field(default_factory=dict)
    ties: dict[str, int] = field(default_factory=dict)


def micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch, floored (so ``<=`` against microsecond data holds)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    unit = column.type.unit
    ticks = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
    scale = _US_PER_UNIT[unit]
    if scale is None:
        return np.floor_divide(ticks, 1_000)
    return ticks * scale if scale != 1 else ticks


def _ttl_micros(ttl: timedelta | None) -> int | None:
    if ttl is None:
        return None
    return ttl // timedelta(microseconds=1)


def _sort_key(value: Any) -> tuple[Any, ...]:
    if value is None:
        return (0,)
    if isinstance(value, float) and math.isnan(value):
        return (2,)
    return (1, value)


def _key_columns(n: int) -> list[str]:
    return ["k"] if n == 1 else [f"k{i}" for i in range(n)]


def _key_match(left: str, right: str, n: int) -> str:
    return " AND ".join(f"{left}.{c} = {right}.{c}" for c in _key_columns(n))


def _resolve_ties(
    con: duckdb.DuckDBPyConnection,
    view: ViewFrame,
    keys: Sequence[pa.Array],
    t0: np.ndarray,
    pos: np.ndarray,
) -> np.ndarray:
    """Re-point matched rows whose (key, event time) has several feature rows to the content-chosen one.

    ``f`` (key columns, time, position of every feature row) must be registered on ``con``. Returns the
    entity rows that matched a tie.
    """
    matched = np.nonzero(pos >= 0)[0]
    if matched.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = pa.array(matched, pa.int64())
    m = {"r": idx, **{c: k.take(idx) for c, k in zip(_key_columns(len(keys)), keys, strict=True)}}
    con.register("m", pa.table({**m, "t": pa.array(t0[matched], pa.int64())}))
    groups = (
        con.sql(
            "SELECT m.r, list(f.p ORDER BY f.p) AS candidates FROM m JOIN f ON "
            f"{_key_match('f', 'm', len(keys))} AND f.t = m.t GROUP BY m.r HAVING count(*) > 1"
        )
        .to_arrow_table()
        .to_pylist()
    )
    con.unregister("m")
    order = list(view.tie_order or view.features)
    chosen: dict[tuple[int, ...], int] = {}
    for g in groups:
        cands = tuple(g["candidates"])
        if cands not in chosen:
            values = view.data.select(order).take(pa.array(cands, pa.int64())).to_pylist()
            best = max(range(len(cands)), key=lambda i: tuple(_sort_key(values[i][c]) for c in order))
            chosen[cands] = cands[best]
        pos[g["r"]] = chosen[cands]
    return np.array([g["r"] for g in groups], dtype=np.int64)


def _asof(
    con: duckdb.DuckDBPyConnection, entity_t: np.ndarray, entity_keys: Sequence[pa.Array], view: ViewFrame
) -> tuple[np.ndarray, np.ndarray]:
    """For each entity row the position in ``view.data`` of its latest row at or before its time (-1 if
    none) and that row's time; leaves ``f`` registered on ``con`` for :func:`_resolve_ties`."""
    n = len(entity_t)
    data = view.data
    names = _key_columns(len(entity_keys))
    e = pa.table(
        {
            "r": pa.array(np.arange(n, dtype=np.int64)),
            **dict(zip(names, entity_keys, strict=True)),
            "t": pa.array(entity_t),
        }
    )
    f = pa.table(
        {
            **{c: data.column(k) for c, k in zip(names, view.keys, strict=True)},
            "t": pa.array(micros(data.column(view.timestamp_field)) if data.num_rows else [], pa.int64()),
            "p": pa.array(np.arange(data.num_rows, dtype=np.int64)),
        }
    )
    con.register("e", e)
    con.register("f", f)
    res = con.sql(
        f"SELECT e.r, f.t AS t0, f.p FROM e ASOF LEFT JOIN f ON {_key_match('e', 'f', len(names))} "
        "AND e.t >= f.t"
    ).to_arrow_table()
    if res.num_rows != n:  # pragma: no cover - an ASOF LEFT JOIN keeps every left row exactly once
        raise AssertionError(
            f"ASOF join for view {view.name!r} returned {res.num_rows} rows for {n} entity rows"
        )
    r = res.column("r").to_numpy()
    p = pc.fill_null(res.column("p"), -1).to_numpy()
    t0 = pc.fill_null(res.column("t0"), 0).to_numpy()
    pos = np.full(n, -1, dtype=np.int64)
    pos[r] = p
    matched_t = np.zeros(n, dtype=np.int64)
    matched_t[r] = t0
    con.unregister("e")
    return pos, matched_t


def _positions(
    con: duckdb.DuckDBPyConnection,
    entity_t: np.ndarray,
    entity_keys: Sequence[pa.Array],
    view: ViewFrame,
    stats: JoinStats,
) -> np.ndarray:
    """For each entity row the position of its feature row in ``view.data``, or -1."""
    pos, matched_t = _asof(con, entity_t, entity_keys, view)
    n = len(entity_t)
    ttl = _ttl_micros(view.ttl)
    too_old = (pos >= 0) & (entity_t - matched_t > ttl) if ttl is not None else np.zeros(n, dtype=bool)
    pos[too_old] = -1
    stats.outside_ttl[view.name] = int(too_old.sum())
    stats.ties[view.name] = len(_resolve_ties(con, view, entity_keys, matched_t, pos))
    stats.matched[view.name] = int((pos >= 0).sum())
    con.unregister("f")
    return pos


def _better(new: list[dict[str, Any]], old: list[dict[str, Any]], order: list[str]) -> np.ndarray:
    """Where a tied row ``new`` beats ``old`` by content (the tie rule of :func:`_resolve_ties`)."""
    return np.array(
        [
            tuple(_sort_key(a[c]) for c in order) > tuple(_sort_key(b[c]) for c in order)
            for a, b in zip(new, old, strict=True)
        ],
        dtype=bool,
    )


def _join_parts(
    con: duckdb.DuckDBPyConnection,
    entity_t: np.ndarray,
    entity_keys: Sequence[pa.Array],
    view: ViewFrame,
    parts: Iterable[pa.Table],
    stats: JoinStats,
) -> pa.Table:
    """The features of each entity row's match when the view's rows come in ``parts`` (read one at a time).

    Each part is joined on its own (ASOF, ties inside it resolved); an entity row keeps the newest match
    of the parts so far, a tie between parts going to the greater content, as in one join of all rows. The
    ttl is applied to the final match. Memory: one part, plus the features of the entity frame's matches.
    """
    n = len(entity_t)
    features = list(view.features)
    order = list(view.tie_order or view.features)
    types = {f: view.data.schema.field(f).type for f in features}
    taken = pa.table({f: pa.nulls(n, types[f]) for f in features})
    best_t = np.zeros(n, dtype=np.int64)
    have = np.zeros(n, dtype=bool)
    tied = np.zeros(n, dtype=bool)
    for part in parts:
        if part.num_rows == 0:
            continue
        one = replace(view, data=part, parts=None)
        pos, t0 = _asof(con, entity_t, entity_keys, one)
        part_tied = np.zeros(n, dtype=bool)
        part_tied[_resolve_ties(con, one, entity_keys, t0, pos)] = True
        con.unregister("f")
        found = pos >= 0
        newer = found & (~have | (t0 > best_t))
        equal = found & have & (t0 == best_t)
        update = newer.copy()
        if equal.any():
            rows = np.nonzero(equal)[0]
            fresh = part.select(order).take(pa.array(pos[rows], pa.int64())).to_pylist()
            current = taken.select(order).take(pa.array(rows, pa.int64())).to_pylist()
            update[rows[_better(fresh, current, order)]] = True
            tied[rows] = True
        tied[newer] = part_tied[newer]
        if update.any():
            idx = pa.array(np.where(update, pos, 0), pa.int64())
            fresh_cols = part.select(features).take(idx)
            mask = pa.array(update)
            taken = pa.table(
                {f: pc.if_else(mask, fresh_cols.column(f).cast(types[f]), taken.column(f)) for f in features}
            )
        best_t = np.where(newer, t0, best_t)
        have |= found
    ttl = _ttl_micros(view.ttl)
    too_old = have & (entity_t - best_t > ttl) if ttl is not None else np.zeros(n, dtype=bool)
    if too_old.any():
        mask = pa.array(too_old)
        taken = pa.table({f: pc.if_else(mask, pa.nulls(n, types[f]), taken.column(f)) for f in features})
    matched = have & ~too_old
    stats.outside_ttl[view.name] = int(too_old.sum())
    stats.ties[view.name] = int((tied & matched).sum())
    stats.matched[view.name] = int(matched.sum())
    return taken


def point_in_time_join(
    entities: pa.Table, timestamp_column: str, views: Sequence[ViewFrame]
) -> tuple[pa.Table, JoinStats]:
    """Append each view's features to ``entities`` as of each row's ``timestamp_column``.

    ``entities`` must already be validated: a tz-aware timestamp column without nulls and, per view, a key
    column comparable with the view's key. Returns the joined table (entity columns untouched, then the
    features in the views' order) and per-view statistics.
    """
    stats = JoinStats()
    entity_t = micros(entities.column(timestamp_column)) if entities.num_rows else np.zeros(0, np.int64)
    out = entities
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for view in views:
            if len(view.entity_keys) != len(view.keys):
                raise ValueError(
                    f"view {view.name!r}: {len(view.entity_keys)} entity key columns for {len(view.keys)} key "
                    "columns of the view"
                )
            keys = []
            for name in view.entity_keys:
                col = entities.column(name)
                keys.append(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
            if view.parts is not None:
                taken = _join_parts(con, entity_t, keys, view, view.parts, stats)
            else:
                pos = _positions(con, entity_t, keys, view, stats)
                idx = pa.array(pos, pa.int64(), mask=pos < 0)
                taken = view.data.select(list(view.features)).take(idx)
            for src, name in zip(view.features, view.output_names, strict=True):
                column = taken.column(src)
                out = out.append_column(pa.field(name, column.type, nullable=True), column)
    finally:
        con.close()
    return out, stats
