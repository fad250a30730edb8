"""What a registration declares beyond its artifact: the feature service it reads, and its outputs.

``models register --service NAME``: the model's input signature is the service's features (as features.py
defines them and ``apply`` recorded them; their declared types), and the version records
``params["featurelake.service"] = {"name", "version"}``. With ``--training-set`` as well, the set must have
been built with exactly those features (its own signature is used, so column names match the artifact). A
training set built from a service (``training-set --service``) carries the service in its provenance, which
the version records the same way.

``--output label,proba``: a classifier writes its predicted class to ``prediction`` and one probability per
class to ``proba_<class>``; recorded as ``params["featurelake.output"]`` (read by the flavors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.errors import UsageError
from featurelake.features.service_log import applied_version
from featurelake.lakehouse.schema import parse_type, type_name
from featurelake.lakehouse.storage import is_remote
from featurelake.registry.records import SignatureField
from featurelake.training.provenance import Provenance

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.registry.handle import RegistryHandle, TrainingSetSource

SERVICE_PARAM = "featurelake.service"
OUTPUT_PARAM = "featurelake.output"
LABEL_PROBA = "label,proba"

Signature = Sequence[SignatureField | Mapping[str, Any]] | Mapping[str, str] | None


def normalise_output(name: str, output: str) -> str:
    """``label,proba`` (in either order), or UsageError naming the model."""
    parts = {p.strip().lower() for p in str(output).split(",") if p.strip()}
    if parts == {"label", "proba"}:
        return LABEL_PROBA
    raise UsageError(
        f"model {name}: --output {output!r} is not an output featurelake writes; give --output label,proba (the "
        "predicted class in prediction and one proba_<class> column per class), or omit it (one number per row)"
    )


def service_signature(project: Project, refs: list[str]) -> list[SignatureField]:
    """The input signature of a service's features: one input per feature, named like the training set's
    columns (the feature's name; ``view__feature`` where two views share a name), typed as declared."""
    defs = project.definitions
    names = [r.partition(":")[2] for r in refs]
    out = []
    for ref, feat in zip(refs, names, strict=True):
        view = ref.partition(":")[0]
        fields = defs.views[view].fields if view in defs.views else defs.on_demand[view].fields
        column = f"{view}__{feat}" if names.count(feat) > 1 else feat
        out.append(SignatureField(name=column, type=type_name(parse_type(fields[feat])), feature=ref))
    return out


def _provenance(training_set: TrainingSetSource) -> Provenance | None:
    """The training set's provenance when it is at hand without object storage (URLs are read later)."""
    if isinstance(training_set, str | Path) and is_remote(training_set):
        return None
    return Provenance.load(training_set)


def declare(
    reg: RegistryHandle,
    name: str,
    *,
    service: str | None,
    output: str | None,
    training_set: TrainingSetSource | None,
    signature: Signature,
    params: Mapping[str, Any] | None,
) -> tuple[Signature, dict[str, Any]]:
    """The signature and params to register with, given ``--service`` and ``--output``."""
    out = dict(params or {})
    if output is not None:
        out[OUTPUT_PARAM] = normalise_output(name, output)
    prov = _provenance(training_set) if training_set is not None else None
    if service is None:
        if prov is not None and prov.service:
            out.setdefault(SERVICE_PARAM, dict(prov.service))
        return signature, out
    if signature is not None:
        raise UsageError(f"model {name}: give either a feature service or a signature, not both")
    if reg.pins is None:
        raise UsageError(
            f"model {name}: --service needs the project's definitions; open the registry through "
            "featurelake.open(dir).models"
        )
    project = reg.pins.project
    refs = project.definitions.service(service)
    version = applied_version(project.catalog, project.namespace, service, refs, project.catalog_call)
    if prov is not None and prov.features != refs:
        raise UsageError(
            f"model {name}: its training set has features {', '.join(prov.features)}, but feature service "
            f"{service} (version {version}) has {', '.join(refs)}; build the training set with "
            f"`featurelake training-set --service {service}`"
        )
    out[SERVICE_PARAM] = {"name": service, "version": version}
    if training_set is not None:
        return None, out  # the training set's own signature (its column names are the artifact's)
    return service_signature(project, refs), out


__all__ = ["LABEL_PROBA", "OUTPUT_PARAM", "SERVICE_PARAM", "declare", "normalise_output", "service_signature"]
