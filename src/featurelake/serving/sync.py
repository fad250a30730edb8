"""Sync one view's published rows (Iceberg main) to the online store: incremental, idempotent, crash-safe.

**What changed since the last sync** is computed from data files, not from snapshot operations: the files
live in main now but not in the watermark snapshot were added (by appends, overwrites and backfills alike:
PyIceberg's ``incremental_append_scan`` would skip overwrites), the files live then but not now were removed.
Each added file carries the data sequence number of the snapshot that added it. Diffing the two snapshots'
manifests (only the manifests that differ are read) also copes with expired snapshots *between* the two and
ignores files that came and went in between.

**Keys**: an entity's store key is its key value's text, or for a composite key the values' texts joined
with ``,`` after escaping (``features/keys.py``: distinct keys never share a string).

**Writes**: the latest row per entity among the added rows, by (event_ts, sequence number), written with the
store's conditional rule, so replays and re-runs are idempotent and stale history never wins. A backfill can
also *remove* an entity's newest row (a correction that drops a day): for every key whose best removed row
is at least as new as its best added row, the sync re-reads that key's latest row from main and writes it
unconditionally (or deletes the key when main no longer has it).

**Scope**: the store keeps keys and watermarks per project, catalog and namespace (``serving/scope.py``), so
a sync only ever sees, overwrites and deletes its own scope's keys, and the watermark's table UUID tells a
table that was dropped and created again apart from any other table.

**Watermark**: stored in the online store; it advances only after every write of the batch succeeded, so a
crash or a Redis restart mid-sync loses nothing: the next run redoes the same batch. When there is no
watermark (first sync; keys of the layout before scopes are removed after it), the table was recreated
(new UUID), the watermark snapshot was expired, or main no longer descends from it (rewound), the sync says
so and does a **full resync**: the latest row per entity of main, written unconditionally, and keys main no
longer has are deleted, so the store matches main exactly.

**Keep-alive**: after each sync the Iceberg tag ``online-sync-<store type>-<project>`` is moved to the synced
snapshot, so table maintenance (which keeps tagged snapshots) does not expire the next sync's starting point.
The tag of the layout before scopes (``online-sync-<store type>``) is removed then.

**Stages**: :func:`plan_sync` (metadata only) and :func:`finish_sync` (watermark and tag) are shared by every
engine; between them the rows are read, reduced and written here (PyIceberg, DuckDB, the store's client), or
by Spark and its executors for a Redis store on the Spark engine (``engines/spark_sync.py``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, In
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import IcebergType, IntegerType, LongType

from featurelake.errors import CatalogUnavailableError, ConfigError, ConflictError
from featurelake.features.keys import as_keys, decode_key, key_sql
from featurelake.lakehouse.retry import retry_commit
from featurelake.lakehouse.wap import main_snapshot_id
from featurelake.memory import check_room, is_out_of_memory
from featurelake.serving import codec
from featurelake.serving.base import OnlineStore, Records, Watermark
from featurelake.training.scan import stream_scan

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project

SEQ = "__featurelake_seq"
_RID = "__featurelake_row"
_FILE = "__featurelake_file"
_POS = "__featurelake_pos"
TAG_PREFIX = "online-sync-"
#: Up to this many re-read keys are pushed into the Iceberg scan as an IN filter (file pruning by stats).
_IN_FILTER_MAX = 1000
#: Rows of the latest-per-key table encoded into store records at once (then written ``write_chunk`` a time).
_ENCODE_ROWS = 100_000


def tag_name(store: OnlineStore) -> str:
    """The Iceberg tag that keeps the snapshot last synced to this kind of store, for this project, alive.

    The table already fixes the catalog and namespace; the project tells apart two projects that sync the
    same table into stores of one type (each has its own watermark, so each needs its snapshot kept).
    """
    project = store.scope.project
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", project)[:60]
    if label != project:  # sanitised: keep names of different projects different
        label += "-" + hashlib.sha256(project.encode()).hexdigest()[:8]
    return f"{TAG_PREFIX}{store.type_name}-{label}"


def legacy_tag_name(store: OnlineStore) -> str:
    """The tag of the layout before scopes, one per store type whoever synced (removed by the next sync)."""
    return f"{TAG_PREFIX}{store.type_name}"


class SyncProgress:
    """Receives a sync's progress; this base class ignores it (the CLI draws a bar)."""

    def phase(self, view: str, text: str) -> None:
        """A new step began (planning, reading N files, reducing, ...)."""

    def writing(self, view: str, total: int) -> None:
        """``total`` keys are about to be written."""

    def advance(self, view: str, n: int) -> None:
        """``n`` more keys were written."""


