"""Table maintenance on Spark: Iceberg's own Spark implementations under featurelake's policies and report.

How and why (verification of compaction, exactly-planned expiry, orphan listing): docs/spark.md,
"How maintenance runs on Spark".
"""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.table import Table
from pyiceberg.types import DateType, IntegerType, LongType, TimestamptzType

from featurelake import maintenance
from featurelake.engines import spark_engine
from featurelake.engines.spark_files import read_files
from featurelake.engines.spark_session import first_line, quote_ident, translate_commit_errors
from featurelake.errors import ConflictError, DataError, FeaturelakeError
from featurelake.lakehouse.lineage import OPERATION, RUN_ID
from featurelake.lakehouse.wap import main_snapshot_id
from featurelake.maintenance.backend import Load, MaintenanceBackend
from featurelake.maintenance.compaction import COMPACTION, landed_snapshot
from featurelake.maintenance.expiry import RetentionPolicy, check_policy, plan_retention
from featurelake.maintenance.files import StoredFile, file_key, is_table_file, list_files
from featurelake.maintenance.orphans import check_min_age
from featurelake.maintenance.report import CompactionResult, ExpiryResult, FileGroup, OrphanResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from featurelake.engines.spark import SparkEngine

Progress = Callable[[str], None]
Call = Callable[[Callable[[], Any], str], Any]
#: Before this, no snapshot exists: as ``older_than`` it disables Iceberg's own age rule.
_EPOCH = "1970-01-01 00:00:00"


def _quiet(_msg: str) -> None:
    pass


def _procedure(engine: SparkEngine, name: str, tbl: Table, args: str) -> DataFrame:
    """``CALL <catalog>.system.<name>(table => ..., args)``; the CALL runs when issued."""
    table = engine.table_ident(tbl).replace("\\", "\\\\").replace("'", "\\'")
    catalog = quote_ident(engine.catalog_name)
    return engine.spark.sql(f"CALL {catalog}.system.{name}(table => '{table}', {args})")


def _collect(frame: DataFrame) -> list[dict[str, Any]]:
    from featurelake.engines.spark import arrow_batches

    return [row for b in arrow_batches(frame) for row in b.to_pylist()]


def _ts(value: datetime) -> str:
    return "TIMESTAMP '" + value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "'"


def _uri(engine: SparkEngine) -> str:
    return engine._uri_for_messages()


def _cause(exc: BaseException) -> str:
    java = getattr(exc, "java_exception", None)  # a raw Py4JJavaError says only which call failed
    return first_line(Exception(str(java.toString()))) if java is not None else first_line(exc)


@contextlib.contextmanager
def _on_spark(engine: SparkEngine, what: str, *, retried: bool = True) -> Iterator[None]:
    """Iceberg failing on Spark: lost races as ``CommitFailedException`` when the caller plans again
    (``retried``), a locked or unreachable catalog as ``CatalogUnavailableError``, else a ``FeaturelakeError``."""
    try:
        with translate_commit_errors(what, _uri(engine)):
            yield
    except FeaturelakeError:
        raise
    except Exception as exc:
        lost_race = isinstance(exc, CommitFailedException) or "Still referenced by refs" in str(exc)
        if lost_race and retried:  # a commit or a new ref landed meanwhile
            raise CommitFailedException(f"{what}: {_cause(exc)}") from exc
        raise FeaturelakeError(
            f"{what} failed on Spark: {_cause(exc)}; Iceberg commits all or nothing, so run `featurelake "
            "maintain` again once the cause is fixed"
        ) from exc


# --- compaction ----------------------------------------------------------------------------------------


def _data_files(tbl: Table, snapshot_id: int | None) -> dict[str, DataFile]:
    """Live data files (no delete files) of one snapshot, by path."""
    snap = tbl.metadata.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    if snap is None:
        return {}
    out: dict[str, DataFile] = {}
    for manifest in snap.manifests(tbl.io):
        for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
            if entry.data_file.content == DataFileContent.DATA:
                out[entry.data_file.file_path] = entry.data_file
    return out


def _prune_column(tbl: Table) -> str | None:
    """The source column of the first partition field, when its bounds can narrow a scan."""
    for pf in tbl.spec().fields:
        field = tbl.schema().find_field(pf.source_id)
        if isinstance(field.field_type, TimestamptzType | DateType | IntegerType | LongType):
            return field.name
    return None


