"""Registering a model version: validate, store the artifact, allocate the version, bind the snapshots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from featurelake.errors import ConflictError, FeaturelakeError, UsageError
from featurelake.lakehouse import lineage
from featurelake.lakehouse.storage import is_remote, is_storage_failure, storage_error
from featurelake.registry import training_record
from featurelake.registry.artifacts import StoredArtifact
from featurelake.registry.records import (
    BUMPS,
    FIRST_VERSION,
    FLAVORS,
    ModelVersion,
    SemVer,
    SignatureField,
    Stage,
    check_model_name,
    now,
)
from featurelake.registry.schema import aliases, models, versions
from featurelake.training.provenance import Provenance

#: The params key under which a version records what checking its artifact found.
ARTIFACT_PARAM = "featurelake.artifact"

if TYPE_CHECKING:
    from featurelake.registry.handle import RegistryHandle as ModelRegistry
    from featurelake.registry.handle import TrainingSetSource


def _provenance(reg: ModelRegistry, source: TrainingSetSource) -> Provenance:
    """The training set's provenance; a URL (``s3://…/train.parquet``) is read through the registry's storage."""
    if not (isinstance(source, str | Path) and is_remote(source)):
        return Provenance.load(source)
    storage = reg.artifacts.storage
    text = str(source)
    try:
        if text.lower().endswith(".json"):
            return Provenance.from_dict(json.loads(storage.read_bytes(text)), text)
        fs, path = storage.filesystem(text)
        schema = pq.read_schema(path, filesystem=fs)
    except FileNotFoundError:
        raise UsageError(f"training set {text} does not exist") from None
    except ValueError as exc:
        raise UsageError(f"training set {text} cannot be read: {exc}") from None
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"read training set {text}") from exc
        raise UsageError(f"training set {text} is not a Parquet file: {exc}") from None
    return Provenance.from_schema(schema, text)


def register(
    reg: ModelRegistry,
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
) -> ModelVersion:
    """Register a new version of ``name`` (see ``ModelRegistry.register``); returns its record."""
    check_model_name(name)
    if flavor not in FLAVORS:
        raise UsageError(f"unknown flavor {flavor!r} for model {name}: use one of {', '.join(FLAVORS)}")
    if bump not in BUMPS:
        raise UsageError(f"bump {bump!r} is not one of {', '.join(BUMPS)}")
    explicit = SemVer.parse(version) if version is not None else None
    prov = _provenance(reg, training_set) if training_set is not None else None
    views: dict[str, int | None] = {v: s for v, s in (prov.views if prov else {}).items() if s is not None}
    if views and reg.pins is None:
        raise UsageError(
            f"model {name}: binding a training set's snapshots needs the project's catalog; open the registry "
            "through featurelake.open(dir).models"
        )
    if views and reg.pins is not None:
        reg.pins.check(views, name)
    sig = _with_defaults(name, _signature(prov, signature), defaults)
    clean_metrics = _metrics(name, metrics)
    clean_params = _params(params)
    checked = _check_artifact(reg, name, flavor, artifact, sig, clean_params, training_set, verify)
    if checked:
        clean_params[ARTIFACT_PARAM] = checked
    captured = _capture_training_set(reg, name, training_set, prov, store_entities)
    stored = reg.artifacts.put(artifact)
    who = user or lineage.pipeline_user()
    run = run_id or lineage.new_run_id()
    code = code_version or (lineage.code_version(reg.project_root) if reg.project_root else "unknown")
    created = None
    for _ in range(10):
        try:
            with reg._write() as conn:
                created = _insert_version(reg,
                    conn, name, explicit, bump, who, run, code, description, stored, flavor,
                    clean_metrics, clean_params, prov, sig,
                )  # fmt: skip
                if captured is not None:
                    training_record.insert(conn, name, created, captured)
            break
        except IntegrityError:
            if explicit is not None:
                raise UsageError(
                    f"model {name} already has version {explicit}: choose a higher one, or omit --version"
                ) from None
            # Another registration took the version we computed: compute the next one and retry.
    if created is None:
        raise ConflictError(
            f"could not register {name}: concurrent registrations kept taking the next version"
        )
    if views and reg.pins is not None:
        try:
            records = reg.pins.pin(views, name, created)
        except FeaturelakeError as exc:
            _unregister(reg, name, created, who, str(exc))
            raise
        with reg._write() as conn:
            conn.execute(
                versions.update()
                .where(versions.c.model_name == name, versions.c.version == created)
                .values(snapshot_tags=records)
            )
    return reg.get(name, created)


def _capture_training_set(
    reg: ModelRegistry,
    name: str,
    training_set: TrainingSetSource | None,
    prov: Provenance | None,
    store_entities: bool,
) -> training_record.CapturedTrainingSet | None:
    """What a rebuild of the training set needs (its digest, entity frame, cell hashes); see training_record."""
    if training_set is None or prov is None:
        if not store_entities:
            raise UsageError(f"model {name}: --no-store-entities needs a --training-set")
        return None
    return training_record.capture(reg, name, training_set, prov, store_entities=store_entities)


def _check_artifact(
    reg: ModelRegistry,
    name: str,
    flavor: str,
    artifact: str | Path,
    sig: list[SignatureField],
    params: dict[str, Any],
    training_set: TrainingSetSource | None,
    verify: bool,
) -> dict[str, Any]:
    """What ``reg.artifact_check`` found in the artifact (raises when it is not a model of ``flavor``)."""
    if reg.artifact_check is None:
        if verify:
            raise UsageError(
                f"model {name}: --verify needs the prediction flavors; open the registry through "
                "featurelake.open(dir).models"
            )
        return {}
    if is_remote(artifact):
        try:
            fs, location = reg.artifacts.storage.fsspec(str(artifact))
            with fs.open(location, "rb") as f:
                data = f.read()
        except Exception:
            return {}  # storing it fails the same way, with the storage's own message
    else:
        path = Path(artifact).expanduser()
        if not path.is_file():
            return {}  # storing it refuses it (missing, a directory) with the usual message
        data = path.read_bytes()
    return reg.artifact_check(name, flavor, data, sig, params, training_set=training_set, verify=verify)


def _insert_version(
    reg: ModelRegistry,
    conn: Connection,
    name: str,
    explicit: SemVer | None,
    bump: str,
    who: str,
    run: str,
    code: str,
    description: str,
    stored: StoredArtifact,
    flavor: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    prov: Provenance | None,
    sig: list[SignatureField],
) -> str:
    at = now()
    if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
        conn.execute(models.insert().values(name=name, description="", created_at=at, created_by=who))
    top = conn.execute(
        sa.select(versions.c.major, versions.c.minor, versions.c.patch)
        .where(versions.c.model_name == name)
        .order_by(versions.c.major.desc(), versions.c.minor.desc(), versions.c.patch.desc())
        .limit(1)
    ).first()
    latest = SemVer(top.major, top.minor, top.patch) if top else None
    if explicit is not None:
        if (latest is not None and explicit == latest) or _has_version(conn, name, str(explicit)):
            raise UsageError(
                f"model {name} already has version {explicit}: choose a higher one, or omit --version"
            )
        if latest is not None and explicit < latest:
            raise UsageError(
                f"version {explicit} of model {name} must be higher than its latest version {latest}"
            )
        new = explicit
    else:
        new = FIRST_VERSION if latest is None else latest.bump(bump)
    conn.execute(
        versions.insert().values(
            model_name=name,
            version=str(new),
            major=new.major,
            minor=new.minor,
            patch=new.patch,
            stage=Stage.NONE.value,
            flavor=flavor,
            artifact_key=stored.key,
            artifact_sha256=stored.sha256,
            artifact_size=stored.size,
            artifact_name=stored.name,
            created_at=at,
            created_by=who,
            run_id=run,
            code_version=code,
            description=description,
            metrics=metrics,
            params=params,
            training_set=prov.to_dict() if prov else None,
            signature=[
                {"name": f.name, "type": f.type, "feature": f.feature, "default": f.default} for f in sig
            ],
            snapshot_tags=[],
            tags_released=False,
        )
    )
    detail = f"artifact {stored.key} ({stored.size} bytes, {flavor})"
    if prov:
        detail += "; trained on " + ", ".join(f"{v}@{s}" for v, s in prov.views.items())
    reg._event(conn, name, str(new), "register", None, Stage.NONE.value, who, "", "applied", detail, at=at)
    return str(new)


def _has_version(conn: Connection, name: str, version: str) -> bool:
    q = sa.select(versions.c.id).where(versions.c.model_name == name, versions.c.version == version)
    return conn.execute(q).first() is not None


def _unregister(reg: ModelRegistry, name: str, version: str, who: str, why: str) -> None:
    """Undo a registration whose snapshots could not be bound (the history keeps the attempt)."""
    with reg._write() as conn:
        conn.execute(versions.delete().where(versions.c.model_name == name, versions.c.version == version))
        conn.execute(aliases.delete().where(aliases.c.model_name == name, aliases.c.version == version))
        training_record.delete(conn, name, version)
        reg._event(conn, name, version, "register", None, None, who, "", "rejected", f"rolled back: {why}")


def _signature(
    prov: Provenance | None, explicit: Sequence[SignatureField | Mapping[str, Any]] | Mapping[str, str] | None
) -> list[SignatureField]:
    if explicit is not None:
        if isinstance(explicit, Mapping) and all(isinstance(v, str) for v in explicit.values()):
            return [SignatureField(name=str(k), type=str(v)) for k, v in explicit.items()]
        out = []
        for f in explicit:
            if isinstance(f, SignatureField):
                out.append(f)
            elif isinstance(f, Mapping) and "name" in f and "type" in f:
                out.append(
                    SignatureField(
                        name=str(f["name"]),
                        type=str(f["type"]),
                        feature=f.get("feature"),
                        default=f.get("default"),
                    )
                )
            else:
                raise UsageError(
                    f"signature entries need a name and a type, got {f!r}: write e.g. "
                    "{'name': 'amount_avg_1d', 'type': 'double', 'feature': 'user_features:amount_avg_1d'}"
                )
        return out
    if prov is None:
        return []
    return [SignatureField(name=r.column, type=r.type, feature=r.ref) for r in prov.feature_refs()]


def _with_defaults(
    name: str, sig: list[SignatureField], defaults: Mapping[str, Any] | None
) -> list[SignatureField]:
    """Record the fill value of inputs that may be missing at scoring time (as they were filled in training)."""
    if not defaults:
        return sig
    known = {f.name for f in sig}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise UsageError(
            f"defaults for {', '.join(unknown)}: model {name} has no such input (its inputs: "
            f"{', '.join(f.name for f in sig) or 'none'})"
        )
    return [replace(f, default=defaults[f.name]) if f.name in defaults else f for f in sig]


def _metrics(name: str, metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"metric {k!r} of model {name} must be a number, got {v!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"metric {k!r} of model {name} is {value}: only finite numbers can be recorded")
        out[str(k)] = value
    return out


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (params or {}).items():
        try:
            json.dumps(v)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out