@dataclass
class SyncResult:
    """What one view's sync did."""

    view: str
    mode: str  # full | incremental | up-to-date | empty
    reason: str | None
    from_snapshot: int | None
    to_snapshot: int | None
    files_read: int = 0
    rows: int = 0
    keys: int = 0
    changed: int = 0
    deleted: int = 0
    seconds: float = 0.0
    tag: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d

    def summary(self) -> str:
        span = f"snapshot {self.from_snapshot or '-'} -> {self.to_snapshot or '-'}"
        if self.mode == "up-to-date":
            return f"{self.view}: up to date at snapshot {self.to_snapshot}"
        if self.mode == "empty":
            return f"{self.view}: main has no snapshot yet; nothing to sync"
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"{self.view}: {self.mode} sync{why}, {span}: {self.rows} rows from {self.files_read} files -> "
            f"{self.keys} keys ({self.changed} changed, {self.deleted} deleted) in {self.seconds:.2f}s"
        )


# --- planning -----------------------------------------------------------------------------------------
def _walk_to(tbl: Table, ancestor: int, start: int) -> str | None:
    """None when ``ancestor`` is ``start`` or one of its parents, else why not."""
    current: int | None = start
    while current is not None:
        if current == ancestor:
            return None
        snap = tbl.metadata.snapshot_by_id(current)
        if snap is None:
            return f"main's history back to snapshot {ancestor} was partly expired"
        current = snap.parent_snapshot_id
    return f"main was rewound or replaced: snapshot {ancestor} is no longer an ancestor of main"


def plan(
    tbl: Table, watermark: Watermark | None, *, full: bool = False, legacy: bool = False
) -> tuple[str, str | None]:
    """(mode, reason): ``empty``, ``up-to-date``, ``incremental`` or ``full`` with why.

    ``legacy``: the store holds this view's keys in the layout before scopes (only asked without watermark).
    """
    current = main_snapshot_id(tbl)
    if current is None:
        return "empty", None
    if full:
        return "full", "full resync requested"
    if watermark is None:
        if legacy:
            return "full", (
                "first sync in the layout that keeps namespaces apart (the keys an earlier featurelake wrote "
                "are not read, and are removed after it)"
            )
        return "full", "first sync"
    uuid = str(tbl.metadata.table_uuid)
    if watermark.table_uuid != uuid:
        name = ".".join(tbl.name()[-2:])
        return "full", (
            f"table {name} was dropped and recreated since the last sync (table UUID {watermark.table_uuid}, "
            f"now {uuid})"
        )
    if watermark.snapshot_id == current:
        return "up-to-date", None
    if tbl.metadata.snapshot_by_id(watermark.snapshot_id) is None:
        return "full", f"the last synced snapshot {watermark.snapshot_id} has expired"
    why = _walk_to(tbl, watermark.snapshot_id, current)
    if why is not None:
        return "full", why
    if renamed := _renamed_since(tbl, watermark.snapshot_id):
        return "full", f"column(s) renamed since the last sync ({renamed}); stored rows carry the old names"
    return "incremental", None


def _renamed_since(tbl: Table, snapshot_id: int) -> str:
    """``old -> new`` for every column (same field id) whose name changed after ``snapshot_id``."""
    snap = tbl.metadata.snapshot_by_id(snapshot_id)
    then = next((s for s in tbl.metadata.schemas if snap is not None and s.schema_id == snap.schema_id), None)
    if then is None:
        return ""
    now = {f.field_id: f.name for f in tbl.schema().fields}
    return ", ".join(
        f"{f.name} -> {now[f.field_id]}" for f in then.fields if now.get(f.field_id, f.name) != f.name
    )


# --- reading ------------------------------------------------------------------------------------------
@dataclass
class _Files:
    data: dict[str, tuple[DataFile, int]]  # path -> (file, data sequence number)
    has_deletes: bool


def _live_files(tbl: Table, snap: Snapshot, skip: set[str]) -> _Files:
    """Live data files of ``snap`` from its manifests not in ``skip`` (and whether it has delete files)."""
    files: dict[str, tuple[DataFile, int]] = {}
    deletes = False
    for m in snap.manifests(tbl.io):
        if m.manifest_path in skip:
            continue
        entries = m.fetch_manifest_entry(tbl.io, discard_deleted=True)
        if m.content == ManifestContent.DELETES:
            deletes = deletes or bool(entries)
            continue
        for e in entries:
            seq = e.sequence_number if e.sequence_number is not None else snap.sequence_number
            files[e.data_file.file_path] = (e.data_file, int(seq or 0))
    return _Files(files, deletes)


