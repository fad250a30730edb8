"""``featurelake models …``: register, list, show, promote, alias and history of registered models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx, progress
from featurelake.errors import UsageError
from featurelake.registry.records import BUMPS, FLAVORS, Event, ModelRef, ModelVersion, Stage


def _pairs(values: tuple[str, ...], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{what} {raw!r} must be KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _version_lines(mv: ModelVersion, tags_present: dict[str, bool] | None) -> list[str]:
    lines = [
        f"[bold]{mv.name} {mv.version}[/]  stage [bold]{mv.stage.value}[/]"
        + (f"  aliases {', '.join(mv.aliases)}" if mv.aliases else ""),
        f"  flavor {mv.flavor}; artifact {mv.artifact_key} ({mv.artifact_size} bytes, from {mv.artifact_name})",
        f"  created {mv.created_at:%Y-%m-%d %H:%M:%S} UTC by {mv.created_by}; run {mv.run_id}; code {mv.code_version}",
    ]
    if mv.description:
        lines.append(f"  {mv.description}")
    if mv.metrics:
        lines.append("  metrics " + ", ".join(f"{k}={v:g}" for k, v in mv.metrics.items()))
    if mv.params:
        lines.append("  params " + ", ".join(f"{k}={v}" for k, v in mv.params.items()))
    if mv.training_set:
        ts = mv.training_set
        views = ", ".join(f"{v}@{s}" for v, s in ts.get("views", {}).items())
        lines.append(
            f"  trained on {views} ({ts.get('entities_rows')} entity rows, sha256 "
            f"{str(ts.get('entities_sha256'))[:16]}...)"
        )
    if mv.signature:
        lines.append(
            "  inputs "
            + ", ".join(
                f"{f.name}:{f.type}" + (f" (missing -> {f.default})" if f.default is not None else "")
                for f in mv.signature
            )
        )
    for rec in mv.snapshot_tags:
        key = f"{rec['table']}:{rec['tag']}"
        state = "released" if mv.tags_released else "kept"
        if tags_present is not None and not mv.tags_released:
            state = "kept" if tags_present.get(key) else "[red]MISSING[/]"
        lines.append(f"  snapshot {rec['snapshot_id']} of {rec['table']} tagged {rec['tag']} ({state})")
    return lines


def _history_table(name: str, rows: list[Event]) -> RichTable:
    t = RichTable(title=f"history of model {name} (oldest first)")
    for col in ("at (UTC)", "version", "change", "user", "outcome", "reason / detail"):
        t.add_column(col, overflow="fold")
    for e in rows:
        if e.kind == "alias":
            change = f"alias {e.alias}"
        elif e.kind == "register":
            change = "registered"
        elif e.kind == "verify":
            change = "verified"
        else:
            change = f"{e.from_stage} -> {e.to_stage}"
        colour = {"applied": "green", "identical": "green", "rejected": "yellow"}.get(e.outcome, "red")
        note = " / ".join(x for x in (e.reason, e.detail) if x)
        t.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.version or "",
            change,
            e.user,
            f"[{colour}]{e.outcome}[/]",
            note,
        )
    return t


@click.group()
def models() -> None:
    """The model registry: versions, stages, aliases and their lineage."""


@models.command("register")
@click.argument("name")
@click.option(
    "--artifact",
    required=True,
    help="The model file (a local path or a URL such as s3://…); stored by its SHA-256.",
)
@click.option("--flavor", required=True, type=click.Choice(FLAVORS), help="How the artifact is loaded.")
@click.option(
    "--training-set",
    "training_set",
    default=None,
    help="The training set Parquet, a path or a URL (its provenance binds the model to the feature snapshots).",
)
@click.option(
    "--service",
    default=None,
    help="An applied feature service the model reads: its features are the model's inputs (the version "
    "records the service's name and version).",
)
@click.option(
    "--output",
    "output",
    default=None,
    help="label,proba: a classifier writing its predicted class to prediction and one proba_<class> column "
    "per class (default: one number per row).",
)
@click.option("--bump", type=click.Choice(BUMPS), default="patch", show_default=True)
@click.option("--version", "version", default=None, help="Explicit version (must be higher than the latest).")
@click.option("--metric", "metrics", multiple=True, help="KEY=NUMBER (repeatable).")
@click.option("--param", "params", multiple=True, help="KEY=VALUE (repeatable; JSON values allowed).")
@click.option(
    "--default",
    "defaults",
    multiple=True,
    help="INPUT=VALUE: what a missing input was filled with (repeatable).",
)
@click.option("--description", default="")
@click.option("--run-id", default=None, help="The training run's id (default: generated).")
@click.option(
    "--verify",
    is_flag=True,
    help="Also load the model in a subprocess with CPU and memory limits and score a sample of the training "
    "set; records the output's shape and type.",
)
@click.option(
    "--no-store-entities",
    "no_store_entities",
    is_flag=True,
    help="Keep the training set's entity frame (keys, times, labels) out of the registry, for data that must "
    "not be copied; `models reproduce` then asks for it with --entities.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def register(
    c: Ctx,
    name: str,
    artifact: str,
    flavor: str,
    training_set: str | None,
    service: str | None,
    output: str | None,
    bump: str,
    version: str | None,
    metrics: tuple[str, ...],
    params: tuple[str, ...],
    defaults: tuple[str, ...],
    description: str,
    run_id: str | None,
    verify: bool,
    no_store_entities: bool,
    as_json: bool,
) -> None:
    """Register a new version of model NAME (1.0.0 first, then bumped). The artifact is checked first,
    without running it: a pickle's opcodes (and the modules it imports), an ONNX graph and its inputs, a
    TorchScript archive's entries."""
    mv = c.fl.models.register(
        name,
        artifact,
        flavor,
        training_set=Path(training_set) if training_set and "://" not in training_set else training_set,
        metrics=_pairs(metrics, "metric"),
        params=_pairs(params, "param"),
        defaults=_pairs(defaults, "default"),
        bump=bump,
        version=version,
        description=description,
        run_id=run_id,
        verify=verify,
        store_entities=not no_store_entities,
        service=service,
        output=output,
    )
    if as_json:
        render.print_json(mv.to_dict())
        return
    render.out.print(f"[green]registered[/] {mv.name} {mv.version}")
    for line in _artifact_lines(mv):
        render.out.print(line)
    for line in _version_lines(mv, None)[1:]:
        render.out.print(line)
    for line in _reproduction_lines(c.fl.models, mv, verified=False):
        render.out.print(line)


