"""Rebuild a registered version's training set from the registry alone, and check it is the same one.

``reproduce(reg, "fraud@1.2.0")`` takes the version's provenance (snapshots, features, ttl, keys) and its
stored entity frame (``training_record``; or the file given with ``entities=`` for a version registered with
``--no-store-entities``, checked against the provenance's ``entities_sha256``), rebuilds the training set with
``training.build_training_set`` at the bound snapshots, and compares its SHA-256 (``training.digest``) with
the one recorded at registration. A difference is never silent: the result names the rows, the columns and
the first differing row and column. A bound snapshot that is gone is a ``ReproductionError`` naming the tag
that should have kept it.

``verify`` does the same for one version, a model's versions or every version, and records each outcome
(``identical``, ``different``, ``error``) as a ``verify`` event in the model's history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.table.refs import SnapshotRefType

from featurelake.errors import (
    ArtifactIntegrityError,
    FeaturelakeError,
    ReproductionError,
    UsageError,
)
from featurelake.lakehouse import lineage
from featurelake.registry import training_record
from featurelake.registry.records import Event, ModelRef, ModelVersion, check_model_name, now, tag_name
from featurelake.registry.training_record import TrainingRecord
from featurelake.training.build import build_training_set, write_training_set
from featurelake.training.digest import compare, table_digest
from featurelake.training.entities import fingerprint, load_entities
from featurelake.training.provenance import Provenance

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.registry.handle import RegistryHandle

#: Outcomes recorded in the history (``kind="verify"``); ``skipped`` versions are reported, not recorded.
OUTCOMES = ("identical", "different", "error")


@dataclass
class Reproduction:
    """A rebuilt training set and how it compares with the one the version was registered with."""

    model: str
    version: str
    identical: bool
    recorded_sha256: str
    rebuilt_sha256: str
    rows: int
    columns: list[str]
    snapshots: dict[str, int | None]
    entities: str
    """Where the entity frame came from: ``registry <key>`` or the file given."""
    differences: list[str] = field(default_factory=list)
    first_row: int | None = None
    first_column: str | None = None
    seconds: float = 0.0
    table: pa.Table | None = field(default=None, repr=False)
    """The rebuilt training set (its provenance in the schema metadata): write it with write_training_set."""

    @property
    def what(self) -> str:
        return f"model {self.model} {self.version}"

    @property
    def outcome(self) -> str:
        return "identical" if self.identical else "different"

    def detail(self, *, full: bool = False) -> str:
        """What was rebuilt (identical), or what differs; ``full`` spells out the whole SHA-256."""
        rebuilt = self.rebuilt_sha256 if full else f"{self.rebuilt_sha256[:16]}..."
        if self.identical:
            return (
                f"rebuilt {self.rows} rows x {len(self.columns)} columns from {_snapshots(self.snapshots)}; "
                f"sha256 {rebuilt}"
            )
        return (
            f"the rebuilt training set is not the one it was registered with (sha256 recorded "
            f"{self.recorded_sha256[:16]}..., rebuilt {rebuilt}): " + "; ".join(self.differences)
        )

    def summary(self) -> str:
        return f"{self.what}: {self.outcome}: {self.detail(full=True)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "identical": self.identical,
            "recorded_sha256": self.recorded_sha256,
            "rebuilt_sha256": self.rebuilt_sha256,
            "rows": self.rows,
            "columns": list(self.columns),
            "snapshots": dict(self.snapshots),
            "entities": self.entities,
            "differences": list(self.differences),
            "first_row": self.first_row,
            "first_column": self.first_column,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Verification:
    """One version's re-check: ``identical``, ``different``, ``error`` (recorded) or ``skipped`` (not)."""

    model: str
    version: str
    outcome: str
    detail: str
    at: datetime
    reproduction: Reproduction | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in ("different", "error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "outcome": self.outcome,
            "detail": self.detail,
            "at": self.at.isoformat(),
            "reproduction": self.reproduction.to_dict() if self.reproduction else None,
        }