def checksum(engine: SparkEngine, tbl: Table, snapshot_id: int, files: list[DataFile]) -> tuple[int, int]:
    """Row count and an order-independent checksum of the rows of ``files`` at ``snapshot_id`` (on Spark)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType

    columns = tbl.schema().column_names
    rows = read_files(engine, tbl, snapshot_id, [(f, 0) for f in files], columns, prune_on=_prune_column(tbl))
    parts = []
    for field in rows.select(*[F.col(f"`{c}`") for c in columns]).schema.fields:
        col = F.col(f"`{field.name}`")
        # Spark's hash skips nulls, so (1, null) and (null, 1) would collide without the null flags.
        parts += [F.to_json(col) if isinstance(field.dataType, MapType) else col, col.isNull()]
    agg = rows.select(F.count(F.lit(1)), F.sum(F.xxhash64(*parts).cast("decimal(38,0)")))
    (row,) = _collect(agg)
    count, total = row.values()
    return int(count), int(total or 0)


def _label(tbl: Table, f: DataFile) -> str:
    spec = tbl.metadata.specs().get(f.spec_id, tbl.spec())
    return spec.partition_to_path(f.partition, tbl.schema()) if spec.fields else "(unpartitioned)"


def _groups(tbl: Table, inputs: list[DataFile], outputs: list[DataFile]) -> list[FileGroup]:
    by_partition: dict[str, tuple[list[DataFile], list[DataFile]]] = defaultdict(lambda: ([], []))
    for f in inputs:
        by_partition[_label(tbl, f)][0].append(f)
    for f in outputs:
        by_partition[_label(tbl, f)][1].append(f)
    return [
        FileGroup(
            partition=label,
            inputs=sorted(f.file_path for f in ins),
            input_bytes=sum(f.file_size_in_bytes for f in ins),
            rows=sum(f.record_count for f in ins),
            outputs=sorted(f.file_path for f in outs),
            output_bytes=sum(f.file_size_in_bytes for f in outs),
        )
        for label, (ins, outs) in sorted(by_partition.items())
    ]


@contextlib.contextmanager
def _active(engine: SparkEngine) -> Iterator[Any]:
    """The engine's Java session, made the active one of this thread while Java code runs: Spark resolves
    catalogs against the active session's settings, and the project's catalog is set on this session only."""
    spark = engine.spark
    sessions: Any = spark._jvm.org.apache.spark.sql.SparkSession  # type: ignore[union-attr]
    previous = sessions.getActiveSession()
    sessions.setActiveSession(spark._jsparkSession)
    try:
        yield spark._jsparkSession
    finally:
        if previous.isDefined():
            sessions.setActiveSession(previous.get())
        else:
            sessions.clearActiveSession()


def _rewrite(engine: SparkEngine, tbl: Table, options: dict[str, str], properties: dict[str, str]) -> None:
    jvm: Any = engine.spark._jvm
    with _active(engine) as jsession:
        jtable = jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(jsession, engine.table_ident(tbl))
        action = jvm.org.apache.iceberg.spark.actions.SparkActions.get(jsession).rewriteDataFiles(jtable)
        for key, value in options.items():
            action = action.option(key, value)
        for key, value in properties.items():
            action = action.snapshotProperty(key, value)
        action.execute()


def _roll_back(load: Callable[[], Table], call: Call, landed: int, parent: int) -> str:
    tbl = load()
    current = main_snapshot_id(tbl)
    if current != landed:
        return (
            f"main has moved on to snapshot {current}, so it was not rolled back: inspect the compaction "
            f"snapshot {landed} and roll back with `CALL system.rollback_to_snapshot` if needed"
        )
    try:
        call(
            lambda: tbl.manage_snapshots().set_current_snapshot(snapshot_id=parent).commit(), "roll back main"
        )
    except Exception as exc:
        return f"rolling main back to {parent} failed ({first_line(exc)}): roll it back by hand"
    return f"main was rolled back to snapshot {parent}"


def rewrite_data_files(
    engine: SparkEngine,
    load: Callable[[], Table],
    *,
    target_file_size: int,
    properties: dict[str, str],
    min_input_files: int = 2,
    dry_run: bool = False,
    attempts: int = 5,
    call: Call | None = None,
    progress: Progress | None = None,
) -> CompactionResult:
    """Compact main with Iceberg's ``rewrite_data_files`` on Spark, verified; same report as the local one."""
    if dry_run:
        planned = maintenance.rewrite_data_files(
            load,
            target_file_size=target_file_size,
            properties=properties,
            min_input_files=min_input_files,
            dry_run=True,
        )
        planned.notes.append(
            "dry run planned by featurelake; Iceberg's rewrite on Spark may group files differently"
        )
        return planned
    say = progress or _quiet
    commit_call: Call = call or (lambda fn, _what: fn())
    props = {**properties, OPERATION: COMPACTION}
    run_id = props.setdefault(RUN_ID, f"compaction_{uuid.uuid4().hex[:12]}")
    tbl = load()
    name = ".".join(tbl.name())
    files_before = len(_data_files(tbl, main_snapshot_id(tbl)))
    result = CompactionResult(data_files_before=files_before, data_files_after=files_before)
    options = {
        "min-input-files": str(max(2, min_input_files)),
        "target-file-size-bytes": str(target_file_size),
        "partial-progress.enabled": "false",  # one commit, as locally
    }
    for attempt in range(1, max(1, attempts) + 1):
        result.attempts = attempt
        say(f"compaction of {name}: Iceberg rewrite_data_files on Spark (attempt {attempt})")
        try:
            with _on_spark(engine, f"compaction of {name}"):
                _rewrite(engine, load(), options, props)
            break
        except CommitFailedException:
            if landed_snapshot(load(), run_id) is not None:
                break
            result.notes.append(
                f"attempt {attempt}: the table changed concurrently; the rewrite was redone on fresh metadata"
            )
    else:
        raise ConflictError(
            f"could not compact {name}: main kept changing during {attempts} attempts; nothing was committed "
            "(Iceberg removed its new files); run `featurelake maintain --compact` again later"
        )
    fresh = load()
    landed = landed_snapshot(fresh, run_id)
    if landed is None:
        result.notes.append("no partition has enough small files to compact")
        return result
    snap = fresh.metadata.snapshot_by_id(landed)
    assert snap is not None and snap.parent_snapshot_id is not None
    parent = snap.parent_snapshot_id
    old, new = _data_files(fresh, parent), _data_files(fresh, landed)
    inputs = [f for path, f in old.items() if path not in new]
    outputs = [f for path, f in new.items() if path not in old]
    say(f"compaction of {name}: verifying {len(inputs)} rewritten files against {len(outputs)} new ones")
    before = checksum(engine, fresh, parent, inputs)
    after = checksum(engine, fresh, landed, outputs)
    if before != after:
        what = _roll_back(load, commit_call, landed, parent)
        raise DataError(
            f"compaction of {name} on Spark changed the rows of the rewritten files (rows/checksum {before} "
            f"before, {after} after, snapshot {landed}); {what}"
        )
    result.snapshot_id = landed
    result.groups = _groups(fresh, inputs, outputs)
    result.data_files_after = len(_data_files(fresh, main_snapshot_id(fresh)))
    return result


