"""``featurelake training-set``: a point-in-time correct training set, written to Parquet with provenance."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx
from featurelake.errors import UsageError
from featurelake.lakehouse.storage import same_location, writing


def _snapshots(values: tuple[str, ...]) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for raw in values:
        view, sep, sid = raw.partition("=")
        if not sep or not view or not sid.strip().lstrip("-").isdigit():
            raise UsageError(
                f"--snapshot {raw!r} must be VIEW=SNAPSHOT_ID, e.g. user_features=4628646384624648152"
            )
        out[view.strip()] = int(sid)
    return out


def _refuse_overwriting_inputs(output: str, inputs: dict[str, str | Path | None]) -> None:
    """--output must not name an input file, however it is spelled (relative, via a symlink, a hard link)."""
    for option, value in inputs.items():
        if value is not None and same_location(output, value):
            raise UsageError(
                f"--output {output} is the same file as {option} {value}: writing the training set would "
                "replace its own input; give another --output"
            )


@click.command("training-set")
@click.option(
    "--entities",
    required=True,
    help="Parquet or CSV file (a path or a URL such as s3://…): the views' join keys, event_timestamp (with "
    "time zone) and any label columns.",
)
@click.option(
    "--features", default=None, help="Comma-separated VIEW:FEATURE list, e.g. user_features:amount_avg_1d."
)
@click.option(
    "--service",
    default=None,
    help="An applied feature service: its features, in its order (instead of --features).",
)
@click.option("--as-of", default=None, help="Read each view at main as of this time (ISO, UTC if no offset).")
@click.option("--snapshot", "snapshots", multiple=True, help="Read VIEW at a snapshot: VIEW=ID (repeatable).")
@click.option(
    "--from-provenance",
    "provenance",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rebuild a previous training set exactly (its .parquet file or provenance .json).",
)
@click.option("--full-feature-names", is_flag=True, help="Name feature columns VIEW__FEATURE.")
@click.option(
    "--output",
    required=True,
    help="Output .parquet file (a path or a URL such as s3://bucket/train.parquet).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def training_set(
    c: Ctx,
    entities: str,
    features: str | None,
    service: str | None,
    as_of: str | None,
    snapshots: tuple[str, ...],
    provenance: Path | None,
    full_feature_names: bool,
    output: str,
    as_json: bool,
) -> None:
    """Join features point in time onto ENTITIES and write them with their provenance to OUTPUT."""
    from featurelake.training import build_training_set, write_training_set

    if Path(output).suffix.lower() != ".parquet":
        raise UsageError(f"--output {output}: use a .parquet file (the provenance lives in its metadata)")
    _refuse_overwriting_inputs(output, {"--entities": entities, "--from-provenance": provenance})
    pinned = _snapshots(snapshots)
    if pinned is not None and as_of is not None:
        raise UsageError("give either --as-of or --snapshot, not both")
    if provenance is not None and (features or service or as_of or pinned):
        raise UsageError(
            "--from-provenance already fixes features and snapshots: drop --features/--service/--as-of/--snapshot"
        )
    if features and service:
        raise UsageError("give either --features or --service, not both")
    if provenance is None and not features and not service:
        raise UsageError(
            "give --features VIEW:FEATURE,... or --service NAME (or --from-provenance F to rebuild a training set)"
        )
    result = build_training_set(
        c.fl.project,
        entities if "://" in entities else Path(entities),
        features,
        service=service,
        as_of=pinned if pinned is not None else as_of,
        provenance=provenance,
        full_feature_names=full_feature_names,
    )
    with writing(output, "write the training set"):
        write_training_set(result.table, output, c.fl.project.storage)
    if as_json:
        render.print_json({"output": str(output), **result.summary()})
        return
    svc = result.provenance.service
    served = f", feature service {svc['name']} v{svc['version']}" if svc else ""
    t = RichTable(
        title=f"training set {output} ({result.table.num_rows} rows{served}, {result.seconds:.2f}s)"
    )
    for col in ("view", "snapshot", "features", "rows matched", "too old (ttl)", "ties resolved"):
        t.add_column(col, overflow="fold")
    refs = result.provenance.feature_refs()
    for view, sid in result.provenance.views.items():
        t.add_row(
            view,
            str(sid),
            ", ".join(r.column for r in refs if r.view == view),
            str(result.stats.matched.get(view, 0)),
            str(result.stats.outside_ttl.get(view, 0)),
            str(result.stats.ties.get(view, 0)),
        )
    for odfv in result.provenance.on_demand:
        cols = ", ".join(r.column for r in refs if r.view == odfv)
        t.add_row(odfv, "on demand", cols, "-", "-", "-")
    render.out.print(t)
    render.out.print(
        f"entities sha256 {result.provenance.entities_sha256}; provenance in {output}'s schema metadata"
    )
