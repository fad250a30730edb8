"""The model registry: versions with lineage in SQL, artifacts by content address, Iceberg snapshots pinned.

Read ``docs/registry.md`` for the model. In short: ``register`` stores the artifact under its SHA-256,
bumps the semantic version, records lineage (git commit, run id, user, the training set's provenance and the
input signature) and tags each training snapshot so expiry keeps it; ``promote`` moves a version through
None -> Staging -> Production -> Archived, asserting the state it planned against; ``resolve`` turns
``NAME``, ``NAME@1.2.0``, ``NAME@production``, ``NAME@latest`` or ``NAME@<alias>`` into a version, and
``artifact_bytes``/``artifact_path`` hand out the artifact only after re-checking its digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError, OperationalError

from featurelake.errors import NotFoundError
from featurelake.lakehouse import lineage
from featurelake.lakehouse.catalog import safe_uri
from featurelake.registry import db, declared, lifecycle, registration, reproduce
from featurelake.registry.artifacts import ArtifactStore
from featurelake.registry.handle import ArtifactCheck, TrainingSetSource
from featurelake.registry.records import (
    Event,
    ModelRef,
    ModelSummary,
    ModelVersion,
    SemVer,
    SignatureField,
    Stage,
    TransitionPlan,
    TransitionResult,
    check_alias,
    check_model_name,
    now,
    utc,
)
from featurelake.registry.reproduce import Reproduction, Verification
from featurelake.registry.schema import aliases, events, models, versions
from featurelake.registry.snapshots import IcebergPins
from featurelake.registry.training_record import TrainingRecord

if TYPE_CHECKING:
    from featurelake.lakehouse.storage import Storage
    from featurelake.project import Project


class ModelRegistry:
    """Registered models of one project (or any registry database plus artifact root)."""

    #: Checks a new version's artifact bytes before anything is stored (the prediction layer's flavors,
    #: installed by ``featurelake.open(dir).models``); None: artifacts are stored unchecked.
    artifact_check: ArtifactCheck | None = None

    def __init__(
        self,
        uri: str,
        artifacts: str,
        *,
        pins: IcebergPins | None = None,
        project_root: Path | None = None,
        cache_dir: Path | None = None,
        release_tags_on_archive: bool = False,
        lock_timeout: float = 10.0,
        storage: Storage | None = None,
    ) -> None:
        self.uri = uri
        self.artifacts = ArtifactStore(artifacts, storage)
        self.pins = pins
        self.project_root = project_root
        self.cache_dir = cache_dir
        self.release_tags_on_archive = release_tags_on_archive
        self.lock_timeout = lock_timeout

    @classmethod
    def for_project(cls, project: Project) -> ModelRegistry:
        """The registry configured in ``project``'s ``registry`` section, binding snapshots of its catalog."""
        cfg = project.config
        reg = cfg.settings.registry
        root = reg.artifacts if "://" in reg.artifacts else str(cfg.path(reg.artifacts))
        return cls(
            cfg.sqlalchemy_uri(reg.uri.get_secret_value()),
            root,
            pins=IcebergPins(project),
            project_root=project.root,
            cache_dir=cfg.state_dir / "artifact-cache",
            release_tags_on_archive=reg.release_tags_on_archive,
            lock_timeout=reg.lock_timeout_seconds,
            storage=project.storage,
        )

    @cached_property
    def engine(self) -> Engine:
        engine = db.make_engine(self.uri, self.lock_timeout)
        try:
            db.upgrade(engine, self.uri)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
            del self.__dict__["engine"]

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self) -> str:
        return f"registry {safe_uri(self.uri)}"

    # --- reading ------------------------------------------------------------------------------------
    def _model_row(self, conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(sa.select(models).where(models.c.name == name)).first()
        if row is None:
            known = [r.name for r in conn.execute(sa.select(models.c.name).order_by(models.c.name))]
            raise NotFoundError(
                f"no model {name!r} in the {self._where()}; registered models: {', '.join(known) or 'none'} "
                "(register one with `featurelake models register NAME --artifact F --flavor pickle`)"
            )
        return row

    def _aliases_of(self, conn: Connection, name: str) -> dict[str, str]:
        rows = conn.execute(
            sa.select(aliases.c.alias, aliases.c.version)
            .where(aliases.c.model_name == name)
            .order_by(aliases.c.alias)
        )
        return {r.alias: r.version for r in rows}

    def _version(self, row: Row[Any], alias_map: Mapping[str, str]) -> ModelVersion:
        return ModelVersion(
            name=row.model_name,
            version=row.version,
            stage=Stage(row.stage),
            flavor=row.flavor,
            artifact_key=row.artifact_key,
            artifact_sha256=row.artifact_sha256,
            artifact_size=int(row.artifact_size),
            artifact_name=row.artifact_name,
            created_at=utc(row.created_at),
            created_by=row.created_by,
            run_id=row.run_id,
            code_version=row.code_version,
            description=row.description,
            metrics=dict(row.metrics or {}),
            params=dict(row.params or {}),
            training_set=row.training_set or None,
            signature=[SignatureField(**f) for f in (row.signature or [])],
            snapshot_tags=list(row.snapshot_tags or []),
            tags_released=bool(row.tags_released),
            aliases=sorted(a for a, v in alias_map.items() if v == row.version),
        )

    def _version_rows(self, conn: Connection, name: str) -> list[Row[Any]]:
        return list(
            conn.execute(
                sa.select(versions)
                .where(versions.c.model_name == name)
                .order_by(versions.c.major.desc(), versions.c.minor.desc(), versions.c.patch.desc())
            )
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, newest first."""
        with self._read() as conn:
            self._model_row(conn, name)
            alias_map = self._aliases_of(conn, name)
            return [self._version(r, alias_map) for r in self._version_rows(conn, name)]

    def get(self, name: str, version: str) -> ModelVersion:
        """Version ``version`` of ``name`` (NotFoundError names the versions that exist)."""
        return self.resolve(ModelRef(check_model_name(name), version=str(SemVer.parse(version))))

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """``NAME`` (its Production version), ``NAME@1.2.0``, ``NAME@production``/``@staging``, ``NAME@latest``
        or ``NAME@<alias>`` -> the version record. Raises NotFoundError saying what does exist."""
        r = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        with self._read() as conn:
            self._model_row(conn, r.name)
            alias_map = self._aliases_of(conn, r.name)
            rows = self._version_rows(conn, r.name)
        listing = ", ".join(f"{row.version} ({row.stage})" for row in rows) or "none"
        if r.version is not None:
            found = [row for row in rows if row.version == r.version]
            if not found:
                raise NotFoundError(f"model {r.name} has no version {r.version}; its versions: {listing}")
            return self._version(found[0], alias_map)
        if r.latest:
            if not rows:
                raise NotFoundError(f"model {r.name} has no versions yet")
            return self._version(rows[0], alias_map)
        if r.alias is not None:
            if r.alias not in alias_map:
                have = ", ".join(f"{a} -> {v}" for a, v in alias_map.items()) or "none"
                raise NotFoundError(
                    f"model {r.name} has no alias {r.alias!r} (its aliases: {have}); set it with "
                    f"`featurelake models alias {r.name} {r.alias} VERSION`"
                )
            return self._version(next(row for row in rows if row.version == alias_map[r.alias]), alias_map)
        assert r.stage is not None
        in_stage = [row for row in rows if row.stage == r.stage.value]
        if not in_stage:
            bare = " (a bare model name means its Production version)" if r.stage == Stage.PRODUCTION else ""
            raise NotFoundError(
                f"model {r.name} has no version in {r.stage.value}{bare}; its versions: {listing}. Promote one "
                f"with `featurelake models promote {r.name} VERSION {r.stage.value}`, or ask for NAME@latest"
            )
        return self._version(in_stage[0], alias_map)

    def list_models(self) -> list[ModelSummary]:
        """Every registered model with its latest, Production and Staging versions and aliases."""
        with self._read() as conn:
            out = []
            for m in conn.execute(sa.select(models).order_by(models.c.name)):
                rows = self._version_rows(conn, m.name)
                out.append(
                    ModelSummary(
                        name=m.name,
                        versions=len(rows),
                        latest=rows[0].version if rows else None,
                        production=next((r.version for r in rows if r.stage == Stage.PRODUCTION.value), None),
                        staging=[r.version for r in rows if r.stage == Stage.STAGING.value],
                        aliases=self._aliases_of(conn, m.name),
                        description=m.description,
                        created_at=utc(m.created_at),
                    )
                )
            return out

    def history(self, name: str, version: str | None = None) -> list[Event]:
        """Registrations, stage transitions (attempts included) and alias changes, oldest first."""
        with self._read() as conn:
            self._model_row(conn, name)
            q = sa.select(events).where(events.c.model_name == name)
            if version is not None:
                q = q.where(events.c.version == str(SemVer.parse(version)))
            return [
                Event(
                    model=e.model_name,
                    version=e.version,
                    kind=e.kind,
                    from_stage=e.from_stage,
                    to_stage=e.to_stage,
                    alias=e.alias,
                    user=e.user,
                    at=utc(e.at),
                    reason=e.reason,
                    outcome=e.outcome,
                    detail=e.detail,
                )
                for e in conn.execute(q.order_by(events.c.id))
            ]

    # --- artifacts ----------------------------------------------------------------------------------
    def _target(self, model: str | ModelRef | ModelVersion) -> ModelVersion:
        return model if isinstance(model, ModelVersion) else self.resolve(model)

    def artifact_bytes(self, model: str | ModelRef | ModelVersion) -> bytes:
        """The artifact's bytes, verified against the recorded SHA-256 (ArtifactIntegrityError if not)."""
        mv = self._target(model)
        return self.artifacts.read_verified(
            mv.artifact_key, mv.artifact_sha256, f"model {mv.name} {mv.version}"
        )

    def artifact_path(self, model: str | ModelRef | ModelVersion) -> Path:
        """A local file holding the verified artifact (the blob itself for a local store, else a cached copy)."""
        mv = self._target(model)
        cache = self.cache_dir or Path.home() / ".cache" / "featurelake" / "artifacts"
        return self.artifacts.verified_path(
            mv.artifact_key, mv.artifact_sha256, f"model {mv.name} {mv.version}", cache
        )

    # --- registering --------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact: str | Path,
        flavor: str,
        *,
        training_set: TrainingSetSource | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        bump: str = "patch",
        version: str | None = None,
        description: str = "",
        signature: Sequence[SignatureField | Mapping[str, Any]] | Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        code_version: str | None = None,
        user: str | None = None,
        verify: bool = False,
        store_entities: bool = True,
        service: str | None = None,
        output: str | None = None,
    ) -> ModelVersion:
        """Register a new version of ``name`` and return its record.

        The artifact (``pickle``, ``onnx`` or ``torchscript``) is stored under its SHA-256; the version is
        1.0.0 first, then the latest bumped by ``bump`` (or ``version``, which must be higher); lineage
        (user, run id, git commit) is recorded; with a ``training_set`` (a training-set table or Parquet
        path, or its provenance) the version is bound to its snapshots, each tagged
        ``model-<name>-<version>`` so expiry keeps it, and its input signature comes from the set's features
        (or ``signature``); ``defaults`` records, per input, the value a missing feature was filled with.
        The artifact is first checked by :attr:`artifact_check` (its format, without running it; with
        ``verify`` also loaded and scored in a jailed subprocess) and what it found is recorded in the
        version's ``params["featurelake.artifact"]``.

        With a training set's rows (a table or Parquet file), its SHA-256, its entity frame (unless
        ``store_entities`` is False) and a hash per feature cell are recorded, so that :meth:`reproduce` can
        rebuild it from the registry alone.

        ``service``: the model reads an applied feature service (its signature is the service's features);
        ``output="label,proba"``: a classifier writing its label and one probability per class
        (``registry.declared``).
        """
        signature, params = declared.declare(
            self,
            name,
            service=service,
            output=output,
            training_set=training_set,
            signature=signature,
            params=params,
        )
        return registration.register(
            self,
            name,
            artifact,
            flavor,
            training_set=training_set,
            metrics=metrics,
            params=params,
            bump=bump,
            version=version,
            description=description,
            signature=signature,
            defaults=defaults,
            run_id=run_id,
            code_version=code_version,
            user=user,
            verify=verify,
            store_entities=store_entities,
        )

    # --- reproducing --------------------------------------------------------------------------------
    def reproduce(self, ref: str | ModelRef | ModelVersion, *, entities: Any = None) -> Reproduction:
        """Rebuild the training set of ``ref`` from the registry alone (its provenance and stored entity
        frame, or ``entities`` for a version registered without it) and compare it with the recorded SHA-256;
        ``.identical``, ``.differences`` and ``.table`` (the rebuilt set) say how it went."""
        return reproduce.reproduce(self, ref, entities=entities)

    def verify(
        self, ref: str | None = None, *, all_versions: bool = False, entities: Any = None
    ) -> list[Verification]:
        """Rebuild and check ``ref`` (``NAME@REF``; ``NAME``: each of its versions) or every version, recording
        each outcome (identical, different, error) in the model's history."""
        return reproduce.verify(self, ref, all_versions=all_versions, entities=entities)

    def training_record(self, ref: str | ModelRef | ModelVersion) -> TrainingRecord | None:
        """What the registry holds to rebuild ``ref``'s training set (None: registered without one)."""
        return reproduce.training_record_of(self, self._target(ref))

    def last_verification(self, ref: str | ModelRef | ModelVersion) -> Event | None:
        """The newest ``verify`` event of ``ref``, if it was ever verified."""
        return reproduce.last_verification(self, self._target(ref))

    # --- lifecycle ----------------------------------------------------------------------------------
    def plan_transition(
        self,
        name: str,
        version: str,
        stage: str | Stage,
        *,
        force: bool = False,
        reason: str = "",
        user: str | None = None,
    ) -> TransitionPlan:
        """Check that ``version`` may move to ``stage`` now; capture the state the move depends on."""
        return lifecycle.plan_transition(self, name, version, stage, force=force, reason=reason, user=user)

    def apply_transition(self, plan: TransitionPlan) -> TransitionResult:
        """Commit ``plan`` if the state it was planned against still holds (else ConflictError, recorded)."""
        return lifecycle.apply_transition(self, plan)

    def promote(
        self,
        name: str,
        version: str,
        stage: str | Stage,
        *,
        force: bool = False,
        reason: str = "",
        user: str | None = None,
    ) -> TransitionResult:
        """Move ``version`` of ``name`` to ``stage`` (None, Staging, Production, Archived).

        Without ``force`` only lifecycle moves are allowed: None -> Staging -> Production -> Archived,
        None/Staging -> Archived, Staging -> None, Archived -> Staging. Promoting to Production archives
        the previous Production version in the same transaction; a concurrent change to either version's
        stage makes this call fail with ConflictError (recorded in the history) instead of overwriting it.
        """
        return self.apply_transition(
            self.plan_transition(name, version, stage, force=force, reason=reason, user=user)
        )

    # --- aliases ------------------------------------------------------------------------------------
    def set_alias(
        self, name: str, alias: str, version: str, *, user: str | None = None, reason: str = ""
    ) -> ModelVersion:
        """Point ``alias`` (champion, challenger, ...) of ``name`` at ``version``; returns that version."""
        check_alias(alias)
        target = self.get(name, version)
        who = user or lineage.pipeline_user()
        for _ in range(3):
            try:
                with self._write() as conn:
                    old = self._aliases_of(conn, name).get(alias)
                    at = now()
                    if old is None:
                        conn.execute(
                            aliases.insert().values(
                                model_name=name,
                                alias=alias,
                                version=target.version,
                                updated_at=at,
                                updated_by=who,
                            )
                        )
                    else:
                        conn.execute(
                            aliases.update()
                            .where(aliases.c.model_name == name, aliases.c.alias == alias)
                            .values(version=target.version, updated_at=at, updated_by=who)
                        )
                    detail = f"{alias} -> {target.version}" + (f" (was {old})" if old else "")
                    self._event(
                        conn,
                        name,
                        target.version,
                        "alias",
                        None,
                        None,
                        who,
                        reason,
                        "applied",
                        detail,
                        alias=alias,
                    )
                break
            except IntegrityError:  # a concurrent first set of the same alias: update it instead
                continue
        return self.get(name, target.version)

    def delete_alias(self, name: str, alias: str, *, user: str | None = None, reason: str = "") -> str:
        """Remove ``alias`` of ``name``; returns the version it pointed at."""
        check_alias(alias)
        who = user or lineage.pipeline_user()
        with self._write() as conn:
            self._model_row(conn, name)
            old = self._aliases_of(conn, name).get(alias)
            if old is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}: nothing to remove")
            conn.execute(aliases.delete().where(aliases.c.model_name == name, aliases.c.alias == alias))
            self._event(
                conn,
                name,
                old,
                "alias",
                None,
                None,
                who,
                reason,
                "applied",
                f"{alias} removed (was {old})",
                alias=alias,
            )
        return old

    # --- plumbing -----------------------------------------------------------------------------------
    def _read(self) -> Any:
        return _Guard(self, db.read, "read")

    def _write(self) -> Any:
        return _Guard(self, db.write, "write")

    def _event(
        self,
        conn: Connection,
        name: str,
        version: str | None,
        kind: str,
        from_stage: str | None,
        to_stage: str | None,
        user: str,
        reason: str,
        outcome: str,
        detail: str,
        *,
        alias: str | None = None,
        at: datetime | None = None,
    ) -> None:
        conn.execute(
            events.insert().values(
                model_name=name,
                version=version,
                kind=kind,
                from_stage=from_stage,
                to_stage=to_stage,
                alias=alias,
                user=user,
                at=at or now(),
                reason=reason or "",
                outcome=outcome,
                detail=detail,
            )
        )


class _Guard:
    """A read/write transaction whose lock and connection failures become CatalogUnavailableError."""

    def __init__(self, registry: ModelRegistry, opener: Any, what: str) -> None:
        self.registry = registry
        self.opener = opener
        self.what = what
        self.cm: Any = None

    def __enter__(self) -> Connection:
        try:
            self.cm = self.opener(self.registry.engine)
            conn: Connection = self.cm.__enter__()
            return conn
        except OperationalError as exc:
            raise db.unavailable(self.registry.uri, exc, self.what) from exc

    def __exit__(self, *exc: Any) -> bool | None:
        try:
            result: bool | None = self.cm.__exit__(*exc)
            return result
        except OperationalError as err:
            raise db.unavailable(self.registry.uri, err, self.what) from err
