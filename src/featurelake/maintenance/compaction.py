"""``rewrite_data_files``: bin-pack main's small data files, per partition, in one verified commit.

PyIceberg 0.12 has no compaction. Per partition of the current spec, files smaller than 75% of the target size
are packed (first-fit decreasing) into bins of at most the target's on-disk size; each bin of two or more files
is read with Iceberg's own projection, written back as one file, read back again, and compared with the input
by row count and an order-independent checksum of every row. Only then does one overwrite snapshot delete the
old files and add the new ones, recorded with ``featurelake.operation=compaction`` and the run's lineage.

Files written under an older partition spec (``apply`` after ``partition=`` changed) are always rewritten into
the current one, whatever their size: each joins the group of the current partition its column bounds put it
in, and is written back with PyIceberg's partitioned writer, which splits rows by the current spec, so a file
spanning several new partitions (month to day, none to month) comes out as one file per partition.

Concurrency: the commit asserts that main did not move; when it did, the table is reloaded, groups whose input
files are no longer all live in main (a backfill replaced that partition, say) are dropped and their new files
deleted, and the rest is committed again on the fresh metadata, so a concurrent append is never lost and
replaced data never comes back. Partitions with delete files (merge-on-read writers) are skipped.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import duckdb
import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, pyarrow_to_schema, write_file
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table, WriteTask
from pyiceberg.typedef import Record
from pyiceberg.types import BinaryType, PrimitiveType, StringType

from featurelake.errors import ConflictError, DataError
from featurelake.lakehouse import compat
from featurelake.lakehouse.lineage import OPERATION, RUN_ID
from featurelake.lakehouse.wap import MAIN, is_commit_conflict
from featurelake.maintenance.files import Progress, delete_file, file_key
from featurelake.maintenance.report import CompactionResult, FileGroup

T = TypeVar("T")
COMPACTION = "compaction"
#: Files at least this share of the target size are left alone (Iceberg's min-file-size default).
SMALL_FILE_RATIO = 0.75


@dataclass
class _Group:
    key: str
    partition: Record | None  # under the current spec; None: split the rows by it on write
    inputs: list[DataFile]
    outputs: list[DataFile]
    respec: bool = False  # holds files of an older partition spec

    @property
    def label(self) -> str:
        return self.key.split(":", 1)[1] or "(unpartitioned)"


@dataclass
class _LiveFiles:
    data: dict[str, DataFile]
    partitions_with_deletes: set[str]


class _FilePartition:
    """What ``write_file`` needs of a PartitionKey, built from a data file's partition record."""

    def __init__(self, partition: Record, spec: PartitionSpec, schema: Schema) -> None:
        self.partition = partition
        self._spec = spec
        self._schema = schema

    def to_path(self) -> str:
        return self._spec.partition_to_path(self.partition, self._schema)


def _partition_key(tbl: Table, f: DataFile) -> str:
    spec = tbl.metadata.specs()[f.spec_id]
    return (
        f"{f.spec_id}:{spec.partition_to_path(f.partition, tbl.schema())}" if spec.fields else f"{f.spec_id}:"
    )


def _live_files(tbl: Table) -> _LiveFiles:
    live = _LiveFiles({}, set())
    snap = tbl.metadata.snapshot_by_name(MAIN)
    if snap is None:
        return live
    for manifest in snap.manifests(tbl.io):
        for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
            f = entry.data_file
            if f.content == DataFileContent.DATA:
                live.data[file_key(f.file_path)] = f
            else:
                live.partitions_with_deletes.add(_partition_key(tbl, f))
    return live


def _current_partition(tbl: Table, f: DataFile) -> Record | None:
    """The partition of the current spec that all of ``f``'s rows fall in, judged by its column bounds (None
    when they span several, or the bounds cannot tell)."""
    values = []
    for pf in tbl.spec().fields:
        source = tbl.schema().find_field(pf.source_id)
        ftype = source.field_type
        lower = (f.lower_bounds or {}).get(pf.source_id)
        upper = (f.upper_bounds or {}).get(pf.source_id)
        # String and binary bounds may be truncated: they cannot place a file.
        if lower is None or upper is None or not isinstance(ftype, PrimitiveType):
            return None
        if isinstance(ftype, StringType | BinaryType):
            return None
        transform = pf.transform.transform(ftype)
        lo, hi = transform(from_bytes(ftype, lower)), transform(from_bytes(ftype, upper))
        if lo != hi:
            return None
        values.append(lo)
    return Record(*values)


