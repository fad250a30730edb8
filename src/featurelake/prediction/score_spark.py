"""Batch prediction on Spark: the feature snapshot read and scored by the cluster (``mapInArrow``, the model
broadcast and verified once per executor worker), written to the run's branch.

How and why: docs/spark.md, "How batch prediction runs on Spark".
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from featurelake import errors
from featurelake.engines.spark_session import map_in_arrow, quote_ident
from featurelake.errors import ConfigError, FeaturelakeError, UsageError
from featurelake.lakehouse import wap
from featurelake.prediction import table as ptable
from featurelake.prediction.backend import ScoringBackend
from featurelake.prediction.flavors import ModelFlavor, ModelInfo, ModelPayload, model_payload
from featurelake.prediction.inputs import BoundInput, InputBinding
from featurelake.prediction.scoring import BatchScorer, Lineage, PredictProgress, ScoreStats

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from featurelake.engines.spark import SparkEngine
    from featurelake.prediction.features import FeatureSelection
    from featurelake.prediction.plan import PredictionPlan
    from featurelake.project import Project
    from featurelake.registry import ModelRegistry

_ROW_NUMBER = "__featurelake_row_number"
_ARROW_BATCH = "spark.sql.execution.arrow.maxRecordsPerBatch"
# An executor-side featurelake error travels to the driver inside Spark's text of the Python traceback:
# one marked line of JSON, so the driver can raise the same class with the same message.
_MARK = "featurelake-executor-error:"
_MARK_RE = re.compile(re.escape(_MARK) + r"(\{.*\})")
_MAX_MODELS = 4  # models one executor worker keeps loaded (a long-lived worker may score several)


# --- executor side ---------------------------------------------------------------------------------------


class _Bytes(Protocol):
    """A Spark broadcast of the artifact's bytes (anything with ``value`` in tests)."""

    @property
    def value(self) -> bytes: ...


class _Adder(Protocol):
    """A Spark accumulator (anything with ``add`` in tests)."""

    def add(self, term: float) -> None: ...


@dataclass(frozen=True)
class ScoreTask:
    """Everything an executor needs to score its partitions; pickled into every task, so it holds no bytes."""

    flavor: str
    sha256: str
    """The digest recorded at registration: the executor checks the broadcast bytes against it."""
    info: ModelInfo
    allow_pickle: bool
    artifact: _Bytes
    inputs: tuple[BoundInput, ...]
    keys: tuple[str, ...]
    timestamp: str
    nan_policy: str
    view: str
    lineage: Lineage
    schema: pa.Schema
    where: str | None
    score_seconds: _Adder | None = None

    @property
    def cache_key(self) -> tuple[str, str, str, str, bool]:
        # The digest names the bytes; name/version/flavor say how they were registered (messages, task).
        return (self.sha256, self.flavor, self.info.name, self.info.version, self.allow_pickle)


_models: OrderedDict[tuple[str, str, str, str, bool], ModelFlavor] = OrderedDict()
_models_lock = threading.Lock()
model_loads = 0
"""How many times this process loaded a model from bytes (the cache's misses; read by tests)."""


def cached_model(task: ScoreTask) -> ModelFlavor:
    """The task's model, loaded at most once per worker process, from bytes that match the recorded digest."""
    global model_loads
    with _models_lock:
        model = _models.get(task.cache_key)
        if model is not None:
            _models.move_to_end(task.cache_key)
            return model
        # ModelPayload.load re-hashes the bytes against ``task.sha256`` before unpickling or parsing them.
        payload = ModelPayload(task.flavor, task.artifact.value, task.sha256, task.info, task.allow_pickle)
        model = payload.load()
        model_loads += 1
        _models[task.cache_key] = model
        while len(_models) > _MAX_MODELS:
            _, old = _models.popitem(last=False)
            old.close()
        return model


def _filtered(batch: pa.RecordBatch, where: str, con: Any) -> list[pa.RecordBatch]:
    """``batch`` restricted to ``--where``, by the same sandboxed DuckDB query as the local path."""
    con.register("batch", pa.Table.from_batches([batch]))
    try:
        out: pa.Table = con.sql(f"SELECT * FROM batch WHERE ({where})").to_arrow_table()
    finally:
        con.unregister("batch")
    return out.to_batches()


