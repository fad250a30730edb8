"""Public check constructors for ``features.py``: ``from featurelake import checks``."""

from featurelake.validation.checks import (
    Check,
    between,
    freshness,
    in_set,
    no_nan_or_inf,
    not_null,
    null_rate,
    row_count,
    row_count_change,
    sql,
    unique,
)
from featurelake.validation.drift import drift

__all__ = [
    "Check",
    "between",
    "drift",
    "freshness",
    "in_set",
    "no_nan_or_inf",
    "not_null",
    "null_rate",
    "row_count",
    "row_count_change",
    "sql",
    "unique",
]