def _diff(
    tbl: Table, old: Snapshot, new: Snapshot
) -> tuple[list[tuple[DataFile, int]], list[tuple[DataFile, int]], bool]:
    """(added, removed, has_delete_files) between two snapshots, reading only manifests that differ."""
    old_paths = {m.manifest_path for m in old.manifests(tbl.io)}
    new_paths = {m.manifest_path for m in new.manifests(tbl.io)}
    shared = old_paths & new_paths
    # A manifest both snapshots share lists the same files in both: it cannot contribute to the diff.
    before = _live_files(tbl, old, shared)
    after = _live_files(tbl, new, shared)
    added = [v for p, v in after.data.items() if p not in before.data]
    removed = [v for p, v in before.data.items() if p not in after.data]
    return added, removed, before.has_deletes or after.has_deletes


def _read(
    tbl: Table,
    files: list[tuple[DataFile, int]],
    columns: list[str],
    row_filter: BooleanExpression | None = None,
) -> pa.Table:
    """Rows of ``files`` (projected to ``columns`` by field id) with each file's sequence number in SEQ."""
    schema = tbl.schema().select(*columns)
    scan = ArrowScan(tbl.metadata, tbl.io, schema, row_filter if row_filter is not None else AlwaysTrue())
    by_seq: dict[int, list[DataFile]] = defaultdict(list)
    for df, seq in files:
        by_seq[seq].append(df)
    parts = []
    for seq, dfs in sorted(by_seq.items()):
        part = scan.to_table([FileScanTask(df) for df in dfs])
        parts.append(part.append_column(SEQ, pa.array([seq] * part.num_rows, pa.int64())))
    if not parts:
        empty = schema.as_arrow().empty_table()
        return empty.append_column(SEQ, pa.array([], pa.int64()))
    return pa.concat_tables(parts, promote_options="permissive")