def _snapshots(views: dict[str, int | None]) -> str:
    return ", ".join(f"{v}@{s}" for v, s in views.items()) or "no view"


def _project(reg: RegistryHandle, what: str) -> Project:
    if reg.pins is None:
        raise UsageError(
            f"rebuilding the training set of {what} needs the project's catalog: open the registry through "
            "featurelake.open(dir).models"
        )
    return reg.pins.project


def training_record_of(reg: RegistryHandle, mv: ModelVersion) -> TrainingRecord | None:
    with reg._read() as conn:
        return training_record.load(conn, mv.name, mv.version)


def _record(reg: RegistryHandle, mv: ModelVersion, what: str) -> TrainingRecord:
    if not mv.training_set:
        raise UsageError(
            f"{what} was registered without a training set: there is nothing to rebuild (register a version with "
            "--training-set to bind it to its data)"
        )
    rec = training_record_of(reg, mv)
    if rec is None:
        raise UsageError(
            f"{what} has a provenance but no recorded training set (it was registered with only its provenance, "
            "or by a featurelake older than `models reproduce`): rebuild it with `featurelake training-set "
            "--entities F --from-provenance ...`, or register the model again with the training set's Parquet"
        )
    return rec


def _entities(
    reg: RegistryHandle,
    mv: ModelVersion,
    rec: TrainingRecord,
    prov: Provenance,
    entities: Any,
    project: Project,
    what: str,
) -> tuple[pa.Table, pa.Table | None, str]:
    """The entity frame to rebuild from, the columns added after the build (if known), and their source."""
    if entities is not None:
        given = load_entities(entities, project.storage)
        if fingerprint(given) == prov.entities_sha256 and given.num_rows == prov.entities_rows:
            return given, None, str(entities)
        # The entity columns of a wider file (the training set itself, or the frame with a later label).
        frame = training_record.matching_entities(given, rec.entity_columns, prov)
        if frame is None:
            raise UsageError(
                f"{what}: the entity frame {entities} ({given.num_rows} rows, sha256 {fingerprint(given)}) is not "
                f"the one its training set was built from ({prov.entities_rows} rows of "
                f"{', '.join(rec.entity_columns)}, entities_sha256 {prov.entities_sha256}); give the original "
                "entity file"
            )
        wider = [c for c in rec.extra_columns if c in given.column_names]
        return frame, given.select(wider) if wider else None, str(entities)
    if not rec.entities_stored:
        raise UsageError(
            f"{what} was registered with --no-store-entities, so its entity frame is not in the registry: give it "
            f"with `featurelake models reproduce {mv.ref} --entities FILE` (entities=...); its sha256 must be "
            f"{prov.entities_sha256}"
        )
    stored = training_record.read_entities(reg, rec)
    frame = stored.select(rec.entity_columns)
    sha = fingerprint(frame)
    if sha != prov.entities_sha256:  # pragma: no cover - the blob was checked against its digest just above
        raise ArtifactIntegrityError(
            f"{what}: the stored entity frame {rec.entities_key} hashes to {sha}, not to the provenance's "
            f"entities_sha256 {prov.entities_sha256}; refusing to rebuild from it"
        )
    added = stored.select(rec.extra_columns) if rec.extra_columns else None
    return frame, added, f"registry {rec.entities_key}"


def _with_extras(table: pa.Table, extras: pa.Table | None, order: list[str]) -> pa.Table:
    """The rebuilt set with the columns added after the build, in the recorded column order."""
    if extras is not None:
        for i in range(extras.num_columns):
            table = table.append_column(extras.schema.field(i), extras.column(i))
    if sorted(table.column_names) == sorted(order) and table.column_names != order:
        table = table.select(order)
    return table


