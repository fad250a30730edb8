"""What registration and stage transitions need of the registry: the store's surface, as a protocol.

``lifecycle``, ``registration`` and ``reproduce`` (rebuild and verify) work on the registry;
``store.ModelRegistry`` composes them. Typing them against this protocol instead of the store keeps the package's import graph acyclic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Connection

    from featurelake.registry.artifacts import ArtifactStore
    from featurelake.registry.records import Event, ModelRef, ModelSummary, ModelVersion
    from featurelake.registry.snapshots import IcebergPins
    from featurelake.training.provenance import Provenance

TrainingSetSource: TypeAlias = "Provenance | pa.Table | Mapping[str, Any] | str | Path"
#: ``check(name, flavor, data, signature, params, training_set=, verify=) -> details to record``; raises a
#: FeaturelakeError naming the model, the flavor and what is wrong (``prediction.flavors.check``).
ArtifactCheck: TypeAlias = Callable[..., dict[str, Any]]


class RegistryHandle(Protocol):
    artifacts: ArtifactStore
    artifact_check: ArtifactCheck | None
    pins: IcebergPins | None
    project_root: Path | None
    release_tags_on_archive: bool

    def get(self, name: str, version: str) -> ModelVersion: ...

    def versions(self, name: str) -> list[ModelVersion]: ...

    def list_models(self) -> list[ModelSummary]: ...

    def history(self, name: str, version: str | None = None) -> list[Event]: ...

    def resolve(self, ref: str | ModelRef) -> ModelVersion: ...

    def _read(self) -> Any: ...

    def _write(self) -> Any: ...

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
    ) -> None: ...
