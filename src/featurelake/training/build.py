"""Build a training set: resolve snapshots, read each view at its snapshot, join point in time, sign it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from featurelake.errors import UsageError
from featurelake.features.keys import as_keys
from featurelake.features.ondemand import OnDemandFeatureView, arrow_type
from featurelake.features.service_log import applied_version
from featurelake.lakehouse.history import resolve_snapshot
from featurelake.lakehouse.schema import parse_type, type_name
from featurelake.lakehouse.storage import Storage, is_remote, is_storage_failure, storage_error
from featurelake.lakehouse.window import parse_timestamp
from featurelake.training.entities import (
    TIMESTAMP_COLUMN,
    EntitySource,
    check_timestamps,
    fingerprint,
    join_key_column,
    load_entities,
)
from featurelake.training.join import JoinStats, ViewFrame, micros, point_in_time_join
from featurelake.training.provenance import Provenance, attach
from featurelake.training.scan import read_scan, stream_scan

if TYPE_CHECKING:
    from featurelake.project import Project

AsOf = datetime | str | Mapping[str, int | None] | None


@dataclass
class TrainingSetResult:
    """A built training set: the table (provenance in its schema metadata), the provenance, join statistics."""

    table: pa.Table
    provenance: Provenance
    stats: JoinStats
    seconds: float = 0.0

    def write(self, path: str | Path, storage: Storage | None = None) -> Path | str:
        return write_training_set(self.table, path, storage)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.table.num_rows,
            "columns": self.table.column_names,
            "provenance": self.provenance.to_dict(),
            "matched": self.stats.matched,
            "outside_ttl": self.stats.outside_ttl,
            "ties": self.stats.ties,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Request:
    view: str
    features: list[str]


def parse_features(features: Sequence[str] | str) -> tuple[list[_Request], list[str]]:
    """``["view:feat", ...]`` (or one comma-separated string): the requests grouped by view (first-seen
    order), and the normalised references in the order given (the output's column order)."""
    if isinstance(features, str):
        features = [f for f in features.split(",") if f.strip()]
    if not features:
        raise UsageError("no features requested: give them as VIEW:FEATURE, e.g. user_features:amount_avg_1d")
    seen: list[str] = []
    grouped: dict[str, list[str]] = {}
    for raw in features:
        ref = str(raw).strip()
        view, sep, feat = ref.partition(":")
        if not sep or not view or not feat or ":" in feat:
            raise UsageError(
                f"feature {ref!r} must be written VIEW:FEATURE, e.g. user_features:amount_avg_1d"
            )
        if ref in seen:
            raise UsageError(f"feature {ref} is requested twice")
        seen.append(ref)
        grouped.setdefault(view, []).append(feat)
    return [_Request(v, fs) for v, fs in grouped.items()], seen


def write_training_set(table: pa.Table, path: str | Path, storage: Storage | None = None) -> Path | str:
    """Write a training set to Parquet with fixed options, so equal tables give equal bytes.

    ``path`` may be a URL (``s3://bucket/train.parquet``), written through ``storage`` in one PUT.
    """
    if Path(str(path)).suffix.lower() != ".parquet":
        raise UsageError(
            f"training set output {path}: use a .parquet file (the provenance lives in its metadata)"
        )
    options: dict[str, Any] = {"compression": "zstd", "row_group_size": 1 << 20, "write_statistics": True}
    if is_remote(path):
        try:
            (storage or Storage()).write_parquet(table.combine_chunks(), path, **options)
        except OSError as exc:
            if is_storage_failure(exc):
                raise storage_error(exc, f"write training set {path}") from exc
            raise
        return str(path)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table.combine_chunks(), tmp, **options)
    tmp.replace(out)
    return out


def _ts_literal(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))).isoformat()