def _target(tbl: Table, f: DataFile) -> tuple[str, Record | None]:
    """Where ``f`` belongs under the current spec: (group key, partition), partition None if it spans several."""
    default = tbl.metadata.default_spec_id
    if f.spec_id == default:
        return _partition_key(tbl, f), f.partition
    spec = tbl.spec()
    partition = _current_partition(tbl, f)
    if partition is None:
        return f"{f.spec_id}:{_partition_key(tbl, f).split(':', 1)[1]} (older spec, spans partitions)", None
    path = spec.partition_to_path(partition, tbl.schema()) if spec.fields else ""
    return f"{default}:{path}", partition


def _bin_pack(files: list[DataFile], capacity: int, respec: set[str]) -> list[list[DataFile]]:
    bins: list[list[DataFile]] = []
    room: list[int] = []
    for f in sorted(files, key=lambda f: (-f.file_size_in_bytes, f.file_path)):
        for i, free in enumerate(room):
            if f.file_size_in_bytes <= free:
                bins[i].append(f)
                room[i] -= f.file_size_in_bytes
                break
        else:
            bins.append([f])
            room.append(capacity - f.file_size_in_bytes)
    # One file is worth rewriting on its own when it is under an older partition spec.
    return [b for b in bins if len(b) > 1 or file_key(b[0].file_path) in respec]


def plan(tbl: Table, target_bytes: int, min_input_files: int) -> tuple[list[_Group], int, list[str]]:
    """Groups to rewrite, the number of live data files on main, and why other partitions were skipped."""
    live = _live_files(tbl)
    by_partition: dict[str, list[DataFile]] = defaultdict(list)
    partitions: dict[str, Record | None] = {}
    has_deletes: dict[str, bool] = defaultdict(bool)
    default_spec = tbl.metadata.default_spec_id
    for f in live.data.values():
        key, partition = _target(tbl, f)
        by_partition[key].append(f)
        partitions[key] = partition
        has_deletes[key] |= _partition_key(tbl, f) in live.partitions_with_deletes
    groups: list[_Group] = []
    skipped: list[str] = []
    for key in sorted(by_partition):
        files = by_partition[key]
        label = key.split(":", 1)[1] or "(unpartitioned)"
        respec = {file_key(f.file_path) for f in files if f.spec_id != default_spec}
        picked = [
            f
            for f in files
            if file_key(f.file_path) in respec or f.file_size_in_bytes < SMALL_FILE_RATIO * target_bytes
        ]
        if not respec and len(picked) < max(2, min_input_files):
            continue
        if has_deletes[key]:
            skipped.append(
                f"{label}: has delete files (merge-on-read); rewrite it with the engine that wrote them"
            )
            continue
        for b in _bin_pack(picked, target_bytes, respec):
            inputs = sorted(b, key=lambda f: f.file_path)
            moved = any(file_key(f.file_path) in respec for f in inputs)
            groups.append(_Group(key, partitions[key], inputs, [], respec=moved))
    return groups, len(live.data), skipped


def checksum(table: pa.Table) -> tuple[int, int]:
    """Row count and an order-independent checksum (sum of per-row hashes) of ``table``."""
    con = duckdb.connect()
    try:
        con.register("t", table)
        cols = ", ".join('"' + c.replace('"', '""') + '"' for c in table.column_names)
        row = con.execute(f"SELECT count(*), coalesce(sum(hash({cols})::HUGEINT), 0) FROM t").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1])


def _read(tbl: Table, files: list[DataFile]) -> pa.Table:
    scan = ArrowScan(tbl.metadata, tbl.io, tbl.schema(), AlwaysTrue())
    return scan.to_table([FileScanTask(f) for f in files])