def score_partition(task: ScoreTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` function: feature batches in, prediction batches (the table's columns) out."""
    scorer: BatchScorer | None = None
    con = None
    try:
        model = cached_model(task)
        binding = InputBinding(model, task.inputs, task.keys, task.nan_policy, task.view)  # type: ignore[arg-type]
        scorer = BatchScorer(binding, task.lineage, task.schema, task.timestamp)
        if task.where is not None:
            from featurelake.prediction.where import sandbox

            con = sandbox()
        for batch in batches:
            parts = _filtered(batch, task.where, con) if task.where is not None else [batch]
            for part in parts:
                if part.num_rows:
                    yield scorer.score(part)
    except FeaturelakeError as exc:
        detail = json.dumps({"type": type(exc).__name__, "message": str(exc)})
        raise RuntimeError(_MARK + detail) from None
    finally:
        if con is not None:
            con.close()
        if scorer is not None and task.score_seconds is not None:
            task.score_seconds.add(scorer.stats.score_seconds)


# --- driver side -----------------------------------------------------------------------------------------


def from_executor(exc: BaseException) -> FeaturelakeError | None:
    """The featurelake error an executor raised inside ``exc`` (Spark's job failure), or None."""
    text = str(exc)
    found = _MARK_RE.search(text)
    if found is not None:
        try:
            detail = json.loads(found.group(1))
            cls = getattr(errors, str(detail["type"]), None)
            message = str(detail["message"])
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(cls, type) and issubclass(cls, FeaturelakeError)):
            cls = FeaturelakeError
        err = cls(message)
        err.add_note("raised on a Spark executor while scoring")
        return err
    if "No module named 'featurelake" in text:
        return ConfigError(
            "the Spark executors cannot import featurelake: install featurelake (the same version, with the "
            "model flavor's extra, e.g. featurelake[onnx]) in the Python that spark.pyspark.python names on "
            "every worker"
        )
    return None


def select_features(engine: SparkEngine, project: Project, view: str, sel: FeatureSelection) -> DataFrame:
    """The rows to score, before ``--where``: the snapshot, the Iceberg filter, the latest row per entity."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tbl = project.load_table(view)
    df = engine.read(tbl, snapshot_id=sel.snapshot_id, row_filter=sel.iceberg_filter())
    cols = list(dict.fromkeys([*sel.keys, sel.timestamp, *sel.columns]))
    df = df.select(*[F.col(quote_ident(c)) for c in cols])
    if sel.mode == "latest":
        # Keys and timestamps are unique in a published view (the backfill audits it): no ties to break.
        latest = Window.partitionBy(*[F.col(quote_ident(k)) for k in sel.keys]).orderBy(
            F.col(quote_ident(sel.timestamp)).desc()
        )
        df = df.withColumn(_ROW_NUMBER, F.row_number().over(latest))
        df = df.where(F.col(_ROW_NUMBER) == 1).drop(_ROW_NUMBER)
    return df


def output_schema(features: DataFrame, plan: PredictionPlan) -> StructType:
    """The predictions table's columns as Spark types, in the table's order (key columns keep their types)."""
    from pyspark.sql import types as st

    keys, ts = plan.selection.keys, plan.selection.timestamp
    fixed: dict[str, Any] = {
        ts: st.TimestampType(),
        ptable.PREDICTION: st.DoubleType(),
        "model_name": st.StringType(),
        "model_version": st.StringType(),
        "feature_snapshot_id": st.LongType(),
        "run_id": st.StringType(),
        "predicted_at": st.TimestampType(),
    }
    fields = []
    for f in plan.output_schema.fields:
        # proba_<class> columns of a multi-output model are doubles like the prediction
        dtype = features.schema[f.name].dataType if f.name in keys else fixed.get(f.name, st.DoubleType())
        fields.append(st.StructField(f.name, dtype, nullable=not f.required))
    return st.StructType(fields)


def _stats(scored: DataFrame) -> tuple[int, int, float]:
    """(rows, null predictions, sum of the others) of the scored rows, in one Spark job."""
    from pyspark.sql import functions as F

    from featurelake.engines.spark import arrow_batches

    pred = F.col(quote_ident(ptable.PREDICTION))
    agg = scored.agg(F.count(F.lit(1)).alias("n"), F.count(pred).alias("k"), F.sum(pred).alias("s"))
    row = pa.Table.from_batches(arrow_batches(agg)).to_pylist()[0]
    rows, present = int(row["n"] or 0), int(row["k"] or 0)
    return rows, rows - present, float(row["s"] or 0.0)


def score_and_write(
    project: Project,
    registry: ModelRegistry,
    plan: PredictionPlan,
    props: dict[str, str],
    progress: PredictProgress,
) -> ScoreStats:
    """Score ``plan`` on Spark into branch ``audit_<run_id>`` of ``plan.output``; returns the scoring totals.

    Raises what the local path raises (UsageError when nothing matches, DataError for missing inputs,
    ArtifactIntegrityError when the bytes an executor received do not match the recorded digest); on any
    failure the branch is removed and main is unchanged.
    """
    from pyspark import StorageLevel

    from featurelake.engines.spark import SparkEngine
    from featurelake.engines.spark_session import translate_commit_errors

    engine = project.engine
    if not isinstance(engine, SparkEngine):
        raise ConfigError(
            f"batch prediction on Spark needs engine.type: spark (this project has {engine.name})"
        )
    settings = project.config.settings
    sel = plan.selection
    started = time.perf_counter()
    # Read (and re-hashed) once on the driver; executors hash the broadcast copy again before loading it.
    payload = model_payload(registry, plan.model, allow_pickle=settings.registry.allow_pickle)
    spark = engine.spark
    sc = spark.sparkContext
    features = select_features(engine, project, plan.view, sel)
    schema = output_schema(features, plan)
    from pyspark.sql.pandas.types import to_arrow_schema

    artifact = sc.broadcast(payload.data)
    seconds = sc.accumulator(0.0)
    task = ScoreTask(
        flavor=payload.flavor,
        sha256=plan.model.artifact_sha256,
        info=payload.info,
        allow_pickle=payload.allow_pickle,
        artifact=artifact,
        inputs=tuple(plan.binding.inputs),
        keys=sel.keys,
        timestamp=sel.timestamp,
        nan_policy=plan.nan_policy,
        view=plan.view,
        lineage=Lineage(
            plan.model.name, plan.model.version, plan.snapshot_id, plan.run_id, plan.predicted_at
        ),
        schema=to_arrow_schema(schema),
        where=sel.where,
        score_seconds=seconds,
    )
    branch = wap.branch_name(plan.run_id)
    previous_batch = spark.conf.get(_ARROW_BATCH, None)
    spark.conf.set(_ARROW_BATCH, str(settings.prediction.batch_rows))
    scored = map_in_arrow(features, functools.partial(score_partition, task), schema)
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)  # counted, then written: the model runs once
    created = False
    try:
        try:
            rows, nulls, total = _stats(scored)
            if rows == 0:
                raise UsageError(
                    f"nothing to score: no rows of {plan.feature_table} at snapshot {plan.snapshot_id} match "
                    "the request (check --where, --max-age, --start/--end, or backfill the view); nothing was "
                    "written"
                )
            progress.rows(rows)
            # The table (if new) appears with the run's first rows, never for a run refused before them.
            ptable.ensure_table(project, plan.output, plan.output_schema, props)
            ptable.commit_with_retries(
                project, plan.output, f"create {branch}", lambda t: wap.create_branch(t, branch)
            )
            created = True
            writer = scored.writeTo(engine.table_ident(plan.output, branch))
            # Every row has the run's predicted_at (one day partition): no shuffle to cluster them.
            writer = writer.option("distribution-mode", "none")
            for key, value in props.items():
                writer = writer.option(f"snapshot-property.{key}", value)
            with translate_commit_errors(f"write {branch} of {plan.output}", engine._uri_for_messages()):
                writer.append()
        except BaseException as exc:
            if created:
                try:  # the branch holds part of the run at most: remove it, main was never touched
                    ptable.commit_with_retries(
                        project, plan.output, f"remove {branch}", lambda t: wap.remove_branch(t, branch)
                    )
                except Exception as cleanup:  # never mask the run's own error; main is unchanged either way
                    exc.add_note(f"branch {branch} could not be removed ({cleanup}); remove it later")
            translated = from_executor(exc)
            if translated is not None:
                for note in getattr(exc, "__notes__", []):
                    translated.add_note(note)
                raise translated from None
            raise
    finally:
        scored.unpersist()
        if previous_batch is None:
            spark.conf.unset(_ARROW_BATCH)
        else:
            spark.conf.set(_ARROW_BATCH, previous_batch)
        artifact.destroy()
    stats = ScoreStats(rows=rows, batches=0, nulls=nulls, total=total, started=started)
    stats.score_seconds = float(seconds.value)
    return stats


class SparkScoring(ScoringBackend):
    """Batch prediction's score-and-write step on the project's Spark engine (:func:`score_and_write`)."""

    def score_and_write(
        self,
        registry: ModelRegistry,
        plan: PredictionPlan,
        props: dict[str, str],
        progress: PredictProgress,
    ) -> ScoreStats:
        return score_and_write(self.project, registry, plan, props, progress)


__all__ = [
    "ScoreTask",
    "SparkScoring",
    "cached_model",
    "from_executor",
    "output_schema",
    "score_and_write",
    "score_partition",
    "select_features",
]