# --- snapshot expiry -----------------------------------------------------------------------------------


def _refs_iceberg_would_drop(tbl: Table) -> list[str]:
    """Refs past their max-ref-age-ms: Iceberg's expiry removes those, featurelake never removes a ref."""
    default = tbl.metadata.properties.get("history.expire.max-ref-age-ms")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    out = []
    for name, ref in tbl.metadata.refs.items():
        age = ref.max_ref_age_ms or (int(default) if default else None)
        snap = tbl.metadata.snapshot_by_id(ref.snapshot_id)
        if name != "main" and age is not None and (snap is None or now_ms - snap.timestamp_ms > age):
            out.append(name)
    return sorted(out)


def _state(tbl: Table) -> tuple[list[int], dict[str, int]]:
    return (
        sorted(s.snapshot_id for s in tbl.metadata.snapshots),
        {n: r.snapshot_id for n, r in tbl.metadata.refs.items()},
    )


def expire_snapshots(
    engine: SparkEngine,
    load: Callable[[], Table],
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
    attempts: int = 5,
    call: Call | None = None,
    progress: Progress | None = None,
) -> ExpiryResult:
    """Expire what featurelake's retention policy allows, with Iceberg's ``expire_snapshots`` on Spark."""
    check_policy(policy, force)
    if dry_run:
        return maintenance.expire_snapshots(
            load, policy, dry_run=True, force=force, now=now, attempts=attempts, call=call, progress=progress
        )
    say = progress or _quiet
    now = now or datetime.now(UTC)
    result = ExpiryResult()
    for attempt in range(1, max(1, attempts) + 1):
        result.attempts = attempt
        tbl = load()
        name = ".".join(tbl.name())
        kept = plan_retention(tbl.metadata, now, policy)
        expire = sorted({s.snapshot_id for s in tbl.metadata.snapshots} - set(kept))
        result.kept, result.expired = kept, expire
        if not expire:
            return result
        doomed_refs = _refs_iceberg_would_drop(tbl)
        if doomed_refs:
            raise FeaturelakeError(
                f"expiry of {name} on Spark stopped: Iceberg would remove ref(s) {', '.join(doomed_refs)} (past "
                "their max-ref-age-ms) and featurelake never removes refs; nothing was expired. Remove that "
                "setting from the refs (or the table property history.expire.max-ref-age-ms) and run again"
            )
        listed = {f.key: f for f in list_files(tbl.io, tbl.metadata.location)}
        if _state(load()) != _state(tbl):  # changed while listing: plan again on what is there now
            result.notes.append(f"attempt {attempt}: the table changed concurrently; planned again")
            continue
        ids = ", ".join(f"{sid}L" for sid in expire)
        say(f"expiry of {name}: Iceberg expire_snapshots on Spark for {len(expire)} snapshots")
        try:
            with _on_spark(engine, f"expiry of {name}"):
                _collect(
                    _procedure(
                        engine,
                        "expire_snapshots",
                        tbl,
                        f"older_than => TIMESTAMP '{_EPOCH}', snapshot_ids => array({ids})",
                    )
                )
        except CommitFailedException:
            result.notes.append(f"attempt {attempt}: the table changed concurrently; planned again")
            continue
        fresh = load()
        remaining = {f.key for f in list_files(fresh.io, fresh.metadata.location)}
        gone = [f for key, f in sorted(listed.items()) if key not in remaining]
        result.deleted = [f.uri for f in gone]
        result.bytes_reclaimed = sum(f.size for f in gone)
        say(f"expiry of {name}: Iceberg deleted {len(gone)} files")
        return result
    raise ConflictError(
        f"could not expire snapshots: the table kept changing during {attempts} attempts; nothing was "
        "expired; run `featurelake maintain --expire-older-than ...` again later"
    )