def _rewrite(tbl: Table, group: _Group, write_uuid: uuid.UUID, task_id: int) -> list[DataFile]:
    """Write ``group``'s rows as one new file (one per current partition for files of an older spec) and
    prove they hold exactly the same rows."""
    name = ".".join(tbl.name())
    data = _read(tbl, group.inputs)
    expected_rows = sum(f.record_count for f in group.inputs)
    if data.num_rows != expected_rows:
        raise DataError(
            f"compaction of {name} {group.label}: read {data.num_rows} rows but the manifests list "
            f"{expected_rows}; the table is unchanged; check the data files with `featurelake read`"
        )
    before = checksum(data)
    schema = tbl.schema()
    if group.respec or group.partition is None:
        # Written by PyIceberg's partitioned writer: rows split by the current spec, whatever spec they had.
        # Its own write id: the counter names files, and other groups count from 0 under ``write_uuid``.
        written = compat.write_data_files(tbl.metadata, data, tbl.io, uuid.uuid4(), itertools.count())
        return _verified(tbl, group, written, before)
    task = WriteTask(
        write_uuid=write_uuid,
        task_id=task_id,
        schema=pyarrow_to_schema(
            data.schema, name_mapping=schema.name_mapping, format_version=tbl.metadata.format_version
        ),
        record_batches=data.to_batches(),
        partition_key=cast(PartitionKey, _FilePartition(group.partition, tbl.spec(), schema)),
    )
    written = list(write_file(tbl.io, tbl.metadata, iter([task])))
    return _verified(tbl, group, written, before)


def _verified(tbl: Table, group: _Group, written: list[DataFile], before: tuple[int, int]) -> list[DataFile]:
    """``written`` if reading it back gives exactly the rows (count and checksum) ``before`` describes."""
    name = ".".join(tbl.name())
    for f in written:
        f.spec_id = tbl.metadata.default_spec_id  # write_file leaves it unset; reading back needs it
    after = checksum(_read(tbl, written))
    if after != before:
        for f in written:
            delete_file(tbl.io, f.file_path)
        raise DataError(
            f"compaction of {name} {group.label}: the rewritten file does not hold the same rows "
            f"(rows/checksum {before} before, {after} after); nothing was committed, the table is unchanged"
        )
    return written


def landed_snapshot(tbl: Table, run_id: str) -> int | None:
    """The compaction snapshot run ``run_id`` committed, if it did (a "failed" commit may have landed)."""
    for snap in tbl.metadata.snapshots:
        props = snap.summary.additional_properties if snap.summary else {}
        if props.get(RUN_ID) == run_id and props.get(OPERATION) == COMPACTION:
            return snap.snapshot_id
    return None


def _commit(tbl: Table, groups: list[_Group], properties: dict[str, str]) -> int:
    txn = tbl.transaction()
    with txn.update_snapshot(snapshot_properties=properties).overwrite() as overwrite:
        for g in groups:
            for f in g.inputs:
                overwrite.delete_data_file(f)
            for f in g.outputs:
                overwrite.append_data_file(f)
        snapshot_id = overwrite.snapshot_id
    txn.commit_transaction()
    return snapshot_id


def _discard(tbl: Table, groups: list[_Group]) -> None:
    for g in groups:
        for f in g.outputs:
            delete_file(tbl.io, f.file_path)
        g.outputs = []


def _discard_unless_landed(load: Callable[[], Table], run_id: str, groups: list[_Group]) -> None:
    """After an error of unknown outcome: delete the new files only if the commit provably did not land."""
    try:
        tbl = load()
    except Exception:
        return  # cannot tell: leave them; orphan removal deletes them later if unreferenced
    if landed_snapshot(tbl, run_id) is None:
        _discard(tbl, groups)


def _describe(g: _Group) -> FileGroup:
    return FileGroup(
        partition=g.label,
        inputs=[f.file_path for f in g.inputs],
        input_bytes=sum(f.file_size_in_bytes for f in g.inputs),
        rows=sum(f.record_count for f in g.inputs),
        outputs=[f.file_path for f in g.outputs],
        output_bytes=sum(f.file_size_in_bytes for f in g.outputs),
    )


