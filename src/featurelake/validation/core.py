"""The check interface: :class:`Check`, its verdict :class:`CheckResult`, what the evaluator measured
(:class:`Observation`) and what a check may compare with (:class:`AuditContext`, :class:`ReferenceStats`).

A check contributes SQL aggregate expressions over the relation ``frame`` (the rows being audited). The
audit evaluates the aggregates of *every* check of a view together (identical expressions are computed
once), then each check judges its values. A check whose cheap aggregates already prove it passes costs
nothing more; one that fails may ask for exact counts (``detail_aggregates``), and all such requests go into
one more query. Checks that compare against published data (``row_count_change``, ``drift``) are *bound*
to an :class:`AuditContext` first, which reads the reference once per audit.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from featurelake.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

    from featurelake.features.definitions import FeatureView
    from featurelake.lakehouse.window import Window
    from featurelake.validation.colstats import ColumnStats

Severity = Literal["error", "warn"]
#: ``no-reference``: nothing published to compare with (first backfill); ``no-data``: no rows to judge.
Status = Literal["pass", "fail", "no-reference", "no-data"]
STATUSES: tuple[str, ...] = ("pass", "fail", "no-reference", "no-data")


def quote(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


def sql_literal(value: Any) -> str:
    """A SQL literal for a bound or set member (finite numbers, booleans and strings only)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bounds and set members must be finite numbers, got {value}")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ConfigError(
        f"unsupported literal {value!r} ({type(value).__name__}): use numbers, booleans or strings"
    )


class Agg(str):
    """A SQL aggregate expression that also says what it computes.

    SQL engines (DuckDB, Spark) only see the string. An in-memory evaluator reads :attr:`op`,
    :attr:`column` and :attr:`args` to compute the same value straight from Arrow buffers (see
    ``validation.fast``); one it does not know still has its SQL. Equal strings are the same aggregate.
    Ops: ``count_all``, ``count``, ``min``, ``max``, ``sum`` (one column), ``count_not_in`` (column, the
    allowed values), ``count_false`` (``args`` = a SQL predicate) and ``distinct_rows`` (``args`` = the
    columns).
    """

    op: str
    column: str | None
    args: tuple[Any, ...]

    def __new__(cls, sql: str, op: str, column: str | None = None, *args: Any) -> Agg:
        obj = super().__new__(cls, sql)
        obj.op, obj.column, obj.args = op, column, args
        return obj

    @classmethod
    def of(cls, op: str, column: str) -> Agg:
        """``count``/``min``/``max``/``sum`` of ``column``."""
        return cls(f"{op}({quote(column)})", op, column)


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on one audited frame."""

    check: str
    column: str | None
    severity: Severity
    passed: bool
    observed: float | int | str | None
    limit: str
    message: str
    status: str = ""
    details: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "pass" if self.passed else "fail")
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")

    @property
    def verdict(self) -> str:
        """What a person reads: ``pass``, ``FAIL`` (blocks), ``warn`` (failed warn check), ``no reference``..."""
        if self.status in ("no-reference", "no-data"):
            return self.status.replace("-", " ")
        if self.passed:
            return "pass"
        return "FAIL" if self.severity == "error" else "warn"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "check": self.check,
            "column": self.column,
            "severity": self.severity,
            "passed": self.passed,
            "status": self.status,
            "observed": self.observed,
            "limit": self.limit,
            "message": self.message,
        }
        if self.details:
            d["details"] = self.details
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        return cls(
            d["check"],
            d.get("column"),
            d["severity"],
            bool(d["passed"]),
            d.get("observed"),
            d.get("limit", ""),
            d.get("message", ""),
            d.get("status", ""),
            d.get("details"),
        )


@dataclass(frozen=True)
class Observation:
    """What the evaluator measured for one check."""

    values: list[Any]
    """This check's main-pass aggregate values, in the order of :meth:`Check.aggregates`."""
    rows: int
    """Rows in the audited frame."""
    detail: list[Any] | None = None
    """Values of :meth:`Check.detail_aggregates`, when the check asked for any."""
    sample: pa.Table | None = None
    """A uniform sample of the frame's rows, for checks that ask with :meth:`Check.sample_request`."""


@dataclass(frozen=True)
class ReferenceStats:
    """Column statistics of the published data a check compares with (see ``validation.reference``)."""

    snapshot_id: int | None
    label: str
    rows: int = 0
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    problem: str | None = None
    """Set when the reference named by a check cannot be used (unknown tag, expired snapshot)."""
    rescanned_days: int = 0
    """Day partitions whose statistics had to be computed from the data (none were recorded)."""
    day_rows: dict[date, int] | None = None
    """Rows per day partition (from Iceberg metadata); None when the table is not partitioned by day."""


