"""Online sync on Spark: the driver plans from Iceberg metadata as the local sync does, executors write their
partitions to Redis with the store's own script, the watermark moves after every partition succeeded.

How and why: docs/spark.md, "How online sync runs on Spark".
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table
from pyiceberg.types import IcebergType

from featurelake.engines import spark_engine
from featurelake.engines.spark_files import bounds_filter, read_files
from featurelake.engines.spark_session import first_line, map_in_arrow, quote_ident
from featurelake.errors import ConfigError, FeaturelakeError, OnlineStoreUnavailableError
from featurelake.features.keys import key_sql
from featurelake.serving.backend import SyncBackend
from featurelake.serving.scope import StoreScope
from featurelake.serving.sync import (
    SEQ,
    Reducer,
    SyncPlan,
    SyncProgress,
    SyncResult,
    finish_sync,
    key_values,
    plan_sync,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from featurelake.engines.spark import SparkEngine
    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

_ROWS = "__featurelake_rows"
#: Re-read keys up to this many go into the scan as an IN filter (pushed down); more are a semi-join.
_IN_FILTER_MAX = 1000
_OUT_SCHEMA = pa.schema(
    [
        pa.field("rows", pa.int64()),
        pa.field("keys", pa.int64()),
        pa.field("changed", pa.int64()),
        # JSON list of the keys written, when asked: an array column would trip pyspark's distutils check.
        pa.field("written", pa.string()),
    ]
)
_OUT_DDL = "rows long, keys long, changed long, written string"


# --- writing from the executors ------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTarget:
    """What an executor needs to write one view's keys: where Redis is and how rows are encoded."""

    url: str
    scope: StoreScope
    connect_timeout: float
    timeout: float
    view: str
    join_keys: tuple[str, ...]
    timestamp_field: str
    fields: dict[str, IcebergType]
    chunk: int

    def __repr__(self) -> str:  # the URL may hold a password: never print it
        return f"RedisTarget(scope={self.scope.token!r}, view={self.view!r})"


