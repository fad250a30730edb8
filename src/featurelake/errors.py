"""The featurelake exception tree.

Every error a user can provoke derives from one root, carries a message that names the object
(view, column, run, table) and says what to do next, and knows the CLI exit code it maps to::

    FeaturelakeError                 exit 1 unless a subclass says otherwise
    ├── ConfigError                  exit 2: featurelake.yaml, env vars, features.py definitions
    │   └── UsageError               exit 2: bad arguments (unknown view, start >= end, run id exists, ...)
    │       ├── RequestError         exit 2: a bad online lookup request; carries its HTTP status
    │       └── NotFoundError        exit 2: no such model, version, stage or alias (HTTP 404)
    ├── SchemaError                  exit 2: a definition or query output that does not fit the table
    │                                        (missing/extra columns, wrong types, naive timestamps)
    ├── DataError                    exit 1: rows that cannot be written (null keys, out-of-window times)
    ├── AuditFailed                  exit 1: a WAP audit refused to publish; main is unchanged
    ├── ConflictError                exit 1: a lost race that retries could not resolve (main kept moving)
    ├── CatalogUnavailableError      exit 1: the catalog or registry database is locked or unreachable
    ├── StorageUnavailableError      exit 1: object storage (S3, ...) failed after its retries: unreachable,
    │                                        throttling that did not stop, refused credentials
    ├── ArtifactIntegrityError       exit 1: a model artifact is missing or its bytes do not match its digest
    ├── ReproductionError            exit 1: a registered model's training set cannot be rebuilt (a bound
    │                                        snapshot or one of its files is gone)
    ├── OnlineStoreUnavailableError  exit 1: Redis / the online database cannot be reached (HTTP 503)
    └── StreamUnavailableError       exit 1: the broker `featurelake ingest` reads (Redis Streams, NATS
                                             JetStream) cannot be reached or refused a call
"""

from __future__ import annotations


class FeaturelakeError(Exception):
    """Root of every error featurelake raises on purpose."""

    exit_code: int = 1
    #: True when retrying the same call later may succeed (locks, network, lost races).
    transient: bool = False


class ConfigError(FeaturelakeError):
    """featurelake.yaml, an env override or the definitions in features.py are wrong."""

    exit_code = 2


class UsageError(ConfigError):
    """A command or API call got arguments it cannot work with."""


class RequestError(UsageError):
    """An online lookup that cannot be answered as asked: unknown view or feature (404), too many entities
    (413), wrong key types or an empty entity list (422)."""

    def __init__(self, message: str, http_status: int = 422) -> None:
        super().__init__(message)
        self.http_status = http_status


class NotFoundError(UsageError):
    """A model, version, stage or alias that the registry does not hold."""


class SchemaError(FeaturelakeError):
    """A definition or a query's output does not match the table schema."""

    exit_code = 2


class DataError(FeaturelakeError):
    """Rows produced by a job cannot be written as they are (null keys, naive or out-of-window times)."""


class AuditFailed(FeaturelakeError):
    """A Write-Audit-Publish audit refused the branch; main is unchanged and the branch is kept."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ConflictError(FeaturelakeError):
    """A concurrent change won a race this call cannot resolve on its own."""

    transient = True


class CatalogUnavailableError(FeaturelakeError):
    """The Iceberg catalog database (or the model registry's database) is locked or cannot be reached."""

    transient = True


class StorageUnavailableError(FeaturelakeError):
    """Object storage (the warehouse, a source, artifacts, outputs on S3 or another store) failed after the
    client's own retries: the endpoint is unreachable, kept throttling, or refused the credentials."""

    transient = True


class ArtifactIntegrityError(FeaturelakeError):
    """A registered artifact is missing or was modified: its bytes no longer hash to the recorded digest."""


class ReproductionError(FeaturelakeError):
    """A registered version's training set cannot be rebuilt: a snapshot it is bound to, or a file of one, is
    gone (the message names the tag that should have kept it)."""


class OnlineStoreUnavailableError(FeaturelakeError):
    """The online store (Redis, or the SQLite file) cannot be reached or answered with an error."""

    transient = True


class StreamUnavailableError(FeaturelakeError):
    """The stream broker ``featurelake ingest`` consumes cannot be reached or refused a call; nothing it
    delivered since the last acknowledgement is lost (the broker delivers it again)."""

    transient = True


__all__ = [
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
    "StreamUnavailableError",
    "UsageError",
]
