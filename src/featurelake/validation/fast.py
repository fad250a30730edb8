"""The audit's aggregates computed straight from Arrow buffers with NumPy (the local engine's fast path).

Most of what a view's checks and statistics ask for is a handful of column reductions: non-null counts
(Arrow keeps them in the array metadata), min / max / sum (vectorised NumPy passes), set membership
(``pyarrow.compute.is_in``) and row uniqueness. Those are answered here; every other expression, and every
case this module is not sure to answer *exactly as DuckDB would* (NaN in a min/max, decimals, strings, an
int sum that could overflow, rows whose uniqueness is not proven by their order), goes to the SQL engine in
one query.

The calling thread runs the scans one after the other: they are bound by memory bandwidth, which a second
thread raises by ~15% on a 2-core machine, and threads handing the GIL to each other between NumPy calls
made the pass slower, not faster (see ``scan_helpers``).

Uniqueness is proven without hashing when the rows are strictly ordered by the key columns (either order
of them): then no two adjacent rows, hence no two rows, are equal. Time-ordered feature data often is;
otherwise DuckDB counts distinct hashes as before.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurelake.validation.core import Agg
from featurelake.validation.sql_arrow import count_false

Sql = Callable[[list[str]], list[Any]]

_EPOCH = datetime(1970, 1, 1)
_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_UNKNOWN = object()


def process_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """A thread pool of this process, created on first use.

    Keyed by process id: a child forked after the parent used a pool (a prefork worker) gets its own,
    since the parent's threads do not exist in the child and jobs submitted there would never run.
    """
    key = (name, os.getpid())
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        return pool


@functools.cache
def _cpus() -> int:
    """The machine's CPUs (``os.cpu_count`` reads /sys each time: ~30 us, twice per audit call)."""
    return os.cpu_count() or 1


def audit_workers() -> int:
    """Threads of the audit's pool: one per CPU, at least two (NumPy and Arrow release the GIL)."""
    return max(2, _cpus())


def _pool() -> ThreadPoolExecutor:
    return process_pool("audit", audit_workers())