# --- orphan removal ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _short_ages_allowed(spark: SparkSession) -> Iterator[None]:
    """Let Iceberg's remove_orphan_files take an ``older_than`` within 24 h of now (its ``spark.testing``
    escape, a core setting a session may only change after the legacy guard is lifted)."""
    keys = ("spark.sql.legacy.setCommandRejectsSparkCoreConfs", "spark.testing")
    before = {k: spark.conf.get(k, None) for k in keys}
    spark.conf.set(keys[0], "false")
    spark.conf.set(keys[1], "true")
    try:
        yield
    finally:
        for key in reversed(keys):  # spark.testing first, while the guard is still lifted
            value = before[key]
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _unreferenced(
    engine: SparkEngine, tbl: Table, files: list[StoredFile], older_than: datetime, *, dry_run: bool
) -> list[str]:
    """Iceberg's orphan search (and deletion unless ``dry_run``) over exactly ``files``."""
    spark = engine.spark
    view = f"featurelake_listing_{uuid.uuid4().hex[:12]}"
    rows = [(f.uri, f.modified.astimezone(UTC) if f.modified else None) for f in files]
    spark.createDataFrame(rows, "file_path string, last_modified timestamp").createOrReplaceTempView(view)
    try:
        with (
            _short_ages_allowed(spark),
            _on_spark(engine, f"orphan removal in {'.'.join(tbl.name())}", retried=False),
        ):
            args = f"older_than => {_ts(older_than)}, dry_run => {str(dry_run).lower()}, file_list_view => '{view}'"
            return [
                r["orphan_file_location"]
                for r in _collect(_procedure(engine, "remove_orphan_files", tbl, args))
            ]
    finally:
        spark.catalog.dropTempView(view)


