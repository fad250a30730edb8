"""featurelake: correct, audited, reproducible ML features on Apache Iceberg.

``from featurelake import Entity, FeatureView, Source, checks`` in ``features.py``;
``fl = featurelake.open(".")`` for the Python API.
"""

from featurelake import checks
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
    RequestError,
    SchemaError,
    UsageError,
)
from featurelake.features.definitions import Entity, FeatureView, Source
from featurelake.project import Featurelake, open

__version__ = "0.1.0"

__all__ = [
    "ArtifactIntegrityError",
    "AuditFailed",
    "CatalogUnavailableError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "Entity",
    "FeatureView",
    "Featurelake",
    "FeaturelakeError",
    "NotFoundError",
    "OnlineStoreUnavailableError",
    "RequestError",
    "SchemaError",
    "Source",
    "UsageError",
    "__version__",
    "checks",
    "open",
]
