"""Model flavors, picked by the flavor the registry recorded, through a lazy name -> loader map.

``load_model(registry, version)`` is the only way featurelake turns a registered artifact into a model: it
asks the registry for the artifact's bytes (re-hashed against the recorded SHA-256 on every call), refuses
pickles when ``registry.allow_pickle`` is false, and imports the flavor's runtime only then, with an install
hint when its extra is missing.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurelake.errors import ArtifactIntegrityError, ConfigError, SchemaError, UsageError
from featurelake.prediction.flavors.base import ModelFlavor, ModelInfo, ModelInput

if TYPE_CHECKING:
    from featurelake.registry import ModelRegistry, ModelVersion

# name -> (module, class, pip extra that installs its runtime)
AVAILABLE_FLAVORS: dict[str, tuple[str, str, str | None]] = {
    "pickle": ("featurelake.prediction.flavors.pickle", "PickleFlavor", None),
    "onnx": ("featurelake.prediction.flavors.onnx", "OnnxFlavor", "onnx"),
    "torchscript": ("featurelake.prediction.flavors.torchscript", "TorchScriptFlavor", "torch"),
}


def flavor_class(name: str) -> type[ModelFlavor]:
    """The flavor class called ``name`` (its module imports no runtime: that happens on load)."""
    if name not in AVAILABLE_FLAVORS:
        raise UsageError(f"unknown model flavor {name!r}: featurelake scores {', '.join(AVAILABLE_FLAVORS)}")
    module_name, cls_name, _ = AVAILABLE_FLAVORS[name]
    cls: type[ModelFlavor] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def model_info(mv: ModelVersion) -> ModelInfo:
    """The flavor-facing view of a registered version: its signature (with fill defaults) and params."""
    inputs = tuple(
        ModelInput(f.name, f.type, _number(mv, f.name, getattr(f, "default", None)), f.feature)
        for f in mv.signature
    )
    return ModelInfo(mv.name, mv.version, inputs, dict(mv.params))


def _number(mv: ModelVersion, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(
            f"model {mv.name} {mv.version}: input {name} has recorded default {value!r}, which is not a number; "
            f"register the model again with --default {name}=NUMBER"
        )
    return float(value)


@dataclass(frozen=True)
class ModelPayload:
    """Everything needed to load a model elsewhere (a Spark executor): verified again where it is loaded."""

    flavor: str
    data: bytes
    sha256: str
    info: ModelInfo
    allow_pickle: bool = True

    def load(self) -> ModelFlavor:
        found = hashlib.sha256(self.data).hexdigest()
        if found != self.sha256:
            raise ArtifactIntegrityError(
                f"{self.info.ref}: the artifact bytes received do not match the recorded digest (expected "
                f"sha256 {self.sha256[:16]}..., found {found[:16]}...); refusing to load"
            )
        return load_flavor(self.flavor, self.data, self.info, allow_pickle=self.allow_pickle)


def load_flavor(name: str, data: bytes, info: ModelInfo, *, allow_pickle: bool = True) -> ModelFlavor:
    """Build flavor ``name`` from already verified bytes (prefer :func:`load_model`)."""
    if name == "pickle" and not allow_pickle:
        raise ConfigError(
            f"{info.ref} is a pickle, and this project refuses pickles (registry.allow_pickle is false): a pickle "
            "runs arbitrary code when loaded. Export the model to ONNX or TorchScript and register that, or set "
            "registry.allow_pickle: true if you trust every registered pickle"
        )
    return flavor_class(name).from_bytes(data, info)


def model_payload(registry: ModelRegistry, mv: ModelVersion, *, allow_pickle: bool = True) -> ModelPayload:
    """The version's verified artifact bytes with what is needed to load them (refusing pickles first)."""
    info = model_info(mv)
    if mv.flavor == "pickle" and not allow_pickle:
        load_flavor("pickle", b"", info, allow_pickle=False)  # raises, before any byte is read
    flavor_class(mv.flavor)
    data = registry.artifact_bytes(mv)  # ArtifactIntegrityError when the digest does not match
    return ModelPayload(mv.flavor, data, mv.artifact_sha256, info, allow_pickle)


def load_model(registry: ModelRegistry, mv: ModelVersion, *, allow_pickle: bool = True) -> ModelFlavor:
    """Load registered version ``mv`` from its digest-verified artifact with the flavor it was registered as."""
    return model_payload(registry, mv, allow_pickle=allow_pickle).load()


__all__ = [
    "AVAILABLE_FLAVORS",
    "ModelFlavor",
    "ModelInfo",
    "ModelInput",
    "ModelPayload",
    "flavor_class",
    "load_flavor",
    "load_model",
    "model_info",
    "model_payload",
]
