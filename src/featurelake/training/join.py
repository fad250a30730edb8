"""The point-in-time join itself: an entity frame against one or more views' feature rows, over Arrow.

For every entity row (join key, time ``t``) and every view, the chosen feature row is the one with the same
key (every key column equal, for a composite key) and the greatest ``event_ts <= t``; it is used only when
``t - event_ts <= ttl`` (else the features are null: every earlier row is older still). Rows are never
dropped or reordered: the output has exactly one row per entity row, in the entity frame's order.

The search is a sort-merge in NumPy over one int64 per row. Each key column is coded over the view's rows:
integer keys whose values span a range no longer than the rows by their value minus the smallest, other
keys by dictionary encoding (Arrow's hash kernel; the entity frame's keys are looked up in that
dictionary). The codes of a composite key are combined into one, and ``code * span + (time - earliest)``
orders the rows by key, then time. The view's rows are sorted once on that value (two halves in two
threads: NumPy sorts without the GIL); the entity rows, sorted too, find their candidate with one
``searchsorted``, and the run of equal values around it is the set of rows tied with it. The feature columns are never copied to be sorted: they are
gathered with one Arrow ``take`` at the end, so their types come out exactly as stored. Memory beyond the
inputs: a few int64 arrays the length of the view (about 40 bytes per feature row) and of the entity frame.

Duplicate feature rows (same key and ``event_ts``) are legal in a table. A tie is resolved by content: the
row with the greatest values of the view's features, compared in the order the view declares them, nulls
lowest and NaN highest. The result therefore depends only on the data, never on file layout or thread
scheduling, which is what byte-identical reproduction needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

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


# Values of code * span + time stay below this, so int64 arithmetic on them never overflows.
_LIMIT = 1 << 62
# Below this many feature rows one sort in this thread is cheaper than splitting the work over two.
_PARALLEL_SORT_ROWS = 1 << 20
_PARALLEL_TAKE_ROWS = 1 << 17


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array of plain values: chunks combined, dictionaries decoded, ``-0.0`` made ``0.0``
    (a join key equal to another compares equal, as in SQL; Arrow's hash would tell the two zeros apart)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_floating(column.type):
        column = pc.add(column, pa.scalar(0.0, column.type))
    return column


def _codes(indices: pa.Array) -> np.ndarray:
    """Dictionary indices as a NumPy array (int32, zero-copy when there is no null), -1 where null."""
    if indices.null_count:
        indices = pc.fill_null(indices, -1)
    return indices.to_numpy(zero_copy_only=False)


def _integers(column: pa.Array) -> np.ndarray | None:
    """An integer column's values as int64 NumPy (nulls as 0), or None when they do not all fit."""
    try:
        values = column.cast(pa.int64()) if column.type != pa.int64() else column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if values.null_count:
        values = pc.fill_null(values, 0)
    return values.to_numpy(zero_copy_only=False)


def _encode_integers(entity: pa.Array, data: pa.Array) -> tuple[np.ndarray, np.ndarray, int] | None:
    """:func:`_encode` for integer keys whose values span a range no longer than the two columns: the code
    is the value minus the smallest one, without hashing (Arrow's hash encoding took 0.6 s of a 1.6 s join
    of 10M feature rows). None for other keys (sparse, or not integers)."""
    if not (pa.types.is_integer(entity.type) and pa.types.is_integer(data.type)) or data.null_count == len(
        data
    ):
        return None
    extremes = pc.min_max(data)
    lo, hi = extremes["min"].as_py(), extremes["max"].as_py()
    count = hi - lo + 1
    if count > len(data) + len(entity) or hi >= 1 << 63:
        return None
    features, keys = _integers(data), _integers(entity)
    if features is None or keys is None:
        return None
    features = features - lo  # within [0, count) where not null
    if data.null_count:
        features[data.is_null().to_numpy(zero_copy_only=False)] = -1
    present = np.zeros(count + 1, dtype=bool)  # the last slot stands for a null (code -1): never present
    present[features] = True
    present[count] = False
    inside = (keys >= lo) & (keys <= hi)  # compared as values: keys - lo may wrap outside the range
    if entity.null_count:
        inside &= entity.is_valid().to_numpy(zero_copy_only=False)
    codes = np.where(inside, keys - lo, count)
    return np.where(present[codes], codes, -1), features, count


