"""The featurelake exception tree.

Every error a user can provoke derives from one root, carries a message that names the object
(view, column, run, table) and says what to do next, and knows the CLI exit code it maps to::

    FeaturelakeError                 exit 1 unless a subclass says otherwise
    ├── ConfigError                  exit 2: featurelake.yaml, env vars, features.py definitions
    │   └── UsageError               exit 2: bad arguments (unknown view, window start >= end, ...)
    ├── SchemaError                  exit 2: a definition or query output that does not fit the table
    ├── DataError                    exit 1: rows that cannot be written (null keys, naive timestamps, ...)
    ├── AuditFailed                  exit 1: a WAP audit refused to publish; main is unchanged
    ├── ConflictError                exit 1: a lost race (run id exists, main moved, branch changed)
    └── CatalogUnavailableError      exit 1: the catalog database is locked or unreachable (transient)
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
    """The Iceberg catalog database is locked or cannot be reached."""

    transient = True


__all__ = [
    "AuditFailed",
    "CatalogUnavailableError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "FeaturelakeError",
    "SchemaError",
    "UsageError",
]