def _artifact_lines(mv: Any) -> list[str]:
    """What checking the artifact found: a pickle's imports (warning on those that can run commands), the
    verified output."""
    found = mv.params.get("featurelake.artifact") or {}
    lines = []
    if found.get("imports") is not None:
        lines.append(f"pickle imports: {', '.join(found['imports']) or 'none'}")
    if found.get("dangerous_imports"):
        lines.append(
            f"[yellow]warning:[/] the pickle imports {', '.join(found['dangerous_imports'])}, which can run "
            "commands when it is loaded: register it only if you trust its author"
        )
    if found.get("inputs"):
        lines.append(f"onnx inputs: {'; '.join(found['inputs'])}")
    verified = found.get("verified")
    if verified:
        lines.append(
            f"verified: {verified['rows']} rows -> {verified['output_kind']} {verified['output_dtype']} "
            f"shape {verified['output_shape']}, range [{verified['min']}, {verified['max']}]"
        )
    return lines


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def list_models(c: Ctx, as_json: bool) -> None:
    """Registered models with their latest, Production and Staging versions."""
    rows = c.fl.models.list_models()
    if as_json:
        render.print_json([m.to_dict() for m in rows])
        return
    t = RichTable(title="registered models")
    for col in ("model", "versions", "latest", "production", "staging", "aliases"):
        t.add_column(col)
    for m in rows:
        t.add_row(
            m.name,
            str(m.versions),
            m.latest or "",
            m.production or "",
            ", ".join(m.staging),
            ", ".join(f"{a}->{v}" for a, v in m.aliases.items()),
        )
    render.out.print(t)


