"""The predictions table and its Write-Audit-Publish cycle (the same branches and publish as backfills).

``predictions.<model>`` (or ``--output``) holds one row per scored feature row::

    <join key(s)>, <event_ts>, prediction, [proba_<class>...,] model_name, model_version, feature_snapshot_id,
    run_id, predicted_at

partitioned by ``day(predicted_at)``; runs append. A model registered with ``--output label,proba`` writes its
predicted class to ``prediction`` and one ``proba_<class>`` column per class (``flavors.base.proba_column``). A view with a composite key gives one column per key column,
in key order, each required. A run writes only to branch ``audit_<run_id>`` (in chunks,
as scoring streams), is audited there (row count equal to the rows scored, one row per key and timestamp,
prediction null rate, and for classifiers every prediction inside its range), and is then published with
``lakehouse.wap.publish``: main moves to the branch tip only if main is still its parent, otherwise the
run's rows are re-appended on main's new head and audited again. A run that fails before publishing has its
branch removed (input errors) or kept for inspection (a failed audit); main never holds part of a run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import EqualTo
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, IcebergType, LongType, NestedField, StringType, TimestamptzType

from featurelake.errors import AuditFailed, ConflictError, SchemaError, UsageError
from featurelake.features.definitions import validate_identifier
from featurelake.features.keys import as_keys
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.retry import retry_commit
from featurelake.lakehouse.schema import type_name
from featurelake.prediction.where import sandbox
from featurelake.training.scan import stream_scan
from featurelake.validation.audit import AuditReport, evaluate_with
from featurelake.validation.checks import Between, Check, NullRate, RowCount, Unique
from featurelake.validation.report_html import save_report

if TYPE_CHECKING:
    from featurelake.project import Project

T = TypeVar("T")

NAMESPACE = "predictions"
PREDICTION = "prediction"
#: Columns of class probabilities (``proba_<class>``) of a multi-output model start with this.
PROBA_PREFIX = "proba_"
LINEAGE_COLUMNS = ("model_name", "model_version", "feature_snapshot_id", "run_id", "predicted_at")

# Snapshot summary properties of a prediction run (besides code-version, run-id and pipeline-user).
MODEL_NAME = "featurelake.model-name"
MODEL_VERSION = "featurelake.model-version"
FEATURE_SNAPSHOT = "featurelake.feature-snapshot-id"
FEATURE_TABLE = "featurelake.feature-table"
PREDICTED_AT = "featurelake.predicted-at"


def table_identifier(model: str, output: str | None) -> str:
    """``predictions.<model>``, or ``--output`` (``name`` goes to the predictions namespace, ``ns.name`` as is)."""
    if not output:
        return f"{NAMESPACE}.{model}"
    parts = output.split(".")
    if len(parts) == 1:
        parts = [NAMESPACE, parts[0]]
    if len(parts) != 2:
        raise UsageError(f"--output {output!r}: give a table name, or namespace.table")
    for p in parts:
        try:
            validate_identifier(p, "--output table")
        except Exception as exc:
            raise UsageError(str(exc)) from None
    return ".".join(parts)


def predictions_schema(
    key: str | Sequence[str],
    key_type: IcebergType | Sequence[IcebergType],
    timestamp: str,
    proba_columns: Sequence[str] = (),
) -> Schema:
    """The predictions table of a view keyed by ``key`` (a column, or the columns of a composite key, with
    their types in ``key_type`` in the same order); ``proba_columns`` follow ``prediction`` (multi-output)."""
    keys = as_keys(key)
    types = [key_type] if isinstance(key_type, IcebergType) else list(key_type)
    clash = {*keys, timestamp} & {PREDICTION, *LINEAGE_COLUMNS}
    if clash:
        raise SchemaError(
            f"the view's key/timestamp column {', '.join(sorted(clash))} clashes with a predictions column; "
            "rename it in the view"
        )
    cols = [NestedField(i, k, t, required=True) for i, (k, t) in enumerate(zip(keys, types, strict=True), 1)]
    clash = {*keys, timestamp} & set(proba_columns)
    if clash:
        raise SchemaError(
            f"the view's key/timestamp column {', '.join(sorted(clash))} clashes with a class probability column; "
            "rename it in the view"
        )
    probas = [
        NestedField(len(cols) + 3 + j, c, DoubleType(), required=False) for j, c in enumerate(proba_columns)
    ]
    n = len(cols) + len(probas)
    return Schema(
        *cols,
        NestedField(len(cols) + 1, timestamp, TimestamptzType(), required=True),
        NestedField(len(cols) + 2, PREDICTION, DoubleType(), required=False),
        *probas,
        NestedField(n + 3, "model_name", StringType(), required=True),
        NestedField(n + 4, "model_version", StringType(), required=True),
        NestedField(n + 5, "feature_snapshot_id", LongType(), required=True),
        NestedField(n + 6, "run_id", StringType(), required=True),
        NestedField(n + 7, "predicted_at", TimestamptzType(), required=True),
    )


def check_existing(tbl: Table, ident: str, wanted: Schema) -> None:
    """Refuse writing to an existing table whose columns do not fit (another view's key, other types)."""
    have = {f.name: f.field_type for f in tbl.schema().fields}
    wrong = [
        f"{f.name} ({type_name(f.field_type)}; table has {type_name(have[f.name]) if f.name in have else 'no such column'})"
        for f in wanted.fields
        if have.get(f.name) != f.field_type
    ]
    if wrong:
        raise SchemaError(
            f"predictions table {ident} does not fit this run: it needs {', '.join(wrong)}. It was written for "
            "another view or entity: pass --output to write these predictions to another table"
        )


def ensure_table(project: Project, ident: str, schema: Schema, props: dict[str, str]) -> Table:
    """Load ``ident`` (checking its columns fit) or create it with an empty first snapshot on main."""
    catalog = project.catalog
    namespace, _ = ident.split(".")

    def load_or_create() -> Table:
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(namespace)
        try:
            tbl = catalog.load_table(ident)
        except NoSuchTableError:
            ts = schema.find_field("predicted_at").field_id
            spec = PartitionSpec(PartitionField(ts, 1000, DayTransform(), "predicted_at_day"))
            try:
                tbl = catalog.create_table(
                    ident,
                    schema=schema,
                    partition_spec=spec,
                    properties={"format-version": "2", "featurelake.kind": "predictions"},
                )
            except Exception as exc:  # a concurrent run created it first
                if "already exists" not in str(exc).lower():
                    raise
                return catalog.load_table(ident)
            # Branches fork from a snapshot: give main an empty first one, with lineage.
            tbl.append(
                tbl.schema().as_arrow().empty_table(),
                snapshot_properties={**props, lineage.OPERATION: "create"},
            )
        return tbl

    tbl = project.catalog_call(load_or_create, f"create {ident}")
    check_existing(tbl, ident, schema)
    if wap.main_snapshot_id(tbl) is None:  # created by a run that died before its first snapshot
        project.catalog_call(
            lambda: tbl.append(
                tbl.schema().as_arrow().empty_table(),
                snapshot_properties={**props, lineage.OPERATION: "create"},
            ),
            f"initialise {ident}",
        )
        tbl = project.catalog_call(lambda: catalog.load_table(ident), f"load {ident}")
    return tbl


def commit_with_retries(project: Project, ident: str, what: str, fn: Callable[[Table], T]) -> T:
    """A commit against a freshly loaded table, retried when a concurrent commit won the race."""
    return retry_commit(
        lambda: project.catalog_call(lambda: project.catalog.load_table(ident), f"load {ident}"),
        fn,
        table=ident,
        what=what,
        attempts=project.config.settings.catalog.retries + 1,
        call=project.catalog_call,
    )


class BranchWriter:
    """Appends scored batches to ``audit_<run_id>`` in chunks of about ``chunk_rows`` rows."""

    def __init__(
        self,
        project: Project,
        ident: str,
        run_id: str,
        props: dict[str, str],
        chunk_rows: int,
        schema: Schema,
    ) -> None:
        self.project, self.ident, self.run_id, self.props = project, ident, run_id, props
        self.branch = wap.branch_name(run_id)
        self.chunk_rows = chunk_rows
        self.table_schema = schema
        try:  # an existing table's own Arrow schema (field ids); a new table gets ``schema``
            existing = project.catalog.load_table(ident).schema()
        except NoSuchTableError:
            existing = schema
        self.schema: pa.Schema = existing.as_arrow()
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self.rows = 0
        self.created = False
        self.commits = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._buffer.append(batch)
            self._buffered += batch.num_rows
        if self._buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        if not self.created:
            # The table (if new) appears with the run's first rows, never for a run refused before them.
            ensure_table(self.project, self.ident, self.table_schema, self.props)
            commit_with_retries(
                self.project, self.ident, f"create {self.branch}", lambda t: wap.create_branch(t, self.branch)
            )
            self.created = True
        data = pa.Table.from_batches(self._buffer, schema=self.schema)
        commit_with_retries(
            self.project,
            self.ident,
            f"write {self.branch}",
            lambda t: t.append(data, snapshot_properties=self.props, branch=self.branch),
        )
        self.rows += data.num_rows
        self.commits += 1
        self._buffer, self._buffered = [], 0

    def discard(self) -> None:
        """Remove the branch (after an input error): nothing of the run stays visible anywhere."""
        self._buffer, self._buffered = [], 0
        if self.created:
            commit_with_retries(
                self.project, self.ident, f"remove {self.branch}", lambda t: wap.remove_branch(t, self.branch)
            )


def _run_rows(tbl: Table, snapshot_id: int, run_id: str, columns: tuple[str, ...]) -> pa.RecordBatchReader:
    scan = tbl.scan(
        row_filter=EqualTo("run_id", run_id),  # type: ignore[call-arg, arg-type]
        selected_fields=columns,
        snapshot_id=snapshot_id,
    )
    return stream_scan(scan)  # one data file in memory at a time


def audit_checks(
    expected_rows: int,
    key: str | Sequence[str],
    timestamp: str,
    output_range: tuple[float, float] | None,
    max_null_rate: float,
    proba_columns: Sequence[str] = (),
) -> list[Check]:
    checks: list[Check] = [
        RowCount(min=expected_rows, max=expected_rows),
        Unique([*as_keys(key), timestamp]),
        NullRate(PREDICTION, max=max_null_rate),
    ]
    if output_range is not None:
        checks.append(Between(PREDICTION, output_range[0], output_range[1]))
    checks += [Between(c, 0.0, 1.0) for c in proba_columns]  # every class probability is one
    return checks


def audit_branch(
    project: Project,
    ident: str,
    run_id: str,
    checks: list[Check],
    key: str | Sequence[str],
    timestamp: str,
) -> AuditReport:
    """Evaluate ``checks`` over the run's rows on its branch; save the report beside the backfill reports."""
    t0 = time.perf_counter()
    tbl = project.catalog_call(lambda: project.catalog.load_table(ident), f"load {ident}")
    branch = wap.branch_name(run_id)
    tip = wap.ref_snapshot_id(tbl, branch)
    if tip is None:
        raise UsageError(f"no branch {branch} in {ident}: nothing to audit")
    con = sandbox()
    try:
        probas = tuple(c for c in tbl.schema().column_names if c.startswith(PROBA_PREFIX))
        con.register("run_rows", _run_rows(tbl, tip, run_id, (*as_keys(key), timestamp, PREDICTION, *probas)))
        # The reader streams once; the audit may query twice (exact counts on failure): keep a narrow copy.
        con.execute("CREATE TEMP TABLE frame AS SELECT * FROM run_rows")

        def query(exprs: list[str]) -> list[Any]:
            row = con.execute(f"SELECT {', '.join(exprs)} FROM frame").fetchone()
            assert row is not None
            return list(row)

        rows, results = evaluate_with(query, None, checks)
    finally:
        con.close()
    report = AuditReport(
        view=ident, run_id=run_id, branch=branch, snapshot_id=tip, rows=rows, results=results
    )
    report.seconds = time.perf_counter() - t0
    path = save_report(report, project.audit_dir / ident, html=False)
    report.report_path = str(path.relative_to(project.root))
    return report


def refuse(report: AuditReport) -> AuditFailed:
    return AuditFailed(
        f"{report.summary()}; main is unchanged; inspect branch {report.branch} "
        f"(its rows are those with run_id = '{report.run_id}')",
        report,
    )


def publish(
    project: Project,
    ident: str,
    run_id: str,
    props: dict[str, str],
    chunk_rows: int,
    reaudit: Callable[[], AuditReport],
) -> tuple[wap.PublishResult, AuditReport | None]:
    """Fast-forward main to the run's branch; when main moved, re-append the run's rows onto it and re-audit.

    Returns the publish result and the latest audit report when a rebase re-audited (else None).
    """
    branch = wap.branch_name(run_id)
    latest: list[AuditReport] = []

    def rebase(tbl: Table, new_base: int) -> None:
        old_tip = wap.ref_snapshot_id(tbl, branch)
        assert old_tip is not None
        schema = tbl.schema().as_arrow()
        project.catalog_call(lambda: wap.reset_branch(tbl, branch, new_base), f"rebase {branch}")
        # The old tip stays readable (moving a ref deletes nothing): stream the run's rows from it.
        for chunk in _chunks(_run_rows(tbl, old_tip, run_id, tuple(schema.names)), chunk_rows):
            data = pa.Table.from_batches(chunk, schema=schema)
            commit_with_retries(
                project,
                ident,
                f"write {branch}",
                lambda t, d=data: t.append(d, snapshot_properties=props, branch=branch),  # type: ignore[misc]
            )
        report = reaudit()
        latest.append(report)
        if not report.passed:
            raise refuse(report)

    attempts = project.config.settings.backfill.publish_attempts
    try:
        result = project.catalog_call(
            lambda: wap.publish(project.catalog, ident, branch, run_id, rebase=rebase, attempts=attempts),
            f"publish {branch}",
        )
    except ConflictError:
        # A prediction run is cheap to redo and has no `featurelake publish`: leave nothing behind.
        with contextlib.suppress(Exception):
            commit_with_retries(project, ident, f"remove {branch}", lambda t: wap.remove_branch(t, branch))
        raise ConflictError(
            f"could not publish {ident} run {run_id}: main kept moving during {attempts} attempts (other runs "
            "publishing to the same table); nothing of this run was published and its branch was removed: run "
            "`featurelake predict` again"
        ) from None
    if not project.config.settings.backfill.keep_published_branches:
        try:
            commit_with_retries(project, ident, f"remove {branch}", lambda t: wap.remove_branch(t, branch))
        except ConflictError:
            result.notes.append(f"published, but branch {branch} could not be removed; remove it later")
    return result, (latest[-1] if latest else None)


def _chunks(reader: pa.RecordBatchReader, rows: int) -> Iterator[list[pa.RecordBatch]]:
    buf: list[pa.RecordBatch] = []
    n = 0
    for batch in reader:
        buf.append(batch)
        n += batch.num_rows
        if n >= rows:
            yield buf
            buf, n = [], 0
    if buf:
        yield buf


__all__ = [
    "LINEAGE_COLUMNS",
    "NAMESPACE",
    "PREDICTION",
    "PROBA_PREFIX",
    "BranchWriter",
    "audit_branch",
    "audit_checks",
    "check_existing",
    "ensure_table",
    "predictions_schema",
    "publish",
    "refuse",
    "table_identifier",
]