# --- reducing -----------------------------------------------------------------------------------------
class Reducer:
    """DuckDB over Arrow: latest row per key, payload encoding, and the removed-row comparison.

    The Spark sync runs :meth:`encode` on its executors, so both engines store byte-identical records.
    """

    def __init__(self, join_key: str | Sequence[str], timestamp_field: str, fields: dict[str, Any]) -> None:
        self.key_names, self.ts_name = as_keys(join_key), timestamp_field
        #: The key columns, to group and partition by.
        self.key = ", ".join(codec.quote(k) for k in self.key_names)
        #: The store key (the encoded text of the key columns).
        self.key_text = key_sql(self.key_names, codec.quote)
        self.ts = codec.quote(timestamp_field)
        self.payload = codec.payload_sql(fields)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone='UTC'")

    def close(self) -> None:
        self.con.close()

    def _order(self) -> str:
        # One sortable number per row: event time first, then the sequence number (< 2**40).
        return f"(epoch_us({self.ts})::HUGEINT * 1099511627776 + {SEQ})"

    def _latest(self, rel: str, where: str = "") -> str:
        return f"SELECT * FROM {rel} {where} QUALIFY row_number() OVER (PARTITION BY {self.key} ORDER BY {self._order()} DESC) = 1"

    def records(self, rows: pa.Table, only: list[str] | None = None) -> Records:
        """The latest row per key of ``rows`` (restricted to keys ``only``) as store records."""
        # Pick the winning row numbers with a hash aggregate over the narrow columns, then encode only those
        # rows: much cheaper than a window sort that carries every feature column.
        narrow = rows.select([*self.key_names, self.ts_name, SEQ])
        narrow = narrow.append_column(_RID, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        self.con.register("narrow_in", narrow)
        where = ""
        if only is not None:
            self.con.register("only_keys", pa.table({"k": pa.array(only, pa.string())}))
            where = f"WHERE {self.key_text} IN (SELECT k FROM only_keys)"
        picked = self.con.sql(
            f"SELECT arg_max({_RID}, {self._order()}) AS r FROM narrow_in {where} GROUP BY {self.key}"
        ).to_arrow_table()
        self.con.unregister("narrow_in")
        return self.encode(rows.take(picked.column("r")))

    def latest(self, rows: pa.Table) -> pa.Table:
        """The latest row per key of ``rows`` (every column kept): what :meth:`records` encodes."""
        narrow = rows.select([*self.key_names, self.ts_name, SEQ])
        narrow = narrow.append_column(_RID, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        self.con.register("narrow_in", narrow)
        picked = self.con.sql(
            f"SELECT arg_max({_RID}, {self._order()}) AS r FROM narrow_in GROUP BY {self.key}"
        ).to_arrow_table()
        self.con.unregister("narrow_in")
        return rows.take(picked.column("r"))

    def encode(self, latest: pa.Table) -> Records:
        """Store records of ``latest`` (at most one row per key, with SEQ), in the stored encoding."""
        self.con.register("latest_in", latest)
        out = self.con.sql(
            f"SELECT {self.key_text} AS k, epoch_us({self.ts}) AS t, {SEQ} AS s, {self.payload} AS v "
            "FROM latest_in"
        ).to_arrow_table()
        self.con.unregister("latest_in")
        return Records(
            out.column("k").to_pylist(),
            out.column("t").to_pylist(),
            out.column("s").to_pylist(),
            out.column("v").to_pylist(),
        )

    def key_texts(self, rows: pa.Table) -> pa.Array:
        """The store key of every row of ``rows`` (in order), as one Arrow string array."""
        self.con.register("keys_in", rows.select(self.key_names))
        out = self.con.sql(f"SELECT {self.key_text} AS k FROM keys_in").to_arrow_table()
        self.con.unregister("keys_in")
        return out.column("k").combine_chunks()

    def stale_keys(self, added: pa.Table, removed: pa.Table) -> list[str]:
        """Keys whose newest removed row is at least as new as their newest added row (or that got none)."""
        self.con.register("added_in", added)
        self.con.register("removed_in", removed)
        rows = self.con.sql(
            f"""
            WITH a AS (SELECT {self.key_text} AS k, {self.ts} AS t, {SEQ} AS s FROM ({self._latest("added_in")})),
                 r AS (SELECT {self.key_text} AS k, {self.ts} AS t, {SEQ} AS s FROM ({self._latest("removed_in")}))
            SELECT r.k FROM r LEFT JOIN a USING (k)
            WHERE a.k IS NULL OR r.t > a.t OR (r.t = a.t AND r.s >= a.s)
            """
        ).fetchall()
        self.con.unregister("added_in")
        self.con.unregister("removed_in")
        return [r[0] for r in rows]


# --- the job ------------------------------------------------------------------------------------------
def _write(
    store: OnlineStore, view: str, records: Records, *, force: bool, chunk: int, progress: SyncProgress
) -> int:
    changed = 0
    for start in range(0, len(records), chunk):
        part = records.slice(start, start + chunk)
        changed += store.write(view, part, force=force)
        progress.advance(view, len(part))
    return changed


def _write_latest(
    store: OnlineStore,
    view: str,
    reducer: Reducer,
    latest: pa.Table,
    *,
    force: bool,
    chunk: int,
    progress: SyncProgress,
) -> int:
    """Encode and write ``latest`` (one row per key) a slice at a time: only one slice's records exist as Python
    objects at once (all of them would cost a few hundred bytes per key)."""
    changed = 0
    step = max(chunk, _ENCODE_ROWS)
    for start in range(0, latest.num_rows, step):
        records = reducer.encode(latest.slice(start, step))
        changed += _write(store, view, records, force=force, chunk=chunk, progress=progress)
    return changed


def _absent(store: OnlineStore, view: str, present: pa.Array) -> list[str]:
    """The keys ``store`` holds for ``view`` that are not in ``present`` (compared in Arrow, not as a set of
    Python strings)."""
    stored = pa.array(list(store.keys(view)), pa.string())
    if not len(stored):
        return []
    keep = pc.is_in(stored, value_set=present.cast(pa.string()))
    return list(stored.filter(pc.invert(keep)).to_pylist())


def _keep_alive(project: Project, view: str, snapshot_id: int, tag: str, legacy_tag: str) -> str | None:
    """Point ``tag`` at the synced snapshot so expiry keeps it, and remove ``legacy_tag`` (the layout before
    scopes; no sync reads its watermark any more); a note when that could not be done."""

    def move(tbl: Table) -> str | None:
        ref = tbl.metadata.refs.get(tag)
        old = tbl.metadata.refs.get(legacy_tag)
        drop_old = old is not None and old.snapshot_ref_type == SnapshotRefType.TAG
        tag_it = ref is None or ref.snapshot_id != snapshot_id
        if not tag_it and not drop_old:
            return None
        if ref is not None and ref.snapshot_ref_type == SnapshotRefType.BRANCH:
            return f"a branch named {tag} exists in {project.table_name(view)}; the synced snapshot is not tagged"

        def commit() -> None:
            ms = tbl.manage_snapshots()
            if tag_it:
                ms = ms.create_tag(snapshot_id, tag)
            if drop_old:
                ms = ms.remove_tag(legacy_tag)
            ms.commit()

        try:
            project.catalog_call(commit, f"tag {tag}")
        except CatalogUnavailableError as exc:
            return f"could not move tag {tag} ({exc}); the next sync retries"
        return None

    try:
        return retry_commit(
            lambda: project.load_table(view),
            move,
            table=project.table_name(view),
            what=f"tag {tag}",
            attempts=project.config.settings.catalog.retries + 1,
        )
    except ConflictError:
        return f"could not move tag {tag}: the table kept changing; the next sync retries"


def key_values(tbl: Table, join_key: str | Sequence[str], keys: list[str]) -> list[Any]:
    """Store keys as the values of the table's key column (integers for an integer key); for a composite
    key, tuples of the key columns' values."""
    columns = as_keys(join_key)
    ints = [isinstance(tbl.schema().find_field(c).field_type, IntegerType | LongType) for c in columns]
    if len(columns) == 1:
        return [int(k) for k in keys] if ints[0] else list(keys)
    return [
        tuple(int(v) if i else v for v, i in zip(decode_key(k, len(columns)), ints, strict=True))
        for k in keys
    ]


def key_filter(tbl: Table, join_key: str | Sequence[str], keys: list[str]) -> BooleanExpression | None:
    """An Iceberg filter keeping at least the rows of store keys ``keys`` (None: too many to list): the key
    column IN the values, or for a composite key the first key column IN its values (file pruning only)."""
    columns = as_keys(join_key)
    values = key_values(tbl, columns, keys)
    if len(columns) > 1:
        values = sorted({v[0] for v in values})
    if len(values) > _IN_FILTER_MAX:
        return None
    return In(columns[0], values)  # type: ignore[call-arg,arg-type]


@dataclass
class SyncPlan:
    """One view's sync, planned from Iceberg metadata alone: the data files that changed since the watermark.

    :func:`plan_sync` makes it, an engine applies it (the local path here, ``engines/spark_sync.py`` on
    Spark), and :func:`finish_sync` records the watermark and moves the tag once every write succeeded.
    """

    view: FeatureView
    table: Table
    watermark: Watermark | None
    current: Snapshot | None
    result: SyncResult
    #: Declared type of each feature the table has (the payload's members).
    types: dict[str, IcebergType]
    #: Join key, timestamp field and the features above: what is read from the data files.
    columns: list[str]
    added: list[tuple[DataFile, int]] = field(default_factory=list)
    removed: list[tuple[DataFile, int]] = field(default_factory=list)
    #: Row-level delete files exist: read all of main with PyIceberg/Spark applying them (full mode).
    deletes: bool = False
    #: The store holds this view's data of the layout before scopes: removed once the watermark is set.
    legacy: bool = False
    t0: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        """Nothing to read or write (main is empty, or the store already holds main's snapshot)."""
        return self.result.mode in ("empty", "up-to-date")

    @property
    def full(self) -> bool:
        return self.result.mode == "full"

    def live_files(self) -> list[tuple[DataFile, int]]:
        """Every live data file of main's current snapshot, with its data sequence number."""
        assert self.current is not None
        return list(_live_files(self.table, self.current, set()).data.values())


def plan_sync(
    project: Project, store: OnlineStore, view: FeatureView, *, full: bool = False, progress: SyncProgress
) -> SyncPlan:
    """Read the watermark, decide the mode and diff the manifests (metadata only, nothing is written)."""
    t0 = time.perf_counter()
    progress.phase(view.name, "planning")
    tbl = project.load_table(view.name)
    watermark = store.get_watermark(view.name)
    legacy = watermark is None and store.has_legacy(view.name)
    mode, reason = plan(tbl, watermark, full=full, legacy=legacy)
    current_id = main_snapshot_id(tbl)
    result = SyncResult(
        view.name, mode, reason, watermark.snapshot_id if watermark else None, current_id, tag=tag_name(store)
    )
    current = tbl.metadata.snapshot_by_id(current_id) if current_id is not None else None
    out = SyncPlan(view, tbl, watermark, current, result, {}, [], t0=t0, legacy=legacy)
    if mode == "empty":
        result.tag = None
    if out.done:
        return out
    assert current is not None
    schema_names = set(tbl.schema().column_names)
    out.types = {n: tbl.schema().find_field(n).field_type for n in view.fields if n in schema_names}
    missing = [n for n in view.fields if n not in schema_names]
    if missing:
        result.notes.append(
            f"{', '.join(missing)} not in table {project.table_name(view.name)} yet (run `featurelake apply`)"
        )
    out.columns = [*view.join_keys, view.timestamp_field, *out.types]
    if mode == "incremental":
        assert watermark is not None
        old = tbl.metadata.snapshot_by_id(watermark.snapshot_id)
        assert old is not None
        out.added, out.removed, out.deletes = _diff(tbl, old, current)
        if out.deletes:
            result.mode = "full"
            result.reason = "the table has row-level delete files, which only a full read applies"
    if out.full:
        live = _live_files(tbl, current, set())
        out.added, out.removed, out.deletes = list(live.data.values()), [], live.has_deletes
    return out


def read_added(planned: SyncPlan) -> pa.Table:
    """The rows of the plan's added files (every live file of main in full mode), projected to the plan's
    columns, with each row's data sequence number in :data:`SEQ`; with row-level delete files, main's rows
    as PyIceberg reads them (deletes applied), all at main's current sequence number. :func:`iter_added`
    yields the same rows in parts (the local sync and ``featurelake consistency`` read through it).
    """
    current = planned.current
    assert current is not None
    if planned.deletes:
        # Merge-on-read deletes: let PyIceberg apply them; every row counts as main's current sequence.
        rows = planned.table.scan(
            snapshot_id=current.snapshot_id, selected_fields=tuple(planned.columns)
        ).to_arrow()
        return rows.append_column(SEQ, pa.array([current.sequence_number or 0] * rows.num_rows, pa.int64()))
    return _read(planned.table, planned.added, planned.columns)


def _groups(files: list[tuple[DataFile, int]], rows: int) -> list[list[tuple[DataFile, int]]]:
    """``files`` in consecutive groups of about ``rows`` rows each (by their record counts; whole files)."""
    groups: list[list[tuple[DataFile, int]]] = []
    size = rows
    for item in files:
        if size >= rows:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += int(item[0].record_count or 0)
    return groups


def _row_bytes(tbl: Table, columns: list[str]) -> int:
    """About how many bytes one row of ``columns`` takes as Arrow (variable-width values counted as 32 bytes),
    with the sequence-number column the sync adds."""
    widths = [
        1 if pa.types.is_boolean(t) else t.byte_width if pa.types.is_primitive(t) else 32
        for t in schema_to_pyarrow(tbl.schema().select(*columns)).types
    ]
    return sum(widths) + 8


def iter_added(planned: SyncPlan, batch_rows: int) -> Iterator[pa.Table]:
    """:func:`read_added`'s rows in parts of about ``batch_rows`` rows (whole data files; with row-level delete
    files, PyIceberg's record batches): only one part is in memory at a time."""
    current = planned.current
    assert current is not None
    if not planned.deletes:
        width = _row_bytes(planned.table, planned.columns)
        for group in _groups(planned.added, batch_rows):
            rows = sum(int(df.record_count or 0) for df, _ in group)
            # A group that cannot fit stops here, as a clear error naming sync_batch_rows: under a memory cap
            # the native readers may abort the process (std::bad_alloc) instead of raising.
            check_room(rows * width, f"reading {rows:,} rows of {planned.view.name} at once")
            yield _read(planned.table, group, planned.columns)
        return
    # One data file (with its deletes applied) in memory at a time: PyIceberg's own reader reads them all ahead.
    reader = stream_scan(
        planned.table.scan(snapshot_id=current.snapshot_id, selected_fields=tuple(planned.columns))
    )
    seq = pa.scalar(current.sequence_number or 0, pa.int64())
    pending: list[pa.RecordBatch] = []
    size = 0

    def flush() -> pa.Table:
        part = pa.Table.from_batches(pending, schema=reader.schema)
        pending.clear()
        return part.append_column(SEQ, pa.repeat(seq, part.num_rows))

    for batch in reader:
        pending.append(batch)
        size += batch.num_rows
        if size >= batch_rows:
            yield flush()
            size = 0
    if pending:
        yield flush()


def latest_added(planned: SyncPlan, reducer: Reducer, batch_rows: int) -> tuple[pa.Table | None, int]:
    """The latest added row per key (every read column and :data:`SEQ`) and the number of rows read, reading
    ``batch_rows`` at a time and keeping only each key's latest row in between: memory follows the part
    and the number of keys, not the rows added.

    Without row-level deletes, in two passes: the key and event-time columns of every added file find each
    key's winning row (file and position), then only the files holding winners are read whole, one at a time.
    Newer rows mostly sit in newer files (a day's partition), so a sync of many days decodes the feature
    columns of the last ones only."""
    if not planned.deletes:
        return _latest_two_pass(planned, reducer, batch_rows)
    winners: pa.Table | None = None
    rows = 0
    for part in iter_added(planned, batch_rows):
        rows += part.num_rows
        if winners is not None:
            part = pa.concat_tables([winners, part.cast(winners.schema)])
        winners = reducer.latest(part)
        del part
    return winners, rows


def _latest_two_pass(planned: SyncPlan, reducer: Reducer, batch_rows: int) -> tuple[pa.Table | None, int]:
    tbl, added = planned.table, planned.added
    if not added:
        return None, 0
    narrow_columns = [*reducer.key_names, reducer.ts_name]
    narrow_scan = ArrowScan(tbl.metadata, tbl.io, tbl.schema().select(*narrow_columns), AlwaysTrue())
    narrow_width = _row_bytes(tbl, narrow_columns) + 16  # and the file and position columns

    def positions(item: tuple[int, tuple[DataFile, int]]) -> pa.Table:
        index, (df, seq) = item
        part = narrow_scan.to_table([FileScanTask(df)])  # no delete files: every row, in the file's order
        n = part.num_rows
        return (
            part.append_column(SEQ, pa.repeat(pa.scalar(seq, pa.int64()), n))
            .append_column(_FILE, pa.repeat(pa.scalar(index, pa.int32()), n))
            .append_column(_POS, pa.array(np.arange(n, dtype=np.int64)))
        )

    # Threads of its own: PyIceberg's shared executor is the one each file read submits to (nested waits on
    # it would deadlock once every worker waits for another).
    found: pa.Table | None = None
    rows = first = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="featurelake-sync") as executor:
        for group in _groups(added, batch_rows):
            count = sum(int(df.record_count or 0) for df, _ in group)
            check_room(count * narrow_width, f"reading {count:,} rows of {planned.view.name} at once")
            items = list(enumerate(group, start=first))
            first += len(group)
            kept = [found] if found is not None else []
            part = pa.concat_tables([*kept, *executor.map(positions, items)])
            rows += part.num_rows - (found.num_rows if found is not None else 0)
            found = reducer.latest(part)
            del part
    if found is None or found.num_rows == 0:
        return None, rows
    full_scan = ArrowScan(tbl.metadata, tbl.io, tbl.schema().select(*planned.columns), AlwaysTrue())
    width = _row_bytes(tbl, planned.columns)
    order = pc.sort_indices(found, [(_FILE, "ascending"), (_POS, "ascending")])
    found = found.take(order).select([_FILE, _POS])
    files = found.column(_FILE).to_numpy()
    bounds = np.flatnonzero(np.diff(files)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(files)]])

    def winners_of(span: tuple[int, int]) -> pa.Table:
        lo, hi = span
        df, seq = added[int(files[lo])]
        check_room(int(df.record_count or 0) * width, f"reading a data file of {planned.view.name}")
        whole = full_scan.to_table([FileScanTask(df)])
        picked = whole.take(found.column(_POS).slice(lo, hi - lo))
        return picked.append_column(SEQ, pa.repeat(pa.scalar(seq, pa.int64()), picked.num_rows))

    # One file read whole at a time (Arrow decodes its columns on several threads): memory holds that file and
    # the winners so far, never the window.
    parts = [winners_of(span) for span in zip(starts.tolist(), ends.tolist(), strict=True)]
    return pa.concat_tables(parts, promote_options="permissive"), rows