@models.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def show(c: Ctx, ref: str, as_json: bool) -> None:
    """A model's versions (NAME), or one version in full (NAME@VERSION, @production, @staging, @latest, @alias)."""
    reg = c.fl.models
    if "@" not in ref:
        ModelRef.parse(ref)
        all_versions = reg.versions(ref)
        verified = {e.version: e for e in reg.history(ref) if e.kind == "verify"}  # the last one wins
        if as_json:
            render.print_json(
                {
                    "name": ref,
                    "versions": [
                        {
                            **v.to_dict(),
                            "last_verification": verified[v.version].to_dict()
                            if v.version in verified
                            else None,
                        }
                        for v in all_versions
                    ],
                }
            )
            return
        t = RichTable(title=f"model {ref}")
        for col in (
            "version", "stage", "aliases", "flavor", "created (UTC)", "by", "metrics", "trained on", "verified"
        ):  # fmt: skip
            t.add_column(col, overflow="fold")
        for v in all_versions:
            t.add_row(
                v.version,
                v.stage.value,
                ", ".join(v.aliases),
                v.flavor,
                v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                v.created_by,
                ", ".join(f"{k}={x:g}" for k, x in v.metrics.items()),
                ", ".join(f"{view}@{sid}" for view, sid in v.snapshots.items()),
                f"{verified[v.version].outcome} {verified[v.version].at:%Y-%m-%d}"
                if v.version in verified
                else "",
            )
        render.out.print(t)
        return
    mv = reg.resolve(ref)
    present = reg.pins.present(mv.snapshot_tags) if reg.pins is not None and mv.snapshot_tags else {}
    if as_json:
        record, checked = reg.training_record(mv), reg.last_verification(mv)
        render.print_json(
            {
                **mv.to_dict(),
                "snapshot_tags_present": present,
                "training_record": record.to_dict() if record else None,
                "last_verification": checked.to_dict() if checked else None,
            }
        )
        return
    for line in _version_lines(mv, present):
        render.out.print(line)
    for line in _reproduction_lines(reg, mv, verified=True):
        render.out.print(line)


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.argument("stage")
@click.option(
    "--force", is_flag=True, help="Allow a transition the lifecycle does not (e.g. Archived -> Production)."
)
@click.option("--reason", default="", help="Why (kept in the history).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def promote(c: Ctx, name: str, version: str, stage: str, force: bool, reason: str, as_json: bool) -> None:
    """Move VERSION of NAME to STAGE (None, Staging, Production, Archived)."""
    result = c.fl.models.promote(name, version, Stage.parse(stage), force=force, reason=reason)
    if as_json:
        render.print_json(result.to_dict())
        return
    mv = result.version
    render.out.print(f"[green]{mv.name} {mv.version} is now in {mv.stage.value}[/]")
    for v in result.archived:
        if v != mv.version:
            render.out.print(f"{mv.name} {v} archived (replaced in Production)")
    for note in result.notes:
        render.out.print(f"[dim]note: {note}[/]")


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", required=False)
@click.option("--delete", is_flag=True, help="Remove the alias instead of setting it.")
@click.option("--reason", default="")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def alias(
    c: Ctx, name: str, alias: str, version: str | None, delete: bool, reason: str, as_json: bool
) -> None:
    """Point ALIAS of NAME (champion, challenger, ...) at VERSION, or --delete it."""
    reg = c.fl.models
    if delete:
        if version is not None:
            raise UsageError(
                f"--delete takes no VERSION: to remove alias {alias} of {name}, run "
                f"`featurelake models alias {name} {alias} --delete`"
            )
        old = reg.delete_alias(name, alias, reason=reason)
        if as_json:
            render.print_json({"name": name, "alias": alias, "deleted": True, "was": old})
        else:
            render.out.print(f"removed alias {alias} of {name} (was {old})")
        return
    if version is None:
        raise UsageError(
            f"give the version {alias} should point at: featurelake models alias {name} {alias} VERSION"
        )
    mv = reg.set_alias(name, alias, version, reason=reason)
    if as_json:
        render.print_json({"name": name, "alias": alias, "version": mv.version})
    else:
        render.out.print(f"{name}@{alias} -> {mv.version}")


@models.command("history")
@click.argument("name")
@click.option("--version", "version", default=None, help="Only this version's events.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def history(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """Registrations, stage transitions (with refused and lost attempts) and alias changes of NAME."""
    rows = c.fl.models.history(name, version)
    if as_json:
        render.print_json([e.to_dict() for e in rows])
        return
    render.out.print(_history_table(name, rows))


# --- reproducing training sets --------------------------------------------------------------------------
def _reproduction_lines(reg: Any, mv: ModelVersion, *, verified: bool) -> list[str]:
    """What the registry holds to rebuild the version's training set, and its last verification."""
    from featurelake.registry.training_record import describe

    if not mv.training_set:
        return []
    record = reg.training_record(mv)
    if record is None:
        return [
            "  training set not recorded (registered with only its provenance): `models reproduce` cannot run"
        ]
    lines = [f"  {describe(record)}"]
    if verified:
        last = reg.last_verification(mv)
        if last is None:
            lines.append(f"  never verified (`featurelake models verify {mv.ref}`)")
        else:
            colour = "green" if last.outcome == "identical" else "red"
            lines.append(
                f"  last verified {last.at:%Y-%m-%d %H:%M:%S} UTC by {last.user}: [{colour}]{last.outcome}[/]"
                + ("" if last.outcome == "identical" else f" ({last.detail})")
            )
    return lines


def _check_output(output: str | None) -> None:
    if output is not None and Path(output.split("?")[0]).suffix.lower() != ".parquet":
        raise UsageError(f"--output {output}: use a .parquet file (the provenance lives in its metadata)")


@models.command("reproduce")
@click.argument("ref")
@click.option(
    "--entities",
    default=None,
    help="The entity frame (Parquet or CSV, a path or a URL) of a version registered with --no-store-entities.",
)
@click.option(
    "--output", default=None, help="Write the rebuilt training set here (.parquet, a path or a URL)."
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def reproduce(c: Ctx, ref: str, entities: str | None, output: str | None, as_json: bool) -> None:
    """Rebuild the training set of REF (NAME@VERSION, @production, @alias, ...) from the registry alone and
    check its SHA-256: exit 0 and "identical", or exit 1 naming what differs."""
    import sys

    from featurelake.registry.reproduce import write_output

    _check_output(output)
    reg = c.fl.models
    source: str | Path | None = entities if entities is None or "://" in entities else Path(entities)
    with progress(not as_json) as update:
        if update:
            update(f"rebuilding the training set of {ref}")
        result = reg.reproduce(ref, entities=source)
    written = None
    if output is not None and result.table is not None:
        written = write_output(result.table, output, c.fl.project)
    if as_json:
        render.print_json({**result.to_dict(), "output": str(written) if written else None})
    elif result.identical:
        render.out.print(
            f"model {result.model} {result.version}: [green]identical[/]: {result.detail(full=True)}",
            soft_wrap=True,
        )
        render.out.print(f"  entity frame from {result.entities}; {result.seconds:.2f}s", soft_wrap=True)
    else:
        render.out.print(f"model {result.model} {result.version}: [red]different[/]")
        for line in result.differences:
            render.out.print(f"  {line}", soft_wrap=True)
    if written and not as_json:
        render.out.print(f"wrote {written}" + ("" if result.identical else " (the rebuilt, differing set)"))
    if not result.identical:
        print(f"error: {result.summary()}", file=sys.stderr)
        sys.exit(1)


@models.command("verify")
@click.argument("ref", required=False)
@click.option("--all", "all_versions", is_flag=True, help="Every version of every model.")
@click.option(
    "--entities",
    default=None,
    help="The entity frame of one version registered with --no-store-entities (give REF as NAME@VERSION).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def verify(c: Ctx, ref: str | None, all_versions: bool, entities: str | None, as_json: bool) -> None:
    """Rebuild and check the training sets of REF (NAME@REF; NAME: each version) or --all, recording each
    outcome in the model's history; exit 1 if any differs or cannot be rebuilt."""
    import sys

    source: str | Path | None = entities if entities is None or "://" in entities else Path(entities)
    with progress(not as_json) as update:
        if update:
            update("rebuilding training sets")
        results = c.fl.models.verify(ref, all_versions=all_versions, entities=source)
    if as_json:
        render.print_json([r.to_dict() for r in results])
    else:
        t = RichTable(title="training sets rebuilt from the registry")
        for col in ("model", "version", "outcome", "detail"):
            t.add_column(col, overflow="fold")
        colours = {"identical": "green", "skipped": "yellow"}
        for r in results:
            t.add_row(r.model, r.version, f"[{colours.get(r.outcome, 'red')}]{r.outcome}[/]", r.detail)
        render.out.print(t)
        if not results:
            render.out.print("no registered versions")
    failed = [r for r in results if r.failed]
    for r in failed:
        line = r.detail if r.outcome == "error" else f"model {r.model} {r.version}: {r.outcome}: {r.detail}"
        print(f"error: {line}", file=sys.stderr)
    if failed:
        sys.exit(1)
