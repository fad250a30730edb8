"""What the registry hands out: stages, semantic versions, model references, version and event records."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from featurelake.errors import UsageError

FLAVORS = ("pickle", "onnx", "torchscript")
BUMPS = ("patch", "minor", "major")
_SEMVER = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
LATEST = "latest"


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the registry stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


class Stage(StrEnum):
    """Lifecycle stage of a model version."""

    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"

    @classmethod
    def parse(cls, value: str | Stage) -> Stage:
        if isinstance(value, Stage):
            return value
        for stage in cls:
            if str(value).strip().lower() == stage.value.lower():
                return stage
        raise UsageError(f"unknown stage {value!r}: use one of {', '.join(s.value for s in cls)}")


# Transitions allowed without ``force``: forward through the lifecycle, archive from anywhere, and back to
# Staging from Archived (re-validate before returning to Production).
ALLOWED: dict[Stage, frozenset[Stage]] = {
    Stage.NONE: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.STAGING: frozenset({Stage.PRODUCTION, Stage.ARCHIVED, Stage.NONE}),
    Stage.PRODUCTION: frozenset({Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.STAGING}),
}


def check_model_name(name: str) -> str:
    """Model names become table names (``predictions.<model>``) and tag names: plain identifiers only."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"model name {name!r} is not valid: use letters, digits and underscores, starting with a letter "
            "(it becomes the table predictions.<model>)"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise UsageError(
            f"alias {alias!r} is not valid: use letters, digits, '_' or '-', starting with a letter"
        )
    reserved = {s.value.lower() for s in Stage} | {LATEST}
    if alias.lower() in reserved:
        raise UsageError(
            f"alias {alias!r} is reserved (it already means a stage or the newest version in NAME@{alias}): "
            "choose another name, e.g. champion"
        )
    return alias


@dataclass(frozen=True, order=True)
class SemVer:
    """A ``MAJOR.MINOR.PATCH`` version."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> SemVer:
        m = _SEMVER.match(str(text).strip())
        if not m:
            raise UsageError(f"version {text!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.2.0)")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    @classmethod
    def is_semver(cls, text: str) -> bool:
        return bool(_SEMVER.match(text))

    def bump(self, part: str) -> SemVer:
        if part == "major":
            return SemVer(self.major + 1, 0, 0)
        if part == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if part == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        raise UsageError(f"bump {part!r} is not one of {', '.join(BUMPS)}")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


FIRST_VERSION = SemVer(1, 0, 0)


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``NAME``, ``NAME@1.2.0``, ``NAME@production``, ``NAME@latest`` or ``NAME@<alias>``."""

    name: str
    version: str | None = None
    stage: Stage | None = None
    alias: str | None = None
    latest: bool = False

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        raw = str(text).strip()
        name, sep, selector = raw.partition("@")
        check_model_name(name)
        if not sep:
            return cls(name, stage=Stage.PRODUCTION)
        if not selector:
            raise UsageError(f"model reference {raw!r} ends in '@': add a version, stage or alias")
        if SemVer.is_semver(selector):
            return cls(name, version=selector)
        if selector.lower() == LATEST:
            return cls(name, latest=True)
        for stage in Stage:
            if selector.lower() == stage.value.lower():
                return cls(name, stage=stage)
        if selector[0].isdigit():
            SemVer.parse(selector)  # raises with the semver hint
        return cls(name, alias=check_alias(selector))

    def __str__(self) -> str:
        sel = self.version or (self.stage.value.lower() if self.stage else None) or self.alias
        return f"{self.name}@{LATEST if self.latest else sel}"


@dataclass(frozen=True)
class SignatureField:
    """One model input: its column in the training set, its type, the ``view:feature`` it came from, and
    optionally the value a missing feature is filled with at scoring time (as it was in training)."""

    name: str
    type: str
    feature: str | None = None
    default: Any = None


@dataclass(frozen=True)
class ModelVersion:
    """One registered version with its lineage: what it is, what it learned from, where it stands."""

    name: str
    version: str
    stage: Stage
    flavor: str
    artifact_key: str
    artifact_sha256: str
    artifact_size: int
    artifact_name: str
    created_at: datetime
    created_by: str
    run_id: str
    code_version: str
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    training_set: dict[str, Any] | None = None
    """The training set's provenance (views -> snapshot ids, features, entity fingerprint)."""
    signature: list[SignatureField] = field(default_factory=list)
    snapshot_tags: list[dict[str, Any]] = field(default_factory=list)
    """Iceberg tags that keep the bound snapshots alive: ``{"table", "view", "snapshot_id", "tag"}``."""
    tags_released: bool = False
    aliases: list[str] = field(default_factory=list)

    @property
    def semver(self) -> SemVer:
        return SemVer.parse(self.version)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def snapshots(self) -> dict[str, int | None]:
        """View -> snapshot id the model was trained on."""
        return dict((self.training_set or {}).get("views", {}))

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.signature]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage"] = self.stage.value
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class Event:
    """One entry of a model's history: a registration, a stage transition (or an attempt), an alias change."""

    model: str
    version: str | None
    kind: str
    from_stage: str | None
    to_stage: str | None
    alias: str | None
    user: str
    at: datetime
    reason: str
    outcome: str
    """``applied``, ``rejected`` (not allowed) or ``conflict`` (lost a race with a concurrent change)."""
    detail: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


@dataclass(frozen=True)
class ModelSummary:
    """A registered model at a glance."""

    name: str
    versions: int
    latest: str | None
    production: str | None
    staging: list[str]
    aliases: dict[str, str]
    description: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class TransitionPlan:
    """A stage change and the state it was planned against; applying it asserts that state still holds."""

    name: str
    version: str
    from_stage: Stage
    to_stage: Stage
    replaces: str | None
    """The Production version this one archives (promotions to Production only)."""
    force: bool
    reason: str
    user: str


@dataclass(frozen=True)
class TransitionResult:
    """A stage change that was applied, with the versions it archived and anything worth knowing."""

    version: ModelVersion
    archived: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.to_dict(), "archived": self.archived, "notes": self.notes}


def tag_name(model: str, version: str) -> str:
    """The Iceberg tag that keeps a snapshot bound to ``model`` at ``version`` from expiring."""
    return f"model-{model}-{version}"
