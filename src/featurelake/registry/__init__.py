"""The model registry: semantic versions with lineage, content-addressed artifacts, stages and aliases.

Public API for everything that consumes models (batch prediction, serving)::

    reg = featurelake.open(".").models               # or ModelRegistry.for_project(project)
    mv = reg.resolve("fraud@production")              # NAME, NAME@1.2.0, NAME@staging, NAME@latest, NAME@champion
    mv.flavor, mv.signature, mv.snapshots             # how to load it, its inputs, what it learned from
    data = reg.artifact_bytes(mv)                     # verified against its SHA-256 on every call
    path = reg.artifact_path(mv)                      # a verified local file
    reg.reproduce("fraud@1.2.0").identical            # its training set rebuilt from the registry alone

Loading a flavor (pickle, onnx, torchscript) is the consumer's job; the registry records which one it is.
"""

from typing import TYPE_CHECKING

from featurelake.registry.records import (
    FLAVORS,
    Event,
    ModelRef,
    ModelSummary,
    ModelVersion,
    SemVer,
    SignatureField,
    Stage,
    TransitionPlan,
    TransitionResult,
    tag_name,
)

if TYPE_CHECKING:
    from featurelake.registry.store import ModelRegistry


def __getattr__(name: str) -> object:
    # The store pulls in SQLAlchemy, Alembic and fsspec: only when a registry is actually used, so the CLI
    # (which imports the record types for its options) starts fast.
    if name == "ModelRegistry":
        from featurelake.registry.store import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FLAVORS",
    "Event",
    "ModelRef",
    "ModelRegistry",
    "ModelSummary",
    "ModelVersion",
    "SemVer",
    "SignatureField",
    "Stage",
    "TransitionPlan",
    "TransitionResult",
    "tag_name",
]