def background(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """Run ``fn(*args)`` on the audit's thread pool."""
    return _pool().submit(fn, *args)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _timestamp_tz(t: pa.DataType) -> Any:
    """The tzinfo DuckDB gives values of timestamp type ``t`` (None: naive), or _UNKNOWN when unsupported."""
    if not pa.types.is_timestamp(t) or t.unit != "us":
        return _UNKNOWN
    if t.tz is None:
        return None
    return UTC if t.tz in ("UTC", "+00:00", "Etc/UTC") else _UNKNOWN


def _chunk_values(chunk: pa.Array, fill: Any) -> np.ndarray:
    """The chunk's values as NumPy, nulls replaced by ``fill`` (a copy)."""
    return pc.fill_null(chunk, pa.scalar(fill, chunk.type)).to_numpy(zero_copy_only=False)


def _raw_values(chunk: pa.Array) -> np.ndarray:
    """The chunk's value buffer as NumPy without a copy; slots of nulls hold arbitrary values."""
    dtype = np.dtype(chunk.type.to_pandas_dtype())
    return np.frombuffer(chunk.buffers()[1], dtype)[chunk.offset : chunk.offset + len(chunk)]


def _first_valid(chunk: pa.Array) -> Any:
    """The first non-null value of a chunk that has one (found in its validity bitmap)."""
    bitmap = np.frombuffer(chunk.buffers()[0], np.uint8)
    start = chunk.offset >> 3
    # A valid value is almost always among the first few bytes' bits: look there before the whole map.
    for stop in (start + 64, len(bitmap)):
        bits = np.unpackbits(bitmap[start:stop], bitorder="little")
        candidates = np.flatnonzero(bits[chunk.offset - start * 8 :])
        candidates = candidates[candidates < len(chunk)]
        if candidates.size:
            return chunk[int(candidates[0])].as_py()
    raise ValueError("chunk has no valid value")  # callers skip all-null chunks


#: Values per block of the min/max pass past nulls (see ``_extreme_at``).
EXTREME_BLOCK = 4096


def _extreme_at(raw: np.ndarray, op: str) -> int:
    """A position of ``raw``'s smallest (``op`` "min") or largest value; of its first NaN if it has one.

    ``argmin`` reads the values at half ``min``'s speed, so the extremes of blocks of ``EXTREME_BLOCK``
    values are taken with the vectorised ``min`` and only the winning block is searched.
    """
    reduce = np.minimum.reduce if op == "min" else np.maximum.reduce
    head = raw.size - raw.size % EXTREME_BLOCK
    blocks = reduce(raw[:head].reshape(-1, EXTREME_BLOCK), axis=1)
    if head < raw.size:  # the tail is the last block
        blocks = np.append(blocks, reduce(raw[head:]))
    # NaN propagates through a block's reduction and argmin/argmax stop at the first NaN: the first
    # NaN block, then the first NaN in it.
    if op == "min":
        start = int(blocks.argmin()) * EXTREME_BLOCK
        return start + int(raw[start : start + EXTREME_BLOCK].argmin())
    start = int(blocks.argmax()) * EXTREME_BLOCK
    return start + int(raw[start : start + EXTREME_BLOCK].argmax())


def _extremes_past_nulls(chunk: pa.Array, ops: set[str]) -> tuple[Any, Any, Any] | None:
    """(min, max, None) of a chunk with nulls read from its value buffer without filling the nulls first,
    or None when a null slot's (arbitrary) value could be one of the extremes.

    The smallest value of all slots is the smallest valid value whenever it is reached at a valid slot:
    it is at most every valid value and is one of them. So a position of each extreme of all slots is
    looked up in the validity bitmap (one bit), where a copy of the chunk with its nulls filled, or a
    pass over its whole bitmap, costs more than the min and max themselves. A NaN comes back as the
    extreme (the caller's NaN rule) when it is at a valid slot, and sends the chunk to the filled path
    when it is at a null slot.
    """
    validity, values = chunk.buffers()[:2]
    assert validity is not None and values is not None  # a chunk with nulls has a bitmap
    raw = np.frombuffer(values, np.dtype(chunk.type.to_pandas_dtype()))[
        chunk.offset : chunk.offset + len(chunk)
    ]
    out: list[Any] = [None, None]
    for k, op in enumerate(("min", "max")):
        if op in ops:
            at = _extreme_at(raw, op)
            pos = chunk.offset + at
            if not validity[pos >> 3] >> (pos & 7) & 1:  # a null slot's value
                return None
            out[k] = raw[at].item()
    return out[0], out[1], None


def _column_extremes_past_nulls(col: pa.ChunkedArray, ops: set[str]) -> tuple[Any, Any] | None:
    """(min, max) of a numeric column with nulls, as :func:`_extremes_past_nulls` finds them, for the
    whole column at once: or None when a null slot's value is an extreme (then chunk by chunk decides).

    Each chunk costs one ``reduceat`` per extreme (the extremes of its blocks of ``EXTREME_BLOCK`` values,
    its tail included) and the rest is done once per column: which block wins, where in it, and whether
    that slot is valid. Chunk by chunk, these steps cost more Python than the reductions themselves.
    """
    dtype = np.dtype(col.type.to_pandas_dtype())
    wanted = [(k, op, np.minimum if op == "min" else np.maximum) for k, op in enumerate(("min", "max"))]
    wanted = [w for w in wanted if w[1] in ops]
    parts: list[tuple[np.ndarray, Any, int]] = []
    blocks: list[list[np.ndarray]] = [[] for _ in wanted]
    for chunk in col.chunks:
        if chunk.null_count < len(chunk):
            validity, values = chunk.buffers()[:2]
            raw = np.frombuffer(values, dtype)[chunk.offset : chunk.offset + len(chunk)]
            parts.append((raw, validity, chunk.offset))
            starts = np.arange(0, raw.size, EXTREME_BLOCK)
            # Both extremes of a chunk one after the other: the second pass reads it from the CPU cache.
            for j, (_, _, ufunc) in enumerate(wanted):
                blocks[j].append(ufunc.reduceat(raw, starts))
    out: list[Any] = [None, None]
    for (k, op, _), extremes in zip(wanted, blocks, strict=True):
        # NaN propagates through a block's reduction and argmin/argmax stop at the first NaN: the first
        # NaN block, then the first NaN in it.
        every = np.concatenate(extremes)
        won = int(every.argmin() if op == "min" else every.argmax())
        part = 0
        while won >= len(extremes[part]):  # the chunk of the winning block
            won -= len(extremes[part])
            part += 1
        raw, validity, offset = parts[part]
        start = won * EXTREME_BLOCK
        block = raw[start : start + EXTREME_BLOCK]
        at = start + int(block.argmin() if op == "min" else block.argmax())
        pos = offset + at
        if validity is not None and not validity[pos >> 3] >> (pos & 7) & 1:  # a null slot's value
            return None
        out[k] = raw[at].item()
    return out[0], out[1]


def _chunk_reduce(chunk: pa.Array, ops: set[str]) -> tuple[Any, Any, Any]:
    """(min, max, sum) of one chunk with at least one non-null value; NumPy NaN semantics."""
    nulls = chunk.null_count
    if nulls and "sum" not in ops:
        quick = _extremes_past_nulls(chunk, ops)
        if quick is not None:
            return quick
    fill = _first_valid(chunk) if nulls else 0
    # Nulls filled with one of the chunk's own values leave its min and max unchanged and add
    # nulls * fill to its sum, which is taken off again (exactly for integers, in int64's wrapping
    # arithmetic; to rounding for floats, as any float sum).
    x = _chunk_values(chunk, fill) if nulls else _raw_values(chunk)
    lo = x.min().item() if "min" in ops else None
    hi = x.max().item() if "max" in ops else None
    total = None
    if "sum" in ops:
        if pa.types.is_integer(chunk.type):
            total = (x.sum(dtype=np.int64) - np.int64(nulls) * np.int64(fill)).item()
        elif nulls and not math.isfinite(fill):
            total = pc.sum(chunk).as_py()
        else:
            total = (x.sum() - nulls * fill).item() if nulls else x.sum().item()
    return lo, hi, total


def reduce_column(col: pa.ChunkedArray, ops: set[str]) -> dict[str, Any] | None:
    """``{op: value}`` for ``ops`` ⊆ {min, max, sum} exactly as DuckDB returns them; None when unsure."""
    t = col.type
    tz = _timestamp_tz(t)
    is_ts = tz is not _UNKNOWN
    if not (_numeric(t) or is_ts) or (is_ts and "sum" in ops) or pa.types.is_float16(t):
        return None
    if is_ts:
        col = pa.chunked_array([c.view(pa.int64()) for c in col.chunks], pa.int64())
    lo: Any = None
    hi: Any = None
    total: Any = None
    chunks = col.chunks
    if 0 < col.null_count < len(col):
        with np.errstate(all="ignore"):
            quick = _column_extremes_past_nulls(col, ops)
        if quick is not None:
            lo, hi = quick
            # Arrow skips the nulls by their bitmap, where NumPy needs a copy with them filled first.
            total = pc.sum(col).as_py() if "sum" in ops else None
            chunks = []
    for chunk in chunks:
        if chunk.null_count == len(chunk):
            continue
        with np.errstate(all="ignore"):  # inf - inf is NaN, as in DuckDB: not worth a warning here
            c_lo, c_hi, c_sum = _chunk_reduce(chunk, ops)
        if c_lo is not None:
            lo = c_lo if lo is None or c_lo != c_lo else min(lo, c_lo)
        if c_hi is not None:
            hi = c_hi if hi is None or c_hi != c_hi else max(hi, c_hi)
        if c_sum is not None:
            total = c_sum if total is None else total + c_sum
    # NumPy propagates NaN through min and max; DuckDB orders NaN above +inf. Let DuckDB decide.
    if pa.types.is_floating(t) and any(isinstance(v, float) and v != v for v in (lo, hi)):
        return None
    if "sum" in ops and pa.types.is_integer(t) and total is not None:
        # An int64 NumPy sum wraps silently; DuckDB's does not. Only trust it when no wrap was possible.
        bound = max(abs(int(lo)), abs(int(hi))) if lo is not None and hi is not None else None
        if bound is None:
            extremes = reduce_column(col, {"min", "max"})
            if extremes is None:
                return None
            bound = max(abs(int(extremes["min"])), abs(int(extremes["max"])))
        if bound * (len(col) + 1) >= 2**63:
            return None
    out: dict[str, Any] = {}
    for op, v in (("min", lo), ("max", hi), ("sum", total)):
        if op in ops:
            if is_ts and v is not None:
                v = _EPOCH.replace(tzinfo=tz) + timedelta(microseconds=int(v))
            out[op] = v
    return out


def count_not_in(col: pa.ChunkedArray, values: tuple[Any, ...]) -> int | None:
    """Non-null values of ``col`` that are not one of ``values`` (None when the types do not allow it)."""
    t = col.type
    if not (_numeric(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)):
        return None
    try:
        allowed = pa.array(list(values)).cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if len(allowed) != len(values) or allowed.null_count:
        return None
    if pa.types.is_integer(t) and len(col) > col.null_count:
        # Integer codes: when the set holds every integer between the column's min and max, nothing is
        # outside, and a min/max pass is ~20x cheaper than a hash lookup per row.
        extremes = pc.min_max(col)
        lo, hi = extremes["min"].as_py(), extremes["max"].as_py()
        members = set(values)
        if hi - lo < len(members) and all(v in members for v in range(lo, hi + 1)):
            return 0
    inside = pc.sum(pc.is_in(col, value_set=allowed)).as_py() or 0
    return len(col) - col.null_count - int(inside)


def _key_arrays(batch: pa.RecordBatch) -> list[np.ndarray]:
    out = []
    for col in batch.columns:
        if pa.types.is_timestamp(col.type):
            col = col.view(pa.int64())
        out.append(col.to_numpy(zero_copy_only=True))
    return out


def _strictly_increasing(keys: list[np.ndarray]) -> bool:
    """True when rows are in strictly increasing lexicographic order of ``keys`` (so all distinct)."""
    if keys[0].size < 2:
        return True
    nxt, prev = keys[0][1:], keys[0][:-1]
    if len(keys) == 1:
        return bool((nxt > prev).all())
    if len(keys) == 2:  # (key, timestamp), the usual case: one expression, ~20% faster than the loop
        return bool(((nxt > prev) | ((nxt == prev) & (keys[1][1:] > keys[1][:-1]))).all())
    greater, equal = nxt > prev, nxt == prev
    for k in keys[1:-1]:
        nxt, prev = k[1:], k[:-1]
        greater |= equal & (nxt > prev)
        equal &= nxt == prev
    nxt, prev = keys[-1][1:], keys[-1][:-1]
    greater |= equal & (nxt > prev)
    return bool(greater.all())


#: Rows checked at a time by ``distinct_rows``: the temporaries stay in the CPU cache, and a key order
#: that does not hold is dropped after its first failing block instead of a pass over a whole batch.
#: After a frame's first block (where an order that does not hold is usually dropped), blocks are
#: ``ORDER_GROWTH`` times larger: fewer calls (1M rows ~2.1 -> ~1.8 ms), temporaries of 64 KB each.
ORDER_BLOCK = 16_384
ORDER_GROWTH = 4


def distinct_rows(frame: pa.Table, cols: tuple[str, ...]) -> int | None:
    """The row count when the rows are provably distinct on ``cols`` by their order, else None.

    Batch by batch on zero-copy views of the key columns (integers or timestamps without nulls), plus
    the seam between consecutive batches.
    """
    names = frame.column_names
    if any(c not in names for c in cols):
        return None
    keys = frame.select(list(cols))
    for col in keys.columns:
        t = col.type
        if col.null_count or not (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
            return None
    batches = [b for b in keys.to_batches() if b.num_rows]
    if not batches:
        return frame.num_rows
    orders = [list(range(len(cols)))]
    if len(cols) > 1:
        orders.append(orders[0][::-1])
    # Every candidate order is checked block by block (each block overlapping the previous one by a row,
    # and across the seam between batches); an order is dropped at its first out-of-order block.
    previous: list[np.ndarray] | None = None
    for batch in batches:
        arrays = _key_arrays(batch)
        if previous is not None:
            seam = [np.concatenate([p[-1:], a[:1]]) for p, a in zip(previous, arrays, strict=True)]
            orders = [o for o in orders if _strictly_increasing([seam[i] for i in o])]
        n, lo = batch.num_rows, 0
        while lo < n:
            if not orders:
                return None
            step = ORDER_BLOCK if previous is None and lo == 0 else ORDER_BLOCK * ORDER_GROWTH
            block = [a[max(lo - 1, 0) : lo + step] for a in arrays]
            orders = [o for o in orders if _strictly_increasing([block[i] for i in o])]
            lo += step
        if not orders:
            return None
        previous = arrays
    return frame.num_rows


def _count_false(frame: pa.Table, predicate: str, reduced: dict[str, Future[Any]]) -> int | None:
    """``count_false`` given the min and max this pass computed (a predicate they prove reads no row)."""
    bounds = {}
    for col, job in reduced.items():
        # A reduction not started yet is not waited for. Predicates are queued after the reductions, so
        # every one has started by now; the guard keeps a predicate from waiting on work no thread runs.
        if not (job.running() or job.done()):
            continue
        extremes = job.result()
        if extremes and "min" in extremes and "max" in extremes:
            bounds[col] = (extremes["min"], extremes["max"])
    return count_false(frame, predicate, bounds=bounds)


#: Pool threads that help the calling thread with the column scans, at most. A scan is bound by memory
#: bandwidth, which a second thread raises by ~15% on a 2-core machine; every thread beyond the first
#: also competes for the GIL between NumPy calls. So the calling thread scans alone unless the machine
#: has cores to spare beyond the one drawing the sample (which joins in once the sample is drawn:
#: ``ArrowAggregates.help``).
SCAN_HELPERS = 3


def scan_helpers() -> int:
    """Pool threads that join the calling thread's scans: the CPUs beyond two, at most ``SCAN_HELPERS``."""
    return max(0, min(SCAN_HELPERS, _cpus() - 2))


Task = tuple[list[int], "Future[Any]", Callable[[], Any]]


def _drain(tasks: deque[Task]) -> None:
    """Run queued tasks until none is left; each one's result or exception goes to its future."""
    while True:
        try:
            _, future, fn = tasks.popleft()
        except IndexError:
            return
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn())
        except BaseException as exc:  # delivered to the caller by future.result()
            future.set_exception(exc)


class ArrowAggregates:
    """``query(exprs)`` for the audit evaluator over an in-memory Arrow ``frame``.

    Known :class:`Agg` expressions are computed here, by column scans that the calling thread runs itself
    (helped by :func:`scan_helpers` pool threads); the rest (and anything not answered exactly) go to
    ``sql(exprs)`` in at most two calls, the first on the pool, concurrently with the scans.
    """

    #: Tells ``evaluate_with`` that DISTINCT aggregates may be mixed in: ``sql`` gets them apart itself.
    splits_distinct = True

    def __init__(self, frame: pa.Table, sql: Sql) -> None:
        self.frame, self.sql = frame, sql
        self._tasks: deque[Task] = deque()

    def help(self) -> None:
        """Run scans still queued by a call in progress on another thread (nothing when none is)."""
        _drain(self._tasks)

    def __call__(self, exprs: list[str]) -> list[Any]:
        frame, n = self.frame, self.frame.num_rows
        out: list[Any] = [None] * len(exprs)
        done = [False] * len(exprs)
        reductions: dict[str, dict[str, list[int]]] = {}
        first: list[tuple[list[int], Callable[[], Any]]] = []
        later: list[tuple[list[int], Callable[[], Any]]] = []
        plain_sql: list[int] = []
        predicates: list[int] = []
        names = set(frame.column_names)  # a new list on every access (~10 us): once per call, not per expr
        for i, e in enumerate(exprs):
            if not isinstance(e, Agg) or (e.column is not None and e.column not in names):
                if e.strip().lower() == "count(*)":
                    out[i], done[i] = n, True
                else:
                    plain_sql.append(i)
            elif e.op == "count_all":
                out[i], done[i] = n, True
            elif e.op == "count" and e.column is not None:
                out[i], done[i] = n - frame.column(e.column).null_count, True
            elif e.op in ("min", "max", "sum") and e.column is not None:
                reductions.setdefault(e.column, {}).setdefault(e.op, []).append(i)
            elif e.op == "count_not_in" and e.column is not None:
                later.append(([i], functools.partial(count_not_in, frame.column(e.column), e.args[0])))
            elif e.op == "count_false":
                predicates.append(i)
            elif e.op == "distinct_rows":
                first.append(([i], functools.partial(distinct_rows, frame, e.args)))
            else:
                plain_sql.append(i)
        sql_job = _pool().submit(self.sql, [exprs[i] for i in plain_sql]) if plain_sql else None
        tasks: deque[Task] = deque()
        # Reductions of the key columns right after the uniqueness scan read them: from the CPU cache.
        keys = {c for e in exprs if isinstance(e, Agg) and e.op == "distinct_rows" for c in e.args}
        tasks.extend((idx, Future(), fn) for idx, fn in first)
        reduced: dict[str, Future[Any]] = {}
        for col, wanted in sorted(reductions.items(), key=lambda item: item[0] not in keys):
            reduced[col] = Future()
            fn = functools.partial(reduce_column, frame.column(col), set(wanted))
            tasks.append(([i for ids in wanted.values() for i in ids], reduced[col], fn))
        tasks.extend((idx, Future(), fn) for idx, fn in later)
        # Queued after the reductions, so that those have all started when a predicate runs: a float
        # column whose min and max came out finite needs no check for NaN and infinities of its own.
        for i in predicates:
            predicate = exprs[i].args[0]  # type: ignore[attr-defined]
            tasks.append(([i], Future(), functools.partial(_count_false, frame, predicate, reduced)))
        jobs = list(tasks)
        self._tasks = tasks
        for _ in range(min(scan_helpers(), len(tasks) - 1)):
            _pool().submit(_drain, tasks)
        _drain(tasks)
        for idx, job, _ in jobs:
            value = job.result()  # a helper may still be running it
            if value is None:
                continue
            for i in idx:
                e = exprs[i]
                out[i] = value[e.op] if isinstance(value, dict) else value  # type: ignore[attr-defined]
                done[i] = True
        if sql_job is not None:
            for i, v in zip(plain_sql, sql_job.result(), strict=True):
                out[i], done[i] = v, True
        rest = [i for i in range(len(exprs)) if not done[i]]
        if rest:
            for i, v in zip(rest, self.sql([exprs[i] for i in rest]), strict=True):
                out[i] = v
        return out


__all__ = ["ArrowAggregates", "audit_workers", "background", "count_not_in", "distinct_rows", "reduce_column"]