def write_partition(
    target: RedisTarget, force: bool, report_keys: bool, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Runs on an executor, once per partition: encode its latest rows and write them to Redis, pipelined,
    over a connection of its own; yields per-batch counts (and the keys written when asked)."""
    from featurelake.serving.redis import RedisStore

    store: RedisStore | None = None
    reducer: Reducer | None = None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if store is None or reducer is None:
                store = RedisStore(
                    target.url, target.scope, connect_timeout=target.connect_timeout, timeout=target.timeout
                )
                reducer = Reducer(target.join_keys, target.timestamp_field, target.fields)
            rows = pa.Table.from_batches([batch])
            records = reducer.encode(rows)
            changed = 0
            for start in range(0, len(records), target.chunk):
                changed += store.write(target.view, records.slice(start, start + target.chunk), force=force)
            yield pa.RecordBatch.from_pydict(
                {
                    "rows": [int(pc.sum(rows.column(_ROWS)).as_py() or 0)],
                    "keys": [len(records)],
                    "changed": [changed],
                    "written": [json.dumps(records.keys) if report_keys else "[]"],
                },
                schema=_OUT_SCHEMA,
            )
    finally:
        if reducer is not None:
            reducer.close()
        if store is not None:
            store.close()


def _key_text(keys: Sequence[str]) -> Column:
    """The store key of each row, built by Spark exactly as DuckDB builds it (``features/keys.py``)."""
    from pyspark.sql import functions as F

    return F.expr(key_sql(keys, quote_ident, "STRING"))


def _latest(rows: DataFrame, join_keys: Sequence[str], timestamp_field: str, columns: list[str]) -> DataFrame:
    """The latest row per key by (event time, sequence number), with how many rows the key had."""
    from pyspark.sql import functions as F

    row = F.struct(*[F.col(quote_ident(c)) for c in columns], F.col(SEQ))
    order = F.struct(F.col(quote_ident(timestamp_field)), F.col(SEQ))
    return (
        rows.groupBy(*[F.col(quote_ident(k)) for k in join_keys])
        .agg(F.max_by(row, order).alias("__latest"), F.count(F.lit(1)).alias(_ROWS))
        .select("__latest.*", _ROWS)
    )


@dataclass
class _Pushed:
    rows: int = 0
    keys: int = 0
    changed: int = 0
    written: list[str] | None = None


def _last_exception_line(text: str) -> str | None:
    found = re.findall(r"^([\w.]+(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
    return f"{found[-1][0]}: {found[-1][1]}" if found else None


@contextlib.contextmanager
def _spark_job(view: str, what: str) -> Iterator[None]:
    """Executor failures as featurelake errors that say the watermark did not move."""
    try:
        yield
    except FeaturelakeError:
        raise
    except Exception as exc:
        text = str(exc)
        unavailable = re.search(
            r"featurelake\.errors\.OnlineStoreUnavailableError: (.+)$", text, re.MULTILINE
        )
        if unavailable:
            raise OnlineStoreUnavailableError(
                f"{unavailable.group(1).strip()} (from a Spark executor while {what}); the watermark of "
                f"{view} was not advanced, so the next `featurelake sync` redoes this batch"
            ) from exc
        cause = _last_exception_line(text) or first_line(exc)
        if "ModuleNotFoundError" in (cause or ""):
            raise ConfigError(
                f"the Spark executors cannot sync {view}: {cause}; install featurelake with the redis extra "
                "(featurelake[redis]) in the Python that spark.pyspark.python names on every worker"
            ) from exc
        raise FeaturelakeError(
            f"online sync of {view} failed on Spark while {what}: {cause}; the watermark was not advanced, "
            "so the next `featurelake sync` redoes this batch"
        ) from exc


def _push(latest: DataFrame, target: RedisTarget, *, force: bool, report_keys: bool = False) -> _Pushed:
    from featurelake.engines.spark import arrow_batches

    fn = functools.partial(write_partition, target, force, report_keys)
    frame = map_in_arrow(latest, fn, _OUT_DDL)
    with _spark_job(target.view, "writing to Redis"):
        batches = arrow_batches(frame)
    out = pa.Table.from_batches(batches, schema=_OUT_SCHEMA)
    pushed = _Pushed(
        rows=int(pc.sum(out.column("rows")).as_py() or 0),
        keys=int(pc.sum(out.column("keys")).as_py() or 0),
        changed=int(pc.sum(out.column("changed")).as_py() or 0),
    )
    if report_keys:
        pushed.written = [k for ks in out.column("written").to_pylist() for k in json.loads(ks)]
    return pushed


# --- the sync ------------------------------------------------------------------------------------------


def _collect_keys(frame: DataFrame, view: str, what: str) -> list[str]:
    from featurelake.engines.spark import arrow_batches

    with _spark_job(view, what):
        batches = arrow_batches(frame)
    return [k for b in batches for k in b.column(0).to_pylist()]


def _stale_keys(latest: DataFrame, gone: DataFrame, view: FeatureView) -> list[str]:
    """Keys whose newest removed row is at least as new as their newest added row (or that got none)."""
    from pyspark.sql import functions as F

    keys, ts = [quote_ident(k) for k in view.join_keys], quote_ident(view.timestamp_field)
    removed = gone.groupBy(*[F.col(k) for k in keys]).agg(F.max(F.struct(F.col(ts), F.col(SEQ))).alias("__r"))
    added = latest.select(*[F.col(k) for k in keys], F.struct(F.col(ts), F.col(SEQ)).alias("__a"))
    stale = (
        removed.join(added, view.join_keys, "left")
        .where(F.col("__a").isNull() | (F.col("__r") >= F.col("__a")))
        .select(_key_text(view.join_keys))
    )
    return _collect_keys(stale, view.name, "comparing removed rows")


def _only_keys(rows: DataFrame, tbl: Table, join_keys: Sequence[str], keys: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    values = key_values(tbl, join_keys, keys)
    if len(join_keys) > 1:  # a composite key: its tuples as a broadcast semi-join
        wanted = rows.sparkSession.createDataFrame(
            values, rows.select(*[quote_ident(k) for k in join_keys]).schema
        )
        return rows.join(F.broadcast(wanted), list(join_keys), "left_semi")
    join_key = join_keys[0]
    if len(values) <= _IN_FILTER_MAX:
        return rows.where(
            F.col(quote_ident(join_key)).isin(values)
        )  # pushed down: files pruned by key bounds
    wanted = rows.sparkSession.createDataFrame(
        [(v,) for v in values], rows.select(quote_ident(join_key)).schema
    )
    return rows.join(F.broadcast(wanted), join_key, "left_semi")


def _absent_keys(store: OnlineStore, latest: DataFrame, view: FeatureView) -> list[str]:
    """Keys the store holds for ``view`` that the full read of main did not produce."""

    stored = list(store.keys(view.name))
    if not stored:
        return []
    have = latest.sparkSession.createDataFrame([(k,) for k in stored], "k string")
    present = latest.select(_key_text(view.join_keys).alias("k"))
    return _collect_keys(have.join(present, "k", "left_anti"), view.name, "listing keys to delete")


def _apply_on_spark(
    project: Project, engine: SparkEngine, store: OnlineStore, planned: SyncPlan, progress: SyncProgress
) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from featurelake.serving.redis import RedisStore

    assert isinstance(store, RedisStore)
    tbl, view, result, current = planned.table, planned.view, planned.result, planned.current
    assert current is not None
    cfg = project.config.settings.online_store
    target = RedisTarget(
        url=store.url,
        scope=store.scope,
        connect_timeout=cfg.connect_timeout_seconds,
        timeout=cfg.timeout_seconds,
        view=view.name,
        join_keys=tuple(view.join_keys),
        timestamp_field=view.timestamp_field,
        fields=planned.types,
        chunk=cfg.write_chunk,
    )
    key, ts, columns = view.join_keys, view.timestamp_field, planned.columns
    progress.phase(
        view.name,
        f"reading {len(planned.added)} added and {len(planned.removed)} removed data files on Spark",
    )
    if planned.deletes:
        # Merge-on-read deletes: Spark's reader applies them; every row counts as main's current sequence.
        rows = engine.spark.sql(
            f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {engine.table_ident(tbl)} "
            f"VERSION AS OF {current.snapshot_id}"
        ).withColumn(SEQ, F.lit(int(current.sequence_number or 0)).cast("long"))
    else:
        rows = read_files(
            engine, tbl, current.snapshot_id, planned.added, columns, prune_on=ts, seq_column=SEQ
        )
    result.files_read = len(planned.added) + len(planned.removed)
    latest = _latest(rows, key, ts, columns)
    reused = planned.full or bool(planned.removed)
    if reused:  # read again below (deletions, removed-row comparison): computed once
        latest = latest.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        progress.phase(view.name, f"writing the latest row per key to {store.location} from Spark executors")
        pushed = _push(latest, target, force=planned.full)
        result.rows, result.keys, result.changed = pushed.rows, pushed.keys, pushed.changed
        progress.writing(view.name, pushed.keys)
        progress.advance(view.name, pushed.keys)
        stale: list[str] = []
        if planned.removed:
            assert planned.watermark is not None
            gone = read_files(
                engine,
                tbl,
                planned.watermark.snapshot_id,
                planned.removed,
                [*key, ts],
                prune_on=ts,
                seq_column=SEQ,
            )
            stale = _stale_keys(latest, gone, view)
        refreshed: list[str] = []
        if stale:
            progress.phase(view.name, f"re-reading {len(stale)} keys whose newest row a commit removed")
            again = _only_keys(
                read_files(engine, tbl, current.snapshot_id, planned.live_files(), columns, seq_column=SEQ),
                tbl,
                key,
                stale,
            )
            redo = _push(_latest(again, key, ts, columns), target, force=True, report_keys=True)
            result.changed += redo.changed
            refreshed = redo.written or []
            progress.writing(view.name, redo.keys)
            progress.advance(view.name, redo.keys)
        drop = sorted(set(stale) - set(refreshed))
        if planned.full:
            progress.phase(view.name, "removing keys main no longer has")
            drop = _absent_keys(store, latest, view)
        if drop:
            result.deleted = store.delete(view.name, drop)
    finally:
        if reused:
            latest.unpersist()


def sync_view_spark(
    project: Project,
    store: OnlineStore,
    view: FeatureView,
    *,
    engine: SparkEngine,
    full: bool = False,
    progress: SyncProgress | None = None,
) -> SyncResult:
    """``serving.sync.sync_view`` with the reading on Spark and the Redis writes on its executors."""
    progress = progress or SyncProgress()
    planned = plan_sync(project, store, view, full=full, progress=progress)
    if not planned.done:
        _apply_on_spark(project, engine, store, planned, progress)
    return finish_sync(project, store, planned)


class SparkSync(SyncBackend):
    """The online sync with Spark reading the rows and its executors writing Redis (:func:`sync_view_spark`)."""

    def sync_view(
        self,
        store: OnlineStore,
        view: FeatureView,
        *,
        full: bool = False,
        progress: SyncProgress | None = None,
    ) -> SyncResult:
        engine = spark_engine(self.project.engine, "online sync")
        return sync_view_spark(self.project, store, view, engine=engine, full=full, progress=progress)


__all__ = [
    "RedisTarget",
    "SparkSync",
    "bounds_filter",
    "read_files",
    "sync_view_spark",
    "write_partition",
]