def _time_filter(column: str, lo_us: int | None, hi_us: int) -> BooleanExpression:
    # PyIceberg's predicates are pydantic models whose generated signature mypy misreads.
    hi = LessThanOrEqual(column, _ts_literal(hi_us))  # type: ignore[call-arg, arg-type]
    if lo_us is None:
        return hi
    lo = GreaterThanOrEqual(column, _ts_literal(lo_us))  # type: ignore[call-arg, arg-type]
    return And(lo, hi)


@dataclass(frozen=True)
class _ViewPlan:
    """How one view is read: its key, time column and ttl (from the definitions, or a provenance's record)."""

    view: str
    features: list[str]
    join_keys: tuple[str, ...]
    timestamp_field: str
    ttl: timedelta | None
    declared: list[str]


def _plan(project: Project, req: _Request, prov: Provenance | None) -> _ViewPlan:
    if prov is None:
        fv = project.view(req.view)
        unknown = [f for f in req.features if f not in fv.fields]
        if unknown:
            raise UsageError(
                f"view {req.view!r} has no feature {', '.join(unknown)}: it defines {', '.join(fv.fields)}"
            )
        return _ViewPlan(
            req.view, req.features, tuple(fv.join_keys), fv.timestamp_field, fv.ttl, list(fv.fields)
        )
    # Rebuilding: what the set was built with wins over today's definitions (a ttl may have changed since).
    try:
        fv = project.view(req.view)
        declared = list(fv.fields)
    except UsageError:
        declared = list(req.features)
    return _ViewPlan(
        req.view,
        req.features,
        as_keys(prov.join_keys.get(req.view) or project.view(req.view).join_keys),
        prov.timestamp_fields.get(req.view) or project.view(req.view).timestamp_field,
        prov.ttl(req.view),
        declared,
    )