def _tag_story(project: Project, mv: ModelVersion, view: str, table: str) -> str:
    """What happened to the tag that should have kept ``view``'s bound snapshot."""
    tag = next((r["tag"] for r in mv.snapshot_tags if r.get("view") == view), tag_name(mv.name, mv.version))
    if mv.tags_released:
        return (
            f"its tag {tag} was released when the version was archived (registry.release_tags_on_archive), and "
            "maintenance expired the snapshot since"
        )
    try:
        ref = project.load_table(view).metadata.refs.get(tag)
    except FeaturelakeError:
        ref = None
    if ref is None:
        return (
            f"the tag {tag} that should have kept it is gone from {table} (removed outside featurelake), so "
            "snapshot expiry removed it"
        )
    kind = "tag" if ref.snapshot_ref_type == SnapshotRefType.TAG else "branch"
    return f"the tag {tag} that should have kept it is now a {kind} on snapshot {ref.snapshot_id}"


def _check_snapshots(project: Project, mv: ModelVersion, prov: Provenance, what: str) -> None:
    for view, sid in prov.views.items():
        if sid is None:
            continue
        table = prov.tables.get(view) or project.table_name(view)
        try:
            tbl = project.load_table(view)
        except UsageError as exc:
            raise ReproductionError(
                f"{what} cannot be rebuilt: view {view} ({table}) is not readable: {exc}"
            ) from exc
        if tbl.metadata.snapshot_by_id(int(sid)) is None:
            raise ReproductionError(
                f"{what} cannot be rebuilt: snapshot {sid} of {table} no longer exists; "
                f"{_tag_story(project, mv, view, table)}. The rows the model learned from are gone: build a "
                "training set on current data, train and register a new version"
            )


