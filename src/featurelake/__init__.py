"""featurelake: correct, audited, reproducible ML features on Apache Iceberg.

``from featurelake import Entity, FeatureView, Source, checks`` in ``features.py``;
``fl = featurelake.open(".")`` for the Python API.

Names are loaded on first use (PEP 562), so ``import featurelake`` and the CLI's ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featurelake.version import __version__

if TYPE_CHECKING:
    from featurelake import checks
    from featurelake.api import Featurelake, open
    from featurelake.errors import (
        ArtifactIntegrityError,
        AuditFailed,
        CatalogUnavailableError,
        ConfigError,
        ConflictError,
        DataError,
        FeaturelakeError,
        NotFoundError,
        OnlineStoreUnavailableError,
        ReproductionError,
        RequestError,
        SchemaError,
        StorageUnavailableError,
        UsageError,
    )
    from featurelake.features.aggregations import Aggregation
    from featurelake.features.definitions import Entity, FeatureView, Field, Source
    from featurelake.features.ondemand import OnDemandFeatureView, RequestSource
    from featurelake.features.services import FeatureService

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "checks": "featurelake.checks",
    "Featurelake": "featurelake.api",
    "open": "featurelake.api",
    "Aggregation": "featurelake.features.aggregations",
    "Entity": "featurelake.features.definitions",
    "FeatureView": "featurelake.features.definitions",
    "Field": "featurelake.features.definitions",
    "Source": "featurelake.features.definitions",
    "FeatureService": "featurelake.features.services",
    "OnDemandFeatureView": "featurelake.features.ondemand",
    "RequestSource": "featurelake.features.ondemand",
    **{
        name: "featurelake.errors"
        for name in (
            "ArtifactIntegrityError",
            "AuditFailed",
            "CatalogUnavailableError",
            "ConfigError",
            "ConflictError",
            "DataError",
            "FeaturelakeError",
            "NotFoundError",
            "OnlineStoreUnavailableError",
            "ReproductionError",
            "RequestError",
            "SchemaError",
            "StorageUnavailableError",
            "UsageError",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featurelake' has no attribute {name!r}")
    value = (
        importlib.import_module(module)
        if name == "checks"
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Aggregation",
    "ArtifactIntegrityError",
    "AuditFailed",
    "CatalogUnavailableError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Featurelake",
    "FeaturelakeError",
    "Field",
    "NotFoundError",
    "OnDemandFeatureView",
    "OnlineStoreUnavailableError",
    "ReproductionError",
    "RequestError",
    "RequestSource",
    "SchemaError",
    "Source",
    "StorageUnavailableError",
    "UsageError",
    "__version__",
    "checks",
    "open",
]