def build_training_set(
    project: Project,
    entities: EntitySource,
    features: Sequence[str] | str | None = None,
    *,
    service: str | None = None,
    as_of: AsOf = None,
    provenance: Provenance | pa.Table | dict[str, Any] | str | Path | None = None,
    full_feature_names: bool = False,
    timestamp_column: str = TIMESTAMP_COLUMN,
) -> TrainingSetResult:
    """The point-in-time correct training set for ``entities`` (see ``Featurelake.training_set``)."""
    started = time.perf_counter()
    prov_in: Provenance | None = None
    used_service: dict[str, Any] | None = None
    if service is not None:
        if features is not None or provenance is not None:
            raise UsageError(
                f"give either a feature service ({service}) or a feature list or provenance, not several"
            )
        features = project.definitions.service(service)
        version = applied_version(project.catalog, project.namespace, service, features, project.catalog_call)
        used_service = {"name": service, "version": version}
    if provenance is not None:
        if features is not None or as_of is not None:
            raise UsageError("give either a provenance to rebuild from, or features/as_of, not both")
        prov_in = Provenance.load(provenance)
        features = prov_in.features
        timestamp_column = prov_in.timestamp_column
        used_service = prov_in.service
    if features is None:
        raise UsageError(
            "no features requested: give features=['view:feature', ...], a feature service or a provenance"
        )
    requests, ordered = parse_features(features)
    requests, on_demand, hidden = _on_demand_requests(project, requests, prov_in)
    pinned: dict[str, int | None] | None = None
    if prov_in is not None:
        pinned = dict(prov_in.views)
    elif isinstance(as_of, Mapping):
        pinned = {str(k): (int(v) if v is not None else None) for k, v in as_of.items()}
        unknown = sorted(set(pinned) - {r.view for r in requests})
        if unknown:
            raise UsageError(
                f"as_of names snapshots for {', '.join(unknown)}, which no requested feature uses"
            )
    as_of_time = parse_timestamp(as_of, "as_of") if isinstance(as_of, datetime | str) else None

    table = load_entities(entities, project.storage)
    check_timestamps(table, timestamp_column)
    sha = fingerprint(table)
    if prov_in is not None and (sha != prov_in.entities_sha256 or table.num_rows != prov_in.entities_rows):
        raise UsageError(
            f"the entity frame ({table.num_rows} rows, sha256 {sha[:12]}...) is not the one this training set "
            f"was built from ({prov_in.entities_rows} rows, sha256 {prov_in.entities_sha256[:12]}...): rebuild "
            "with the original entity file"
        )
    t_us = micros(table.column(timestamp_column)) if table.num_rows else np.zeros(0, np.int64)
    hi_us = int(t_us.max()) if t_us.size else None
    lo_entity = int(t_us.min()) if t_us.size else None

    frames: list[ViewFrame] = []
    prov = Provenance(
        views={},
        features=[],
        entities_sha256=sha,
        entities_rows=table.num_rows,
        timestamp_column=timestamp_column,
        service=used_service,
    )
    names = set(table.column_names)
    work = table
    inputs: dict[str, str] = {}  # view:feature -> its column in the join's output (on-demand inputs)
    for req in requests:
        plan = _plan(project, req, prov_in)
        tbl = project.load_table(plan.view)
        sid = _snapshot_for(project, plan.view, tbl, as_of_time, pinned)
        lo_us = None
        if plan.ttl is not None and lo_entity is not None:
            lo_us = lo_entity - plan.ttl // timedelta(microseconds=1)
        data, parts = _read_view(project, plan, tbl, sid, lo_us, hi_us)
        out_names: list[str] = []
        for feat in plan.features:
            ref = f"{plan.view}:{feat}"
            if ref in hidden:  # read only as an input of an on-demand view: not an output column
                inputs[ref] = f"__featurelake_input_{len(frames)}_{len(out_names)}"
                out_names.append(inputs[ref])
                continue
            inputs[ref] = name = (prov_in.columns.get(ref) if prov_in else None) or (
                f"{plan.view}__{feat}" if full_feature_names else feat
            )
            if name in names:
                raise UsageError(
                    f"feature {ref} would be written as column {name!r}, which already exists (an entity column "
                    "or another view's feature): pass full_feature_names=True (CLI: --full-feature-names) to "
                    "name columns VIEW__FEATURE"
                )
            names.add(name)
            out_names.append(name)
            prov.features.append(ref)
            prov.columns[ref] = name
            prov.feature_types[ref] = _type_name(tbl, sid, feat, data.schema.field(feat).type)
        ekeys = []
        for j, key in enumerate(plan.join_keys):
            ekey = f"__featurelake_key_{len(frames)}" + (f"_{j}" if j else "")
            key_col = join_key_column(table, key, data.schema.field(key).type, plan.view)
            work = work.append_column(ekey, key_col)
            ekeys.append(ekey)
        frames.append(
            ViewFrame(
                name=plan.view,
                entity_key=tuple(ekeys),
                key=plan.join_keys,
                timestamp_field=plan.timestamp_field,
                features=tuple(plan.features),
                output_names=tuple(out_names),
                ttl=plan.ttl,
                data=data,
                tie_order=tuple(f for f in plan.declared if f in plan.features),
                parts=parts,
            )
        )
        prov.views[plan.view] = sid
        prov.ttl_seconds[plan.view] = plan.ttl.total_seconds() if plan.ttl is not None else None
        # One key column is recorded by name as always; a composite key as the list of its columns.
        prov.join_keys[plan.view] = list(plan.join_keys) if len(plan.join_keys) > 1 else plan.join_keys[0]
        prov.timestamp_fields[plan.view] = plan.timestamp_field
        prov.tables[plan.view] = project.table_name(plan.view)

    joined, stats = point_in_time_join(work, timestamp_column, frames)
    for odfv, feats in on_demand:
        joined = _compute_on_demand(
            odfv, feats, joined, table, inputs, names, prov, prov_in, full_feature_names
        )
    # Columns (and the provenance's lists) in the order the features were asked for, not grouped by view.
    prov.features = ordered
    prov.columns = {r: prov.columns[r] for r in ordered}
    prov.feature_types = {r: prov.feature_types[r] for r in ordered}
    joined = joined.select([*table.column_names, *prov.columns.values()])
    return TrainingSetResult(attach(joined, prov), prov, stats, time.perf_counter() - started)


