"""Turning a ``predict`` request into a checked plan, before any row is read or written.

Everything that can be refused is refused here, cheapest first: the arguments, the model reference (no
Production version, unknown alias), the view and its snapshot, the model's features against the view's
columns (all missing ones named), ``--where``, the output table and run id, and only then the artifact
(digest re-checked, pickles refused when disallowed, the flavor's runtime imported with an install hint) and
the input types the flavor takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError

from featurelake.errors import UsageError
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.history import resolve_snapshot
from featurelake.lakehouse.schema import type_name
from featurelake.lakehouse.window import parse_timestamp
from featurelake.prediction.features import FeatureSelection
from featurelake.prediction.flavors import ModelFlavor, load_model, model_info
from featurelake.prediction.flavors.base import proba_column
from featurelake.prediction.inputs import NAN_POLICIES, InputBinding, match_inputs
from featurelake.prediction.table import check_existing, predictions_schema, table_identifier
from featurelake.prediction.where import bind_where, check_where
from featurelake.registry.records import ModelRef

if TYPE_CHECKING:
    from pyiceberg.schema import Schema

    from featurelake.prediction.request import PredictRequest
    from featurelake.project import Project
    from featurelake.registry import ModelRegistry, ModelVersion


@dataclass
class PredictionPlan:
    """A checked request: the model loaded, the view's snapshot chosen, inputs bound, output known."""

    model: ModelVersion
    flavor: ModelFlavor
    view: str
    feature_table: str
    snapshot_id: int
    selection: FeatureSelection
    binding: InputBinding
    output: str
    output_schema: Schema
    run_id: str
    predicted_at: datetime
    nan_policy: str


def _check_batch_inputs(project: Project, mv: ModelVersion) -> None:
    """Refuse, naming them, inputs batch prediction cannot read: on-demand features, several views' rows."""
    refs = [f.feature for f in mv.signature if f.feature and ":" in f.feature]
    on_demand = sorted(
        {r.partition(":")[0] for r in refs if r.partition(":")[0] in project.definitions.on_demand}
    )
    if on_demand:
        raise UsageError(
            f"model {mv.name} {mv.version} reads on-demand feature view(s) {', '.join(on_demand)}, which are "
            "computed when a request asks for them (request data included), not stored: score it online with "
            f"POST /predict/{mv.name}, or train a model on stored features for batch prediction"
        )
    service = mv.params.get("featurelake.service")
    views = sorted({r.partition(":")[0] for r in refs})
    if isinstance(service, dict) and len(views) > 1:
        raise UsageError(
            f"model {mv.name} {mv.version} reads feature service {service.get('name')} (version "
            f"{service.get('version')}), whose features come from views {', '.join(views)}; batch prediction "
            f"scores the rows of one view: score it online with POST /predict/{mv.name}, or register a model "
            "on a service of one view"
        )


def _infer_view(mv: ModelVersion) -> str:
    views = list(
        dict.fromkeys(f.feature.split(":", 1)[0] for f in mv.signature if f.feature and ":" in f.feature)
    )
    if len(views) == 1:
        return views[0]
    found = f"its features come from {', '.join(views)}" if views else "no view is recorded in its signature"
    raise UsageError(f"model {mv.name} {mv.version}: give --view VIEW ({found})")