def _apply_locally(
    planned: SyncPlan, store: OnlineStore, *, chunk: int, progress: SyncProgress, batch_rows: int
) -> None:
    """Read the changed files with PyIceberg (``batch_rows`` at a time), reduce them to the latest row per key
    with DuckDB and write through ``store``."""
    tbl, view, result = planned.table, planned.view, planned.result
    current = planned.current
    assert current is not None
    reducer = Reducer(view.join_keys, view.timestamp_field, planned.types)
    try:
        progress.phase(
            view.name, f"reading {len(planned.added)} added and {len(planned.removed)} removed data files"
        )
        winners, result.rows = latest_added(planned, reducer, batch_rows)
        result.files_read = len(planned.added) + len(planned.removed)
        stale: list[str] = []
        if planned.removed:
            narrow = [*view.join_keys, view.timestamp_field]
            gone = _read(tbl, planned.removed, narrow)
            added = winners.select([*narrow, SEQ]) if winners is not None else _read(tbl, [], narrow)
            stale = reducer.stale_keys(added, gone)
        refreshed = Records([], [], [], [])
        if stale:
            progress.phase(view.name, f"re-reading {len(stale)} keys whose newest row a commit removed")
            flt = key_filter(tbl, view.join_keys, stale)
            refreshed = reducer.records(_read(tbl, planned.live_files(), planned.columns, flt), only=stale)
        force = planned.full
        result.keys = winners.num_rows if winners is not None else 0
        # In a full resync every key main has is written: the rest of the store's keys go afterwards.
        present = reducer.key_texts(winners) if force and winners is not None else pa.array([], pa.string())
        progress.phase(view.name, f"writing the latest row of {result.rows} rows per key")
        progress.writing(view.name, result.keys + len(refreshed))
        if winners is not None:
            result.changed = _write_latest(
                store, view.name, reducer, winners, force=force, chunk=chunk, progress=progress
            )
        del winners
    finally:
        reducer.close()

    if len(refreshed):
        result.changed += _write(store, view.name, refreshed, force=True, chunk=chunk, progress=progress)
    drop = sorted(set(stale) - set(refreshed.keys))
    if force:
        progress.phase(view.name, "removing keys main no longer has")
        drop = _absent(store, view.name, present)
    if drop:
        result.deleted = store.delete(view.name, drop)