def _missing_file(exc: BaseException) -> str | None:
    """The file a FileNotFoundError in ``exc``'s chain names (the catalog wraps it in a ConfigError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FileNotFoundError):
            return str(seen.filename or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def reproduce(
    reg: RegistryHandle, ref: str | ModelRef | ModelVersion, *, entities: Any = None
) -> Reproduction:
    """Rebuild the training set of ``ref`` (``NAME@1.2.0``, ``NAME@production``, ...) and compare it with the
    recorded one; see the module docstring."""
    started = time.perf_counter()
    mv = ref if isinstance(ref, ModelVersion) else reg.resolve(ref)
    what = f"model {mv.name} {mv.version}"
    rec = _record(reg, mv, what)
    project = _project(reg, what)
    assert mv.training_set is not None
    prov = Provenance.from_dict(dict(mv.training_set), f"the provenance of {what}")
    frame, extras, source = _entities(reg, mv, rec, prov, entities, project, what)
    _check_snapshots(project, mv, prov, what)
    try:
        built = build_training_set(project, frame, provenance=prov)
    except (FeaturelakeError, FileNotFoundError) as exc:
        missing = _missing_file(exc)
        if missing is not None:
            tags = ", ".join(sorted({r["tag"] for r in mv.snapshot_tags})) or tag_name(mv.name, mv.version)
            raise ReproductionError(
                f"{what} cannot be rebuilt: a data file of its bound snapshots ({_snapshots(prov.views)}, kept by "
                f"{tags}) is missing ({missing}); it was deleted outside featurelake's maintenance, which keeps "
                "every file a tagged snapshot reads: restore it from a backup"
            ) from exc
        if isinstance(exc, UsageError):
            raise UsageError(f"{what} cannot be rebuilt: {exc}") from exc
        raise
    table = _with_extras(built.table, extras, [c.name for c in rec.digest.columns])
    rebuilt = table_digest(table)
    out = Reproduction(
        model=mv.name,
        version=mv.version,
        identical=rebuilt.sha256 == rec.sha256,
        recorded_sha256=rec.sha256,
        rebuilt_sha256=rebuilt.sha256,
        rows=table.num_rows,
        columns=list(table.column_names),
        snapshots=dict(prov.views),
        entities=source,
        table=table,
    )
    if not out.identical:
        try:
            cells = training_record.read_cells(reg, rec)
            note = None
        except FeaturelakeError as exc:
            cells, note = None, f"cannot locate the differing rows: {exc}"
        cmp = compare(rec.digest, table, recorded_cells=cells, row_label=rec.entity_columns)
        out.differences, out.first_row, out.first_column = cmp.differences, cmp.first_row, cmp.first_column
        if note:
            out.differences.append(note)
    if built.provenance.to_dict() != prov.to_dict():
        out.identical = False
        changed = sorted(k for k, v in built.provenance.to_dict().items() if prov.to_dict().get(k) != v)
        out.differences.append(
            f"the rebuilt provenance differs from the recorded one in {', '.join(changed)}"
        )
    out.seconds = time.perf_counter() - started
    return out


# --- verify -------------------------------------------------------------------------------------------
def _targets(reg: RegistryHandle, target: str | None, all_versions: bool) -> tuple[list[ModelVersion], bool]:
    """The versions to verify, and whether one was named explicitly."""
    if target and all_versions:
        raise UsageError("give either NAME[@REF] or --all, not both")
    if all_versions:
        return [mv for m in reg.list_models() for mv in reg.versions(m.name)], False
    if not target:
        raise UsageError(
            "say what to verify: NAME@VERSION (or @production, @alias, ...), NAME for each of its versions, or --all"
        )
    if "@" in target:
        return [reg.resolve(target)], True
    return reg.versions(check_model_name(target)), False


def _skip_reason(reg: RegistryHandle, mv: ModelVersion, entities: Any) -> str | None:
    if not mv.training_set:
        return "registered without a training set"
    rec = training_record_of(reg, mv)
    if rec is None:
        return "no recorded training set (registered with only a provenance, or by an older featurelake)"
    if not rec.entities_stored and entities is None:
        return (
            f"registered with --no-store-entities: verify it with `featurelake models verify {mv.ref} "
            "--entities FILE`"
        )
    return None


def verify(
    reg: RegistryHandle,
    target: str | None = None,
    *,
    all_versions: bool = False,
    entities: Any = None,
    user: str | None = None,
) -> list[Verification]:
    """Rebuild and check ``target`` (``NAME@REF``: that version; ``NAME``: each of its versions) or every
    version (``all_versions``); each outcome is recorded in the model's history as a ``verify`` event."""
    mvs, explicit = _targets(reg, target, all_versions)
    if entities is not None and not explicit:
        raise UsageError("--entities is the entity frame of one version: name it as NAME@VERSION")
    who = user or lineage.pipeline_user()
    out: list[Verification] = []
    for mv in mvs:
        if not explicit and (skip := _skip_reason(reg, mv, entities)) is not None:
            out.append(Verification(mv.name, mv.version, "skipped", skip, now()))
            continue
        rep: Reproduction | None = None
        try:
            rep = reproduce(reg, mv, entities=entities)
            outcome, detail = rep.outcome, rep.detail()
        except FeaturelakeError as exc:
            if (explicit and isinstance(exc, UsageError)) or exc.transient:
                raise  # a bad request or a storage/catalog outage: nothing was checked
            outcome, detail = "error", str(exc)
        at = now()
        with reg._write() as conn:
            reg._event(conn, mv.name, mv.version, "verify", None, None, who, "", outcome, detail, at=at)
        out.append(Verification(mv.name, mv.version, outcome, detail, at, rep))
    return out


def last_verification(reg: RegistryHandle, mv: ModelVersion) -> Event | None:
    """The newest ``verify`` event of ``mv``, if it was ever verified."""
    events = [e for e in reg.history(mv.name, mv.version) if e.kind == "verify"]
    return events[-1] if events else None


def write_output(table: pa.Table, output: str | Path, project: Project) -> Path | str:
    """Write a rebuilt training set as ``featurelake training-set`` does (same options, same bytes)."""
    return write_training_set(table, output, project.storage)