def plan_prediction(project: Project, registry: ModelRegistry, req: PredictRequest) -> PredictionPlan:
    """Check ``req`` completely and load the model; raises before anything is written."""
    settings = project.config.settings
    run_id = lineage.check_run_id(req.run_id or lineage.new_run_id())
    nan_policy = req.nan_policy or settings.prediction.nan_policy
    if nan_policy not in NAN_POLICIES:
        raise UsageError(f"--nan-policy {nan_policy!r}: use one of {', '.join(NAN_POLICIES)}")
    if (req.start is None) != (req.end is None):
        raise UsageError("give both --start and --end to score every row of a window, or neither")
    start = parse_timestamp(req.start, "--start") if req.start is not None else None
    end = parse_timestamp(req.end, "--end") if req.end is not None else None
    if start is not None and end is not None and start >= end:
        raise UsageError(f"empty window: --start {start.isoformat()} must be before --end {end.isoformat()}")
    if req.max_age is not None and start is not None:
        raise UsageError(
            "--max-age drops entities whose latest row is stale; with --start/--end every row of the window is "
            "scored: give one or the other"
        )
    if req.as_of is not None and req.snapshot_id is not None:
        raise UsageError("give either --as-of or --snapshot, not both")
    as_of = parse_timestamp(req.as_of, "--as-of") if req.as_of is not None else None
    max_age = req.age_limit
    predicted_at = datetime.now(UTC)

    mv = registry.resolve(ModelRef.parse(req.model))  # NotFoundError: no Production version, unknown alias...
    _check_batch_inputs(project, mv)
    view_name = req.view or _infer_view(mv)
    fv = project.view(view_name)
    tbl = project.load_table(view_name)
    sid = resolve_snapshot(tbl, as_of=as_of, snapshot_id=req.snapshot_id)
    if sid is None:
        raise UsageError(
            f"{project.table_name(view_name)} has no snapshot: run `featurelake apply` and a backfill"
        )
    schema = tbl.scan(snapshot_id=sid).projection()
    column_types = {f.name: type_name(f.field_type) for f in schema.fields}
    info = model_info(mv)
    keys = fv.join_keys
    bound = match_inputs(info, view_name, keys, column_types)

    where: str | None = None
    where_cols: list[str] = []
    if req.where is not None:
        where, where_cols = check_where(req.where, list(column_types))
    columns = list(dict.fromkeys([*(b.column for b in bound), *where_cols]))
    columns = [c for c in columns if c not in (*keys, fv.timestamp_field)]
    if where is not None:
        read = [*keys, fv.timestamp_field, *columns]
        arrow: pa.Schema = schema.as_arrow()
        bind_where(where, pa.schema([arrow.field(c) for c in read]), view_name)

    ident = table_identifier(mv.name, req.output)
    out_schema = predictions_schema(keys, [schema.find_field(k).field_type for k in keys], fv.timestamp_field)
    try:
        existing: Any = project.catalog.load_table(ident)
    except NoSuchTableError:
        existing = None
    if existing is not None:
        check_existing(existing, ident, out_schema)
        if (where_run := wap.find_run(existing, run_id)) is not None:
            raise UsageError(
                f"run id {run_id} already exists in {ident} ({where_run}): pass a new --run-id or omit it"
            )

    flavor = load_model(registry, mv, allow_pickle=settings.registry.allow_pickle)
    try:
        binding = InputBinding.bind(flavor, bound, view_name, keys, nan_policy)
        if (
            flavor.classes is not None
        ):  # --output label,proba: a probability column per class beside the label
            key_types = [schema.find_field(k).field_type for k in keys]
            probas = [proba_column(c) for c in flavor.classes]
            out_schema = predictions_schema(keys, key_types, fv.timestamp_field, probas)
            if existing is not None:
                check_existing(existing, ident, out_schema)
    except BaseException:
        flavor.close()
        raise
    cutoff = None
    if max_age is not None:
        cutoff = (as_of or predicted_at) - max_age
    selection = FeatureSelection(
        snapshot_id=sid,
        keys=tuple(keys),
        timestamp=fv.timestamp_field,
        columns=columns,
        start=start,
        end=end,
        min_event_ts=cutoff,
        where=where,
    )
    return PredictionPlan(
        model=mv,
        flavor=flavor,
        view=view_name,
        feature_table=project.table_name(view_name),
        snapshot_id=sid,
        selection=selection,
        binding=binding,
        output=ident,
        output_schema=out_schema,
        run_id=run_id,
        predicted_at=predicted_at,
        nan_policy=nan_policy,
    )


__all__ = ["PredictionPlan", "plan_prediction"]