def _encode(view: str, entity: pa.Array, data: pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes of one key column: equal values get equal codes, -1 for null and for entity values no feature
    row has. Returns the entity codes, the feature codes and the number of codes."""
    direct = _encode_integers(entity, data)
    if direct is not None:
        return direct
    encoded = pc.dictionary_encode(data)
    try:
        found = pc.index_in(entity, value_set=encoded.dictionary)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"view {view!r}: entity key values of type {entity.type} cannot be compared with the view's key "
            f"type {data.type} ({exc})"
        ) from None
    return _codes(found), _codes(encoded.indices), len(encoded.dictionary)


def _key_codes(view: ViewFrame, entity_keys: Sequence[pa.Array]) -> tuple[np.ndarray, np.ndarray, int]:
    """One int64 per entity row and per feature row, equal exactly when every key column is equal; -1 for a
    null key column (never equal to anything, as in SQL) and for entity keys no feature row has. Returns the
    entity codes, the feature codes and the number of codes."""
    entity_codes = feature_codes = np.zeros(0, np.int64)
    count = 0
    for i, (ekey, fkey) in enumerate(zip(entity_keys, view.keys, strict=True)):
        e, f, n = _encode(view.name, _plain(ekey), _plain(view.data.column(fkey)))
        if i == 0:
            entity_codes, feature_codes, count = e, f, n
            continue
        if count * n >= _LIMIT:  # re-number the combinations seen so far densely before adding a column
            entity_codes, feature_codes, count = _encode(
                view.name,
                pa.array(entity_codes, mask=entity_codes < 0),
                pa.array(feature_codes, mask=feature_codes < 0),
            )
        entity_codes = np.where((entity_codes < 0) | (e < 0), -1, entity_codes.astype(np.int64) * n + e)
        feature_codes = np.where((feature_codes < 0) | (f < 0), -1, feature_codes.astype(np.int64) * n + f)
        count *= n
    return entity_codes, feature_codes, count


def _feature_times(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """The view's event times as int64 microseconds (floored), and where they are null (None: nowhere)."""
    nulls = column.null_count
    if nulls == 0:
        return micros(column), None
    missing = column.is_null()
    if isinstance(missing, pa.ChunkedArray):
        missing = missing.combine_chunks()
    filled = pc.fill_null(column, pa.scalar(0, pa.int64()).cast(column.type))
    return micros(filled), missing.to_numpy(zero_copy_only=False)


def _argsort(values: np.ndarray) -> np.ndarray:
    """Positions that sort ``values``; a large array as two halves (split at a sampled median) sorted in two
    threads: NumPy releases the GIL while it sorts, so the halves use both cores."""
    if values.size < _PARALLEL_SORT_ROWS:
        return np.argsort(values)
    pivot = np.median(values[:: max(1, values.size // 4096)])
    low = values < pivot
    halves = [np.flatnonzero(low), np.flatnonzero(~low)]
    with ThreadPoolExecutor(2) as pool:
        sorted_halves = list(pool.map(lambda rows: rows[np.argsort(values[rows])], halves))
    return np.concatenate(sorted_halves)


@dataclass
class _Asof:
    """The search's answer, per entity row: ``pos`` the position in the view's rows of its match (-1: none),
    ``t`` that row's time (µs; 0 where none), ``first``/``last`` the range in ``order`` (the view's rows
    kept for the search, sorted by key, then time) of every row sharing the match's key and time
    (``first < last``: a tie), and ``old``: no match because every row at or before ``t`` is older than the
    ttl (those rows were left out of the search)."""

    pos: np.ndarray
    t: np.ndarray
    first: np.ndarray
    last: np.ndarray
    order: np.ndarray
    old: np.ndarray


_MIN = np.iinfo(np.int64).min
_MAX = np.iinfo(np.int64).max


def _asof(
    entity_t: np.ndarray, entity_keys: Sequence[pa.Array], view: ViewFrame, ttl: int | None = None
) -> _Asof:
    """For each entity row the latest row of ``view.data`` with its key at or before its time.

    Only rows some entity row can use are sorted: a key the entity frame holds, a time no later than that
    key's last entity time and, with ``ttl`` (µs), no older than its first entity time minus the ttl (an
    older row is too old for every entity row of its key). An entity row whose candidates were all too old
    is flagged in ``old``, so the statistics still count it as outside the ttl.
    """
    n = len(entity_t)
    none = np.full(n, -1, dtype=np.int64)
    result = _Asof(
        none, np.zeros(n, np.int64), none.copy(), none.copy(), np.zeros(0, np.int64), np.zeros(n, bool)
    )
    if n == 0 or view.data.num_rows == 0:
        return result
    entity_codes, feature_codes, count = _key_codes(view, entity_keys)
    wanted = np.flatnonzero(entity_codes >= 0)
    if wanted.size == 0:
        return result
    codes_e, times_e = entity_codes[wanted], entity_t[wanted]
    times, null_times = _feature_times(view.data.column(view.timestamp_field))
    # Per key code the last entity time (and first, for the ttl); slot ``count`` stands for code -1 (a null
    # key, which no entity row can use), so ``latest[feature_codes]`` needs no mask.
    latest = np.full(count + 1, _MIN, dtype=np.int64)
    np.maximum.at(latest, codes_e, times_e)
    keep = times <= latest[feature_codes]
    if null_times is not None:
        keep &= ~null_times
    too_old_key: np.ndarray | None = None
    if ttl is not None and ttl >= 0:
        first_e = np.full(count + 1, _MAX, dtype=np.int64)
        np.minimum.at(first_e, codes_e, times_e)
        older = keep & (times < first_e[feature_codes] - ttl)
        if older.any():
            too_old_key = np.zeros(count + 1, dtype=bool)
            too_old_key[feature_codes[older]] = True
            keep &= ~older
        del older, first_e
    del latest
    rows: np.ndarray | None = None
    if not keep.all():
        rows = np.flatnonzero(keep)
        feature_codes, times = feature_codes[rows], times[rows]
    del keep
    if feature_codes.size:
        _search(result, feature_codes, times, count, codes_e, times_e, wanted, rows)
    if too_old_key is not None:
        result.old[wanted] = too_old_key[codes_e]
        result.old &= result.pos < 0
    return result


def _search(
    result: _Asof,
    feature_codes: np.ndarray,
    times: np.ndarray,
    count: int,
    codes_e: np.ndarray,
    times_e: np.ndarray,
    wanted: np.ndarray,
    rows: np.ndarray | None,
) -> None:
    """Fill ``result`` for the entity rows ``wanted`` (key codes ``codes_e``, times ``times_e``) from the
    kept feature rows (``rows`` of the view, all when None)."""
    # code * span + (time - earliest): the order is by key, then time. Python ints check the range.
    earliest = min(int(times.min()), int(times_e.min()))
    span = max(int(times.max()), int(times_e.max())) - earliest + 1
    distinct: np.ndarray | None = None
    if count * span < _LIMIT:
        values = feature_codes.astype(np.int64)
        values *= span
        values += times
        values -= earliest
        queries = times_e - earliest
    else:  # times too far apart for raw microseconds: their ranks among all times order them the same way
        distinct, ranks = np.unique(np.concatenate([times, times_e]), return_inverse=True)
        span = len(distinct)
        values = feature_codes.astype(np.int64) * span + ranks[: len(times)]
        queries = ranks[len(times) :]
    order = _argsort(values)
    ordered = values[order]
    del values
    if rows is not None:
        order = rows[order]
    base = codes_e.astype(np.int64) * span
    queries += base
    by_query = np.argsort(queries)  # sorted probes walk the sorted values in order: cache friendly
    last = np.searchsorted(ordered, queries[by_query], side="right") - 1
    base = base[by_query]
    hit = last >= 0
    hit[hit] = ordered[last[hit]] >= base[hit]  # the row found holds the same key (not a smaller one)
    last, base = last[hit], base[hit]
    value = ordered[last]
    first = np.searchsorted(ordered, value, side="left")
    entity_rows = wanted[by_query[hit]]
    result.pos[entity_rows] = order[last]
    result.t[entity_rows] = value - base + earliest if distinct is None else distinct[value - base]
    result.first[entity_rows] = first
    result.last[entity_rows] = last
    result.order = order


def _resolve_ties(view: ViewFrame, match: _Asof) -> np.ndarray:
    """Re-point matched rows (``match.pos >= 0``) whose key and time have several feature rows to the row
    chosen by content. Returns the entity rows that matched a tie."""
    tied = np.flatnonzero((match.pos >= 0) & (match.last > match.first))
    if tied.size == 0:
        return tied
    tied = tied[np.argsort(match.first[tied], kind="stable")]
    starts = match.first[tied]
    group_at = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])  # one group per tied (key, time)
    group_first = starts[group_at]
    group_last = match.last[tied[group_at]]
    sizes = group_last - group_first + 1
    candidates = [np.sort(match.order[a : b + 1]) for a, b in zip(group_first, group_last, strict=True)]
    order = list(view.tie_order or view.features)
    values = view.data.select(order).take(pa.array(np.concatenate(candidates), pa.int64())).to_pylist()
    offsets = np.r_[0, np.cumsum(sizes)]
    bounds = np.r_[group_at, tied.size]
    for g, cands in enumerate(candidates):
        rows = values[offsets[g] : offsets[g + 1]]
        best = max(range(len(cands)), key=lambda i: tuple(_sort_key(rows[i][c]) for c in order))
        match.pos[tied[bounds[g] : bounds[g + 1]]] = cands[best]
    return tied


def _positions(
    entity_t: np.ndarray, entity_keys: Sequence[pa.Array], view: ViewFrame, stats: JoinStats
) -> np.ndarray:
    """For each entity row the position of its feature row in ``view.data``, or -1."""
    ttl = _ttl_micros(view.ttl)
    match = _asof(entity_t, entity_keys, view, ttl)
    pos = match.pos
    too_old = match.old.copy()
    if ttl is not None:
        too_old |= (pos >= 0) & (entity_t - match.t > ttl)
    pos[too_old] = -1
    stats.outside_ttl[view.name] = int(too_old.sum())
    stats.ties[view.name] = len(_resolve_ties(view, match))
    stats.matched[view.name] = int((pos >= 0).sum())
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
        match = _asof(entity_t, entity_keys, one)
        pos, t0 = match.pos, match.t
        part_tied = np.zeros(n, dtype=bool)
        part_tied[_resolve_ties(one, match)] = True
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


def _gather(table: pa.Table, columns: list[str], idx: pa.Array) -> pa.Table:
    """``table``'s ``columns`` at positions ``idx`` (null where null), a column per thread in two threads:
    Arrow's ``take`` releases the GIL, and at a million rows each column is a cache-missing gather."""
    if len(columns) < 2 or len(idx) < _PARALLEL_TAKE_ROWS:
        return table.select(columns).take(idx)
    with ThreadPoolExecutor(2) as pool:
        taken = list(pool.map(lambda name: table.column(name).take(idx), columns))
    return pa.table(dict(zip(columns, taken, strict=True)))


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
    for view in views:
        if len(view.entity_keys) != len(view.keys):
            raise ValueError(
                f"view {view.name!r}: {len(view.entity_keys)} entity key columns for {len(view.keys)} key "
                "columns of the view"
            )
        keys = [_plain(entities.column(name)) for name in view.entity_keys]
        if view.parts is not None:
            taken = _join_parts(entity_t, keys, view, view.parts, stats)
        else:
            pos = _positions(entity_t, keys, view, stats)
            taken = _gather(view.data, list(view.features), pa.array(pos, pa.int64(), mask=pos < 0))
        for src, name in zip(view.features, view.output_names, strict=True):
            column = taken.column(src)
            out = out.append_column(pa.field(name, column.type, nullable=True), column)
    return out, stats
