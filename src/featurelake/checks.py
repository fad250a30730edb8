"""Public check constructors for ``features.py``: ``from featurelake import checks``."""

from featurelake.validation.checks import Check, between, not_null, null_rate, row_count

__all__ = ["Check", "between", "not_null", "null_rate", "row_count"]