def _key_type(tbl: Table, view: FeatureView) -> str:
    """``long`` or ``string``; for a composite key one per key column, joined by ``,``."""
    types = [tbl.schema().find_field(k).field_type for k in view.join_keys]
    return ",".join("long" if isinstance(t, IntegerType | LongType) else "string" for t in types)


def finish_sync(project: Project, store: OnlineStore, planned: SyncPlan) -> SyncResult:
    """Record the watermark (only after every write of the batch succeeded) and keep the snapshot alive."""
    result = planned.result
    if result.mode == "empty":
        return result
    current = planned.current
    assert current is not None
    if result.mode != "up-to-date":
        # Only now is the batch complete: a crash before this line makes the next run redo it.
        store.set_watermark(
            planned.view.name,
            Watermark(
                snapshot_id=current.snapshot_id,
                sequence_number=int(current.sequence_number or 0),
                table_uuid=str(planned.table.metadata.table_uuid),
                synced_at=datetime.now(UTC).isoformat(),
                key_type=_key_type(planned.table, planned.view),
            ),
        )
        if planned.legacy:
            removed = store.drop_legacy(planned.view.name)
            result.notes.append(
                f"removed {removed} keys of {planned.view.name} that an earlier featurelake wrote without keeping "
                f"namespaces apart; keys are now kept per project, catalog and namespace (here "
                f"{store.scope.describe()})"
            )
    note = _keep_alive(
        project, planned.view.name, current.snapshot_id, tag_name(store), legacy_tag_name(store)
    )
    if note:
        result.notes.append(note)
    result.seconds = time.perf_counter() - planned.t0
    return result