def _on_demand_requests(
    project: Project, requests: list[_Request], prov_in: Provenance | None
) -> tuple[list[_Request], list[tuple[OnDemandFeatureView, list[str]]], set[str]]:
    """Split on-demand views off the requests; add their source views' features as hidden requests.

    Returns the view requests to join, the on-demand views with their requested fields, and the
    ``view:feature`` references read only as on-demand inputs (not output columns).
    """
    defs = project.definitions
    recorded = prov_in.on_demand if prov_in is not None else {}
    on_demand: list[tuple[OnDemandFeatureView, list[str]]] = []
    plain: dict[str, list[str]] = {}
    for req in requests:
        odfv = defs.on_demand.get(req.view)
        if odfv is None and req.view in recorded:
            raise UsageError(
                f"this training set computed on-demand feature view {req.view!r}, which features.py no longer "
                "defines: it cannot be rebuilt; restore the view's definition (its udf as it was) in features.py "
                "to rebuild it"
            )
        if odfv is None:
            plain.setdefault(req.view, []).extend(req.features)
            continue
        unknown = [f for f in req.features if f not in odfv.fields]
        if unknown:
            raise UsageError(
                f"on-demand feature view {odfv.name!r} has no feature {', '.join(unknown)}: it defines "
                f"{', '.join(odfv.fields)}"
            )
        if odfv.name in recorded and recorded[odfv.name].get("udf_sha256") != odfv.udf_sha256:
            raise UsageError(
                f"on-demand feature view {odfv.name!r} changed since this training set was built (its udf's "
                "source differs), so a rebuild would not give the same values; restore the udf, or build a "
                "new training set"
            )
        on_demand.append((odfv, list(req.features)))
    hidden: set[str] = set()
    for odfv, _ in on_demand:
        for ref in odfv.input_refs:
            view, _, feat = ref.partition(":")
            wanted = plain.setdefault(view, [])
            if feat not in wanted:
                wanted.append(feat)
                hidden.add(ref)
    return [_Request(v, fs) for v, fs in plain.items()], on_demand, hidden


def _compute_on_demand(
    odfv: OnDemandFeatureView,
    feats: list[str],
    joined: pa.Table,
    entities: pa.Table,
    inputs: Mapping[str, str],
    names: set[str],
    prov: Provenance,
    prov_in: Provenance | None,
    full_feature_names: bool,
) -> pa.Table:
    """Run ``odfv`` over the joined rows (request fields from the entity frame) and append ``feats``."""
    columns: dict[str, Any] = {}
    for ref in odfv.input_refs:
        columns[ref.partition(":")[2]] = joined.column(inputs[ref])
    missing = [f for f in odfv.request_fields if f not in entities.column_names]
    if missing:
        raise UsageError(
            f"on-demand feature view {odfv.name!r} needs request field(s) {', '.join(missing)}: in a training set "
            "they are columns of the entity frame; add them (one value per entity row)"
        )
    for f, type_ in odfv.request_fields.items():
        col = entities.column(f)
        try:
            columns[f] = col.cast(arrow_type(type_))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UsageError(
                f"entity column {f!r} is {col.type}, but on-demand feature view {odfv.name!r} declares request "
                f"field {f} as {type_} ({exc}); fix the column or the RequestSource"
            ) from None
    out = odfv.transform(pa.table(columns))
    for feat in feats:
        ref = f"{odfv.name}:{feat}"
        name = (prov_in.columns.get(ref) if prov_in else None) or (
            f"{odfv.name}__{feat}" if full_feature_names else feat
        )
        if name in names:
            raise UsageError(
                f"feature {ref} would be written as column {name!r}, which already exists (an entity column "
                "or another view's feature): pass full_feature_names=True (CLI: --full-feature-names) to "
                "name columns VIEW__FEATURE"
            )
        names.add(name)
        joined = joined.append_column(name, out.column(feat))
        prov.features.append(ref)
        prov.columns[ref] = name
        prov.feature_types[ref] = type_name(parse_type(odfv.fields[feat]))
    prov.on_demand[odfv.name] = odfv.describe()
    return joined