def _still_valid(fresh: Table, pending: list[_Group]) -> tuple[list[_Group], list[_Group]]:
    live = _live_files(fresh)
    ok: list[_Group] = []
    gone: list[_Group] = []
    for g in pending:
        intact = all(
            file_key(f.file_path) in live.data
            and _partition_key(fresh, f) not in live.partitions_with_deletes
            for f in g.inputs
        )
        (ok if intact else gone).append(g)
    return ok, gone


def rewrite_data_files(
    load: Callable[[], Table],
    *,
    target_file_size: int,
    properties: dict[str, str],
    min_input_files: int = 2,
    dry_run: bool = False,
    attempts: int = 5,
    call: Callable[[Callable[[], Any], str], Any] | None = None,
    progress: Progress | None = None,
) -> CompactionResult:
    """Compact main's small files; ``properties`` (lineage, with a unique ``run-id``) go on the snapshot.

    ``load`` returns a freshly loaded table; ``call(fn, what)`` wraps catalog commits (transient retries).
    """
    say: Progress = progress or (lambda _m: None)
    props = {**properties, OPERATION: COMPACTION}
    run_id = props.setdefault(RUN_ID, f"compaction_{uuid.uuid4().hex[:12]}")
    commit_call = call or (lambda fn, _what: fn())

    tbl = load()
    name = ".".join(tbl.name())
    groups, files_before, skipped = plan(tbl, target_file_size, min_input_files)
    result = CompactionResult(data_files_before=files_before, data_files_after=files_before, skipped=skipped)
    if not groups:
        result.notes.append("no partition has enough small files to compact")
        return result
    if moved := sum(1 for g in groups for f in g.inputs if f.spec_id != tbl.metadata.default_spec_id):
        result.notes.append(
            f"{moved} file(s) written under an older partition spec {'would be' if dry_run else 'are'} "
            "rewritten into the current one"
        )
    if dry_run:
        result.groups = [_describe(g) for g in groups]
        result.data_files_after = files_before - sum(len(g.inputs) - 1 for g in groups)
        return result

    write_uuid = uuid.uuid4()
    try:
        for i, g in enumerate(groups):
            say(f"compaction of {name}: rewriting {len(g.inputs)} files of {g.label}")
            g.outputs = _rewrite(tbl, g, write_uuid, i)
    except BaseException:
        _discard(tbl, groups)  # never committed: nothing references them
        raise
    say(f"compaction of {name}: wrote {sum(len(g.outputs) for g in groups)} files, verified")

    pending = list(groups)
    for attempt in range(1, max(1, attempts) + 1):
        result.attempts = attempt
        fresh = tbl if attempt == 1 else load()
        if (landed := landed_snapshot(fresh, run_id)) is not None:  # a "failed" attempt that did commit
            result.snapshot_id = landed
            break
        pending, gone = _still_valid(fresh, pending)
        if gone:
            labels = ", ".join(sorted({g.label for g in gone}))
            result.notes.append(f"{len(gone)} group(s) not compacted: replaced concurrently ({labels})")
            _discard(fresh, gone)
        if not pending:
            break
        say(f"compaction of {name}: committing (attempt {attempt})")
        try:
            result.snapshot_id = commit_call(
                functools.partial(_commit, fresh, pending, props), f"compact {name}"
            )
            break
        except (CommitFailedException, ValidationException, ValueError) as exc:
            if isinstance(exc, ValueError) and not is_commit_conflict(exc):
                _discard_unless_landed(load, run_id, pending)
                raise
            result.notes.append(
                f"attempt {attempt}: the table changed concurrently; retried on fresh metadata"
            )
        except BaseException:
            _discard_unless_landed(load, run_id, pending)
            raise
    else:
        landed = landed_snapshot(load(), run_id)
        if landed is None:
            _discard(tbl, pending)
            raise ConflictError(
                f"could not compact {name}: main kept changing during {attempts} attempts; nothing was "
                "committed and the new files were removed; run `featurelake maintain --compact` again later"
            )
        result.snapshot_id = landed
    result.groups = [_describe(g) for g in pending] if result.snapshot_id is not None else []
    result.data_files_after = len(_live_files(load()).data)
    return result