def sync_view(
    project: Project,
    store: OnlineStore,
    view: FeatureView,
    *,
    full: bool = False,
    progress: SyncProgress | None = None,
) -> SyncResult:
    """Bring ``view``'s keys in ``store`` up to main's current snapshot (see the module docstring)."""
    progress = progress or SyncProgress()
    planned = plan_sync(project, store, view, full=full, progress=progress)
    if not planned.done:
        settings = project.config.settings.online_store
        try:
            _apply_locally(
                planned,
                store,
                chunk=settings.write_chunk,
                progress=progress,
                batch_rows=settings.sync_batch_rows,
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise ConfigError(
                f"view {view.name!r}: out of memory syncing {planned.result.mode} ({type(exc).__name__}: {exc}); "
                f"lower online_store.sync_batch_rows (FEATURELAKE_ONLINE_STORE__SYNC_BATCH_ROWS, now "
                f"{settings.sync_batch_rows}) so that fewer rows are read at once, or give the process more "
                "memory; the watermark did not move, so the next sync redoes this one"
            ) from exc
    return finish_sync(project, store, planned)


__all__ = [
    "SEQ",
    "TAG_PREFIX",
    "Reducer",
    "SyncPlan",
    "SyncProgress",
    "SyncResult",
    "finish_sync",
    "iter_added",
    "key_filter",
    "key_values",
    "latest_added",
    "legacy_tag_name",
    "plan",
    "plan_sync",
    "read_added",
    "sync_view",
    "tag_name",
]
