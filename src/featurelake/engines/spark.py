"""The scale-out engine: Spark SQL computes and audits, Iceberg's Spark runtime writes, on the same catalog.

Spark talks to the project's catalog through Iceberg's ``JdbcCatalog`` (``catalog.type: sql``: the same
database) or ``RESTCatalog`` (``catalog.type: rest``: the same server), registered under the project's catalog
name (``catalog.name``), so PyIceberg and Spark see the same tables, snapshots, branches and lineage. Files on
S3 (warehouse, sources) go through Hadoop's S3A filesystem, configured from ``storage.s3``. Branch creation, publish and history stay in ``featurelake.lakehouse``
(PyIceberg) for both engines: one publish policy, whichever engine wrote the branch.

One SparkContext serves the whole process (``spark_session.py``); each engine works in its own
``SparkSession.newSession()``, which carries its own catalog configuration, temp views and SQL conf, so
several projects can share one JVM. Frames are Spark DataFrames, cached after ``compute`` because a backfill
reads them up to three times (validate, write, audit; again on each rebase).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.expressions import And, Not
from pyiceberg.table import Table

from featurelake.config import CONFIG_FILE, CatalogConfig, ProjectConfig, SparkConfig
from featurelake.engines import spark_jars
from featurelake.engines.aggregate_sql import compile_aggregations
from featurelake.engines.base import Engine, source_files
from featurelake.engines.conform import ColumnPlan, check_window, lossy_error, null_error, plan_columns
from featurelake.engines.spark_session import (
    first_line,
    jdbc_catalog_conf,
    quote_ident,
    rest_catalog_conf,
    s3a_conf,
    spark_session,
    stop_spark,
    translate_commit_errors,
)
from featurelake.engines.spark_sql import (
    SqlTranslationError,
    iceberg_filter_sql,
    to_spark_expression,
    to_spark_sql,
)
from featurelake.errors import ConfigError, DataError, SchemaError
from featurelake.features.aggregations import reads_history, source_window
from featurelake.features.definitions import FeatureView
from featurelake.features.lint import statement_problem
from featurelake.lakehouse.storage import scheme
from featurelake.lakehouse.wap import ref_snapshot_id
from featurelake.lakehouse.window import Window
from featurelake.lakehouse.write import Span, rewrite_span
from featurelake.validation.audit import evaluate_with
from featurelake.validation.checks import Check, CheckResult

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType

HADOOP_FILE_IO = "org.apache.iceberg.hadoop.HadoopFileIO"
_CACHED_FRAMES = 4  # computed frames kept in Spark's cache per engine (a dropped one is recomputed if used)


# --- the engine ----------------------------------------------------------------------------------------


class SparkEngine(Engine):
    """Spark SQL + Iceberg's Spark runtime, on the project's catalog (``engine.type: spark``)."""

    name = "spark"

    def __init__(
        self,
        catalog: Any,
        project_dir: Any,
        settings: SparkConfig | None = None,
        catalog_settings: CatalogConfig | None = None,
    ) -> None:
        super().__init__(catalog, project_dir)
        if settings is None or catalog_settings is None:
            loaded = (
                ProjectConfig.load(project_dir).settings
                if (Path(project_dir) / CONFIG_FILE).is_file()
                else None
            )
            settings = settings or (loaded.engine.spark if loaded else SparkConfig())
            catalog_settings = catalog_settings or (loaded.catalog if loaded else CatalogConfig())
        self.settings = settings
        self.catalog_name = str(catalog.name)
        warehouse = str(catalog.properties.get("warehouse") or "")
        if catalog_settings.type == "sql":
            self._uri = str(catalog.properties["uri"])
            self._catalog_conf = jdbc_catalog_conf(
                self.catalog_name, self._uri, warehouse, catalog_settings.lock_timeout_seconds
            )
        elif catalog_settings.type == "rest":
            self._uri = str(catalog.properties["uri"])
            # The user's catalog.properties as the catalog was opened with them (secrets resolved).
            passed = {
                k: str(catalog.properties[k]) for k in catalog_settings.properties if k in catalog.properties
            }
            self._catalog_conf = rest_catalog_conf(self.catalog_name, self._uri, warehouse, passed)
        else:
            raise ConfigError(
                f"the Spark engine shares the catalog through Iceberg's JDBC or REST catalog, so it needs "
                f"catalog.type sql or rest (this project has {catalog_settings.type}); use engine.type: local "
                "with this catalog, or put a REST catalog in front of it"
            )
        kind = scheme(warehouse)
        if kind not in ("", "file", "s3"):
            raise ConfigError(
                f"catalog.warehouse {warehouse}: the Spark engine reaches local paths and s3:// (s3a://) only; "
                f"{kind}:// needs its Hadoop filesystem on Spark's classpath, so use engine.type: local"
            )
        # S3A for every engine: sources or outputs may be on S3 even when the warehouse is not.
        self._hadoop_conf = s3a_conf(self.storage)
        if kind == "s3":
            # Iceberg's Hadoop FileIO (S3A underneath) for table files: the runtime has no AWS SDK v2 for S3FileIO.
            self._catalog_conf[f"spark.sql.catalog.{self.catalog_name}.io-impl"] = HADOOP_FILE_IO
            for key, value in self._hadoop_conf.items():
                self._catalog_conf[f"spark.sql.catalog.{self.catalog_name}.hadoop.{key}"] = value
            require_s3_jars(self.settings, f"catalog.warehouse {warehouse}")
        self._session: SparkSession | None = None
        self._cached: OrderedDict[int, DataFrame] = OrderedDict()

    # --- session --------------------------------------------------------------------------------------
    @property
    def spark(self) -> SparkSession:
        """This engine's session: the shared SparkContext with this project's catalog registered."""
        if self._session is None or self._session.sparkContext._jsc is None:
            session = spark_session(self.settings).newSession()
            for key, value in {**self._hadoop_conf, **self._catalog_conf}.items():
                session.conf.set(key, value)
            session.conf.set("spark.sql.defaultCatalog", self.catalog_name)
            # Nulls in required columns are refused by compute() with a message naming the view; Iceberg's
            # own check would refuse every nullable Spark column, nulls or not.
            session.conf.set("spark.sql.iceberg.check-nullability", "false")
            self._session = session
        return self._session

    def table_ident(self, table: Table | str, branch: str | None = None) -> str:
        """Spark's name for an Iceberg table (or one of its branches) in this catalog, quoted."""
        parts = [self.catalog_name, *(table.name() if isinstance(table, Table) else table.split("."))]
        if branch is not None:
            parts.append(f"branch_{branch}")
        return ".".join(quote_ident(p) for p in parts)

    def _uri_for_messages(self) -> str:
        from featurelake.lakehouse.catalog import safe_uri

        return safe_uri(self._uri)

    # --- sources --------------------------------------------------------------------------------------
    def _source(self, view: FeatureView, window: Window | None) -> DataFrame:
        from pyspark.sql import functions as F

        src = view.source
        if src.kind == "parquet":
            if scheme(src.location) == "s3":
                require_s3_jars(self.settings, f"view {view.name!r}: source {src.location}")
            df = self.spark.read.parquet(*source_files(src, self.project_dir, view.name, urls=True))
            if src.timestamp_field not in df.columns:
                raise ConfigError(
                    f"view {view.name!r}: source has no timestamp field {src.timestamp_field!r}; "
                    f"its columns are {', '.join(df.columns)}"
                )
        else:
            try:
                df = self.spark.table(self.table_ident(src.location))
            except Exception as exc:
                raise ConfigError(
                    f"view {view.name!r}: source table {src.location!r} cannot be loaded: {first_line(exc)}"
                ) from exc
            if src.timestamp_field not in df.columns:
                raise ConfigError(
                    f"view {view.name!r}: source table {src.location} has no column {src.timestamp_field!r}"
                )
        if window is None:
            return df.limit(0)
        ts = F.col(src.timestamp_field)
        return df.where((ts >= F.lit(window.start)) & (ts < F.lit(window.end)))

    def _query(self, view: FeatureView, window: Window | None) -> DataFrame:
        """The query (then the aggregations, if declared) over the source rows ``window`` needs: from
        ``window.start`` minus the view's lookback. Rows before ``window.start`` may come back."""
        source = self._source(view, None if window is None else source_window(view, window))
        rows = self._prepare(view, source) if view.query.strip() else source
        if not view.aggregations:
            return rows
        types = duckdb_types(rows.schema)
        columns = {name: types.get(name, "OTHER") for name in rows.columns}
        sql = compile_aggregations(
            view,
            "__featurelake_rows",
            columns,
            dialect="spark",
            start=window.start if window is not None else None,
            end=window.end if window is not None else None,
        )
        rows.createOrReplaceTempView("__featurelake_rows")
        try:
            return self.spark.sql(sql)
        except Exception as exc:
            raise SchemaError(
                f"view {view.name!r}: the aggregations failed in Spark SQL: {first_line(exc)}"
            ) from exc

    def _prepare(self, view: FeatureView, source: DataFrame) -> DataFrame:
        if (problem := statement_problem(view.query)) is not None:
            raise SchemaError(f"view {view.name!r}: the query must be one SELECT over source: {problem}")
        try:
            sql = to_spark_sql(view.query, source_types=duckdb_types(source.schema))
        except SqlTranslationError as exc:
            raise SchemaError(f"view {view.name!r}: {exc}; rewrite that part of the query") from exc
        source.createOrReplaceTempView("source")
        try:
            return self.spark.sql(sql)
        except Exception as exc:
            raise SchemaError(
                f"view {view.name!r}: the query failed in Spark SQL: {first_line(exc)} "
                f"(translated from DuckDB to: {sql})"
            ) from exc

    def source_schema(self, view: FeatureView) -> pa.Schema:
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(self._query(view, None).schema)

    # --- compute: the query, conformed to the table -----------------------------------------------------
    def compute(self, view: FeatureView, window: Window, table: Table) -> DataFrame:
        return self._conform(self._query(view, window), view, table.schema().as_arrow(), window)

    def _conform(self, out: DataFrame, view: FeatureView, target: pa.Schema, window: Window) -> DataFrame:
        """``conform.conform``'s rules and messages, evaluated in one Spark job."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_type

        produced = [pa.field(f.name, to_arrow_type(f.dataType)) for f in out.schema.fields]
        plans = plan_columns(view, produced, target)
        if reads_history(view):  # the lookback's rows: read, never written
            ts_col = F.col(quote_ident(view.timestamp_field))
            out = out.where(ts_col.isNull() | (ts_col >= F.lit(window.start)))
        columns: list[Column] = []
        flags: list[Column] = []  # per-row "this cast changed the value", computed beside the cast
        probes: list[Column] = []
        probed: list[tuple[str, ColumnPlan]] = []  # (kind, column)
        for plan in plans:
            col = F.col(quote_ident(plan.name))
            if plan.cast:
                cast = col.cast(_spark_type(plan.field.type))
                if plan.lossy:
                    # Arrow's safe cast refuses lossy values; Spark's cast would wrap or null them silently.
                    flag = f"__lossy_{len(flags)}"
                    flags.append((col.isNotNull() & (cast.isNull() | (cast != col))).cast("int").alias(flag))
                    probes.append(F.sum(F.col(flag)))
                    probed.append(("lossy", plan))
                col = cast
            if not plan.field.nullable:
                probes.append(F.count(F.lit(1)) - F.count(F.col(quote_ident(plan.name))))
                probed.append(("nulls", plan))
            columns.append(col.alias(plan.name))
        # One cached relation serves the checks below, the write and the audit (and every rebase).
        staged = self._cache(out.select(*columns, *flags))
        ts = view.timestamp_field
        probes += [F.min(F.col(quote_ident(ts))), F.max(F.col(quote_ident(ts)))]
        try:
            values = _collect_row(staged.agg(*[p.alias(f"p{i}") for i, p in enumerate(probes)]))
        except Exception as exc:
            raise DataError(
                f"view {view.name!r}: the query failed on Spark while computing: {first_line(exc)}"
            ) from exc
        frame = staged.select(*[F.col(quote_ident(f.name)) for f in target]) if flags else staged
        for (kind, plan), value in zip(probed, values, strict=False):
            if kind == "lossy" and value:
                raise lossy_error(view, plan, f"{value} rows would change")
        for (kind, plan), value in zip(probed, values, strict=False):
            if kind == "nulls" and value:
                raise null_error(view, plan.name, value)
        check_window(view, values[-2], values[-1], window)
        return frame

    def _cache(self, frame: DataFrame) -> DataFrame:
        from pyspark import StorageLevel

        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        self._cached[id(frame)] = frame
        while len(self._cached) > _CACHED_FRAMES:
            _, old = self._cached.popitem(last=False)
            old.unpersist()
        return frame

    # --- tables ---------------------------------------------------------------------------------------
    def write_window(
        self,
        table: Table,
        frame: DataFrame,
        window: Window,
        timestamp_field: str,
        branch: str,
        properties: dict[str, str],
    ) -> int:
        from pyspark.sql import functions as F

        # The span no live file straddles (the window itself on day partitions): a filter overwrite of it
        # deletes whole files only (Iceberg refuses a filter that splits a file), so the span's rows outside
        # the window are written back beside the new ones. Same span as the local engine's.
        span = rewrite_span(table, branch, window, timestamp_field)
        if span != Span.of(window):
            keep = And(span.iceberg_filter(timestamp_field), Not(window.iceberg_filter(timestamp_field)))
            kept = self.read(table, snapshot_id=ref_snapshot_id(table, branch), row_filter=keep)
            # As many tasks as the new rows had: on an unpartitioned table each task writes a file, and the
            # kept rows' files must not add tasks (partitioned tables are clustered by Iceberg's write anyway).
            tasks = frame.rdd.getNumPartitions()
            frame = frame.unionByName(kept.select(*frame.columns)).coalesce(tasks)
        ts = F.col(quote_ident(timestamp_field))
        bounds = [ts >= F.lit(span.start)] if span.start is not None else []
        bounds += [ts < F.lit(span.end)] if span.end is not None else []
        condition = functools.reduce(operator.and_, bounds) if bounds else F.lit(True)
        writer = frame.writeTo(self.table_ident(table, branch))
        for key, value in properties.items():
            writer = writer.option(f"snapshot-property.{key}", value)
        with translate_commit_errors(f"write branch {branch}", self._uri_for_messages()):
            # Deletes the span's files (metadata only) and adds the new files, in one snapshot on the branch.
            writer.overwrite(condition)
        table.refresh()
        tip = ref_snapshot_id(table, branch)
        assert tip is not None
        return tip

    def read(self, table: Table, *, snapshot_id: int | None = None, row_filter: Any = None) -> DataFrame:
        ident = self.table_ident(table)
        sql = f"SELECT * FROM {ident}"
        if snapshot_id is not None:
            sql += f" VERSION AS OF {int(snapshot_id)}"
        if row_filter is not None:
            sql += f" WHERE {iceberg_filter_sql(row_filter, table.schema())}"
        return self.spark.sql(sql)

    def audit(self, frame: DataFrame, checks: list[Check]) -> tuple[int, list[CheckResult]]:
        """All checks' aggregates in one Spark job over the (cached) frame, exact counts in a second only
        when a check asks for them, samples drawn by Spark: the same evaluator as the local engine."""
        from pyspark.sql import functions as F

        types = duckdb_types(frame.schema)

        def owner(expr: str) -> str:
            found = [c for c in checks if expr in c.aggregates()]
            return f"check {found[0]!r}" if found else "a check"

        def translate(expr: str) -> str:
            try:
                return to_spark_expression(expr, frame_types=types)
            except SqlTranslationError as exc:
                raise SchemaError(f"{owner(expr)} cannot run on Spark: {exc}") from exc

        def query(exprs: list[str]) -> list[Any]:
            spark_exprs = [translate(e) for e in exprs]
            try:
                result = frame.selectExpr(*[f"{e} AS a{i}" for i, e in enumerate(spark_exprs)])
            except Exception as exc:
                for duck, expr in zip(exprs, spark_exprs, strict=True):
                    try:
                        frame.selectExpr(expr)
                    except Exception as inner:
                        raise SchemaError(
                            f"{owner(duck)}: aggregate {duck!r} fails on Spark as {expr!r}: {first_line(inner)}"
                        ) from exc
                raise SchemaError(f"the audit aggregates fail on Spark: {first_line(exc)}") from exc
            values = _collect_row(result)
            if exprs and exprs[0].strip().lower() == "count(*)":
                counted.append(int(values[0] or 0))
            return values

        counted: list[int] = []

        def sample(columns: list[str], n: int, seed: int) -> pa.Table:
            cols = frame.select(*[F.col(f"`{c}`") for c in columns])
            rows = counted[0] if counted else None
            if rows is not None and rows <= n:
                return self.to_arrow(cols)  # the whole frame is the sample, as on the local engine
            if rows:
                # Bernoulli-thin to about 1.25 n rows in one pass, then pick n of those at random:
                # the sort only ever sees a sample-sized set, however large the frame.
                cols = cols.sample(fraction=min(1.0, 1.25 * n / rows), seed=seed)
            return self.to_arrow(cols.orderBy(F.rand(seed)).limit(n))

        return evaluate_with(query, sample, checks)

    def to_arrow(self, frame: DataFrame) -> pa.Table:
        from pyspark.sql.pandas.types import to_arrow_schema

        batches = arrow_batches(frame)
        if not batches:
            return to_arrow_schema(frame.schema).empty_table()
        return pa.Table.from_batches(batches)

    def close(self) -> None:
        while self._cached:
            _, frame = self._cached.popitem()
            with contextlib.suppress(Exception):
                frame.unpersist()
        if self._session is not None:
            for name in ("source", "__featurelake_rows"):
                with contextlib.suppress(Exception):
                    self._session.catalog.dropTempView(name)
        self._session = None


def require_s3_jars(settings: SparkConfig, what: str) -> None:
    """ConfigError unless Hadoop's S3A filesystem can be on Spark's classpath (installed, or named by the user)."""
    named = settings.conf.get("spark.jars", "") + "," + settings.conf.get("spark.jars.packages", "")
    if "hadoop-aws" in named or spark_jars.s3_jars() is not None:
        return
    raise ConfigError(
        f"{what} is on S3, and Spark reaches S3 through Hadoop's S3A filesystem, which is not installed: "
        f"{spark_jars.SETUP_HINT} (it unpacks hadoop-aws and the AWS SDK bundle from {spark_jars.S3_SDIST}), "
        "or where Maven is reachable set engine.spark.conf spark.jars.packages: "
        "org.apache.hadoop:hadoop-aws:3.3.4"
    )


def arrow_batches(df: DataFrame) -> list[pa.RecordBatch]:
    """Collect ``df`` to the driver as Arrow record batches, in order.

    What pyspark's ``_collect_as_arrow`` does, but closing its socket: pyspark leaves that to the garbage
    collector, which raises ResourceWarning (an error under ``-W error``) in long-lived processes and tests.
    """
    from pyspark.errors.exceptions.captured import unwrap_spark_exception
    from pyspark.java_gateway import local_connect_and_auth
    from pyspark.sql.pandas.serializers import ArrowCollectSerializer
    from pyspark.traceback_utils import SCCallSiteSync

    with SCCallSiteSync(df.sparkSession.sparkContext):
        port, secret, server = df._jdf.collectAsArrowToPython()
    try:
        sockfile, sock = local_connect_and_auth(port, secret)
        try:
            sock.settimeout(None)  # materialising can take any time (SPARK-18281)
            results = list(ArrowCollectSerializer().load_stream(sockfile))
        finally:
            sockfile.close()
            sock.close()
    finally:
        with unwrap_spark_exception():
            server.getResult()
    batches, order = results[:-1], results[-1]
    return [batches[i] for i in order]


def _collect_row(df: DataFrame) -> list[Any]:
    """The single row of an aggregate, through Arrow so timestamps come back timezone-aware (UTC)."""
    table = pa.Table.from_batches(arrow_batches(df))
    if table.num_rows != 1:  # pragma: no cover - global aggregates always give one row
        raise AssertionError(f"expected one aggregate row, got {table.num_rows}")
    return [table.column(i)[0].as_py() for i in range(table.num_columns)]


def duckdb_types(schema: Any) -> dict[str, str]:
    """DuckDB type names of a Spark schema's columns, for type-aware SQL translation (others left out)."""
    from pyspark.sql import types as st

    names: list[tuple[type, str]] = [
        (st.LongType, "BIGINT"),
        (st.IntegerType, "INTEGER"),
        (st.ShortType, "SMALLINT"),
        (st.ByteType, "TINYINT"),
        (st.DoubleType, "DOUBLE"),
        (st.FloatType, "FLOAT"),
        (st.StringType, "VARCHAR"),
        (st.BooleanType, "BOOLEAN"),
        (st.DateType, "DATE"),
        (st.TimestampNTZType, "TIMESTAMP"),
        (st.TimestampType, "TIMESTAMPTZ"),
        (st.BinaryType, "BLOB"),
    ]
    out: dict[str, str] = {}
    for field in schema.fields:
        dt = field.dataType
        if isinstance(dt, st.DecimalType):
            out[field.name] = f"DECIMAL({dt.precision}, {dt.scale})"
            continue
        for cls, name in names:
            if type(dt) is cls:
                out[field.name] = name
    return out


def _spark_type(t: pa.DataType) -> DataType:
    from pyspark.sql import types as st

    if pa.types.is_boolean(t):
        return st.BooleanType()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_int32(t):
        return st.IntegerType()
    if pa.types.is_integer(t):
        return st.LongType()
    if pa.types.is_float32(t):
        return st.FloatType()
    if pa.types.is_floating(t):
        return st.DoubleType()
    if pa.types.is_decimal(t):
        return st.DecimalType(t.precision, t.scale)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return st.StringType()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return st.BinaryType()
    if pa.types.is_date(t):
        return st.DateType()
    if pa.types.is_timestamp(t):
        return st.TimestampType() if t.tz is not None else st.TimestampNTZType()
    raise SchemaError(f"feature type {t} has no Spark equivalent")


__all__ = ["SparkEngine", "arrow_batches", "duckdb_types", "jdbc_catalog_conf", "spark_session", "stop_spark"]