def _snapshot_for(
    project: Project, view: str, tbl: Table, as_of: datetime | None, pinned: Mapping[str, int | None] | None
) -> int | None:
    """The snapshot to read: pinned by the caller, main's as of a time, or main's current one."""
    if pinned is None:
        return resolve_snapshot(tbl, as_of=as_of)
    if view not in pinned:
        raise UsageError(
            f"as_of names snapshots for {', '.join(sorted(pinned)) or 'no view'} but not for {view!r}: "
            "give a snapshot for every requested view, or a timestamp"
        )
    sid = pinned[view]
    if sid is not None and tbl.metadata.snapshot_by_id(sid) is None:
        raise UsageError(
            f"snapshot {sid} of {project.table_name(view)} no longer exists (expired by maintenance, or never "
            "committed): this training set cannot be rebuilt. Snapshots bound to a registered model are tagged "
            f"and kept; others are not (see `featurelake history {view}`)"
        )
    return sid


def _read_view(
    project: Project, plan: _ViewPlan, tbl: Table, sid: int | None, lo_us: int | None, hi_us: int | None
) -> tuple[pa.Table, Iterator[pa.Table] | None]:
    """The view's key, time and requested features at ``sid``, pruned to the entity frame's time range; or,
    above ``engine.batch_rows`` rows, an empty table of their schema and the rows in parts of that size."""
    name = project.table_name(plan.view)
    columns = (*plan.join_keys, plan.timestamp_field, *plan.features)
    if sid is None or hi_us is None:
        scan = tbl.scan(selected_fields=columns)
    else:
        scan = tbl.scan(
            row_filter=_time_filter(plan.timestamp_field, lo_us, hi_us),
            selected_fields=columns,
            snapshot_id=sid,
        )
    try:
        projection = scan.projection()
    except ValueError as exc:
        at = f" at snapshot {sid}" if sid is not None else ""
        raise UsageError(
            f"{name}{at} cannot provide {', '.join(plan.features)}: {exc} (was a feature added later, or the "
            "view's key renamed?): read a later snapshot (as_of), or leave those features out of the request"
        ) from None
    if sid is None or hi_us is None:
        return projection.as_arrow().empty_table(), None
    batch_rows = project.config.settings.engine.batch_rows
    tasks = project.catalog_call(
        lambda: list(scan.plan_files()), f"plan the read of {name} at snapshot {sid}"
    )
    if sum(t.file.record_count for t in tasks) <= batch_rows:
        return project.catalog_call(lambda: read_scan(scan, tasks), f"read {name} at snapshot {sid}"), None
    # Bounded memory: the rows in parts of about batch_rows (whole record batches), joined one at a time.
    reader = stream_scan(scan, tasks)
    return reader.schema.empty_table(), _parts(reader, batch_rows)


def _parts(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """``reader``'s batches gathered into tables of at least ``rows`` rows (the last one may be smaller)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        pending.append(batch)
        size += batch.num_rows
        if size >= rows:
            yield pa.Table.from_batches(pending, schema=reader.schema)
            pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending, schema=reader.schema)


def _type_name(tbl: Table, sid: int | None, column: str, arrow_type: pa.DataType) -> str:
    schema = tbl.schema()
    snap = tbl.metadata.snapshot_by_id(sid) if sid is not None else None
    if snap is not None and snap.schema_id is not None:
        schema = tbl.metadata.schema_by_id(snap.schema_id) or schema
    try:
        return type_name(schema.find_field(column).field_type)
    except ValueError:
        return str(arrow_type)