def remove_orphan_files(
    engine: SparkEngine,
    load: Callable[[], Table],
    *,
    min_age: timedelta = timedelta(days=3),
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
    other_locations: Iterable[str] = (),
    progress: Progress | None = None,
) -> OrphanResult:
    """Delete (or list) orphans older than ``min_age`` with Iceberg's ``remove_orphan_files`` on Spark."""
    check_min_age(min_age, force)
    say = progress or _quiet
    now = now or datetime.now(UTC)
    first = load()
    name = ".".join(first.name())
    location = first.metadata.location
    say(f"orphan removal in {name}: listing {location}")
    stored = list_files(first.io, location)
    tbl = load()  # after listing: anything committed meanwhile counts as reachable
    if file_key(tbl.metadata_location) not in {f.key for f in stored}:
        raise FeaturelakeError(
            f"orphan removal in {name} stopped: its current metadata file {tbl.metadata_location} is not among "
            f"the files listed under {location}, so paths cannot be compared safely; nothing was deleted"
        )
    own = file_key(location).rstrip("/") + "/"
    nested = [
        n for n in (file_key(o).rstrip("/") + "/" for o in other_locations) if n.startswith(own) and n != own
    ]
    candidates = {
        f.key: f for f in stored if is_table_file(f.uri) and not any(f.key.startswith(n) for n in nested)
    }
    result = OrphanResult(min_age_seconds=min_age.total_seconds())
    if not candidates:
        return result
    # Every unreferenced file: a dry run whose cutoff lies after the newest listed file.
    newest = max((f.modified for f in candidates.values() if f.modified), default=now)
    everything = max(newest.astimezone(UTC), now, datetime.now(UTC)) + timedelta(minutes=1)
    say(f"orphan removal in {name}: Iceberg remove_orphan_files on Spark over {len(candidates)} files")
    found = [
        candidates[k]
        for k in dict.fromkeys(
            map(file_key, _unreferenced(engine, tbl, list(candidates.values()), everything, dry_run=True))
        )
        if k in candidates
    ]
    cutoff = now - min_age
    old = [f for f in found if f.modified is not None and f.modified.astimezone(UTC) <= cutoff]
    young = [f for f in found if f not in old]
    result.too_young = [f.uri for f in young]
    if young:
        result.notes.append(
            f"kept {len(young)} unreferenced file(s) younger than {min_age}: an uncommitted write may own them"
        )
    if dry_run or not old:
        result.orphans = [f.uri for f in old]
        result.bytes_reclaimed = sum(f.size for f in old) if dry_run else 0
        return result
    say(f"orphan removal in {name}: deleting {len(old)} files with Iceberg")
    # Iceberg deletes files modified before older_than: just after the cutoff keeps `age >= min_age` inclusive.
    deleted = {
        file_key(u)
        for u in _unreferenced(engine, load(), old, cutoff + timedelta(milliseconds=1), dry_run=False)
    }
    gone = [f for f in old if f.key in deleted]
    result.orphans = [f.uri for f in gone]
    result.bytes_reclaimed = sum(f.size for f in gone)
    return result


class SparkMaintenance(MaintenanceBackend):
    """The three operations with Iceberg's Spark actions on the project's Spark engine (see above)."""

    @property
    def engine(self) -> SparkEngine:
        return spark_engine(self.project.engine, "maintenance")

    def compact(
        self,
        load: Load,
        *,
        target_file_size: int,
        properties: dict[str, str],
        min_input_files: int = 2,
        dry_run: bool = False,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> CompactionResult:
        return rewrite_data_files(
            self.engine,
            load,
            target_file_size=target_file_size,
            properties=properties,
            min_input_files=min_input_files,
            dry_run=dry_run,
            attempts=attempts,
            call=call,
            progress=progress,
        )

    def expire(
        self,
        load: Load,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> ExpiryResult:
        return expire_snapshots(
            self.engine,
            load,
            policy,
            dry_run=dry_run,
            force=force,
            now=now,
            attempts=attempts,
            call=call,
            progress=progress,
        )

    def remove_orphans(
        self,
        load: Load,
        *,
        min_age: timedelta,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        other_locations: Iterable[str] = (),
        progress: Progress | None = None,
    ) -> OrphanResult:
        return remove_orphan_files(
            self.engine,
            load,
            min_age=min_age,
            dry_run=dry_run,
            force=force,
            now=now,
            other_locations=other_locations,
            progress=progress,
        )


__all__ = ["SparkMaintenance", "checksum", "expire_snapshots", "remove_orphan_files", "rewrite_data_files"]
