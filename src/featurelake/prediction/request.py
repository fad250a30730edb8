"""One batch prediction as asked for: built once by ``fl.predict`` (from its keywords) or the CLI (from its
flags) and handed to ``jobs.batch_predict.run_predict``, which checks the rest of it in ``prediction.plan``.

``max_age`` is parsed when the request is built (``units.parse_duration``): a bad one is a ``UsageError``
naming ``--max-age`` before the registry or any table is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from featurelake.errors import UsageError
from featurelake.units import parse_duration


def _max_age(value: str | int | float | timedelta) -> timedelta:
    try:
        age = parse_duration(value, "--max-age")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if age <= timedelta(0):
        raise UsageError(f"--max-age {value!r} must be positive (e.g. 2d)")
    return age


@dataclass(frozen=True)
class PredictRequest:
    """What to score with which model, and where the predictions go (see ``fl.predict``)."""

    model: str
    """``NAME`` (its Production version), ``NAME@1.2.0``, ``NAME@staging`` or ``NAME@alias``."""
    view: str | None = None
    """Feature view to score (default: the one the model's features come from)."""
    as_of: datetime | str | None = None
    snapshot_id: int | None = None
    where: str | None = None
    """One SQL boolean expression over the view's columns."""
    output: str | None = None
    """Predictions table (default ``predictions.<model>``)."""
    start: datetime | str | None = None
    end: datetime | str | None = None
    max_age: str | int | float | timedelta | None = None
    """Drop entities whose latest row is older than this (``2d``, a timedelta or seconds)."""
    run_id: str | None = None
    nan_policy: str | None = None

    age_limit: timedelta | None = field(init=False, compare=False)
    """``max_age`` parsed on construction."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "age_limit", None if self.max_age is None else _max_age(self.max_age))


__all__ = ["PredictRequest"]