class ReferenceData(Protocol):
    """Published data the audited rows are compared with; read lazily, at most once per audit."""

    def window_rows(self) -> int | None:
        """Rows main holds today for the audited window, or None when it holds none."""

    def stats(self, reference: str | int | None = None) -> ReferenceStats:
        """Statistics of main (``None``), a tag or branch name, or a snapshot id."""


class ProfileSource(Protocol):
    """The run's column statistics, for checks judged late (drift): ``validation.stats.Profiler``."""

    @property
    def result(self) -> dict[str, ColumnStats]: ...


@dataclass
class AuditContext:
    """Everything a check may need besides the audited rows."""

    view: FeatureView
    window: Window | None
    now: datetime
    reference: ReferenceData | None = None
    profiler: ProfileSource | None = None


class Check(ABC):
    """One data-quality rule. Subclasses name their SQL aggregates and judge the values."""

    name: str = "check"
    #: Judged after the other checks of the audit (it reads results they produce, e.g. the profile).
    judge_late: bool = False

    def __init__(self, severity: Severity = "error") -> None:
        if severity not in ("error", "warn"):
            raise ConfigError(f"{self.name}: severity must be 'error' or 'warn', got {severity!r}")
        self.severity: Severity = severity

    def columns(self) -> list[str]:
        """Columns the check reads (validated against the view's columns when features.py loads)."""
        return []

    def validate(self, view: FeatureView) -> None:  # noqa: B027 - optional hook
        """Definition-time checks against ``view`` (column types, SQL); raise ConfigError when wrong."""

    def bind(self, ctx: AuditContext) -> Check:
        """The check as evaluated in one audit (checks needing reference data or the run return a copy)."""
        return self

    def aggregates(self) -> list[str]:
        """SQL aggregate expressions over ``frame``; their values come back in :attr:`Observation.values`."""
        return []

    def detail_aggregates(self, obs: Observation) -> list[str]:
        """Extra aggregates needed only now that the main values are known (e.g. exact counts on failure)."""
        return []

    def sample_request(self) -> tuple[list[str], int, int] | None:
        """``(columns, max rows, seed)`` when the check needs a uniform sample of the rows."""
        return None

    def prepare_sample(self, sample: pa.Table) -> None:  # noqa: B027 - optional hook
        """Work on the sample that needs no aggregate value; an evaluator may call it as soon as the
        sample is drawn (while the aggregates run), before :meth:`judge`."""

    @abstractmethod
    def judge(self, obs: Observation) -> CheckResult:
        """Turn the measured values into a verdict."""

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Identity used to let a declared check replace an implicit one of the same kind and columns."""
        return (self.name, tuple(self.columns()))

    def _result(
        self,
        column: str | None,
        passed: bool,
        observed: Any,
        limit: str,
        message: str,
        status: str = "",
        details: dict[str, Any] | None = None,
    ) -> CheckResult:
        return CheckResult(
            self.name, column, self.severity, passed, observed, limit, message, status, details
        )

    def _copy(self) -> Any:
        return copy.copy(self)

    def __repr__(self) -> str:
        public = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in public.items())})"


# --- column kinds -------------------------------------------------------------------------------------


def column_kind(view: FeatureView, column: str) -> str:
    """``integer``, ``float``, ``decimal``, ``string``, ``boolean``, ``timestamp``, ``date`` or ``binary``."""
    from featurelake.lakehouse.schema import parse_type

    if column == view.timestamp_field:
        return "timestamp"
    if column in view.join_keys:
        return {"string": "string", "long": "integer"}.get(view.entity.key_dtype(column) or "", "key")
    t = str(parse_type(view.fields[column]))
    if t in ("int", "long"):
        return "integer"
    if t in ("float", "double"):
        return "float"
    if t.startswith("decimal"):
        return "decimal"
    if t.startswith("timestamp"):
        return "timestamp"
    return t  # string, boolean, date, binary


NUMERIC_KINDS = ("integer", "float", "decimal")


def require_kind(check: Check, view: FeatureView, column: str, kinds: tuple[str, ...], why: str) -> str:
    kind = column_kind(view, column)
    if kind != "key" and kind not in kinds:
        raise ConfigError(
            f"view {view.name!r}: check {check.name}({column!r}) {why}, but {column} is {kind}; "
            "pick another column or check"
        )
    return kind
