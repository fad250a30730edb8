"""Job hooks: success or failure (with a reason), duration, rows written and audit outcomes of every job run.

A job function opts in with one line::

    @monitored_job("backfill")
    def run_backfill(project, view_name, ...): ...

or wraps a block: ``with job_metrics(project, "sync", view) as rec: ...``. Neither ever changes what the job
returns or raises; recording problems are logged.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from featurelake import errors
from featurelake.lakehouse import lineage
from featurelake.monitoring.recorder import Recorder

if TYPE_CHECKING:
    from featurelake.project import Project

log = logging.getLogger("featurelake.monitoring")

F = TypeVar("F", bound=Callable[..., Any])

#: Jobs whose successful result means the audited rows are on main now.
PUBLISHING_JOBS = frozenset({"backfill", "publish"})

#: Failure reasons are a closed set (label cardinality): featurelake errors by class, anything else
#: ``unexpected``.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (errors.AuditFailed, "audit_failed"),
    (errors.ConflictError, "conflict"),
    (errors.CatalogUnavailableError, "catalog_unavailable"),
    (errors.UsageError, "usage"),
    (errors.ConfigError, "config"),
    (errors.SchemaError, "schema"),
    (errors.DataError, "data"),
    (KeyboardInterrupt, "interrupted"),
)


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of a job that raised ``exc``."""
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    if isinstance(exc, errors.FeaturelakeError):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower().removesuffix("_error")
    return "unexpected"


class JobRecorder(Recorder):
    """A recorder that knows its job and view, and reads outcomes off job results."""

    def __init__(self, job: str, view: str, project: Project | None = None) -> None:
        super().__init__(job)
        self.job, self.view, self.project = job, view, project
        #: Keyword arguments of the job call (a sync's ``store``, for measuring it afterwards).
        self.call_kwargs: dict[str, Any] = {}

    def result(self, result: Any) -> None:
        """Rows written and audit outcomes from a job's return value (BackfillResult, AuditReport, …);
        online store keys and sync lag after a sync (a list of SyncResult)."""
        if isinstance(result, list) and result and all(hasattr(r, "to_snapshot") for r in result):
            if self.project is not None:
                from featurelake.monitoring.collect import online_gauges

                store = self.call_kwargs.get("store")
                online_gauges(self.project, self, store=store, views=[r.view for r in result])
            return
        report = getattr(result, "report", None)
        if report is None and hasattr(result, "results") and hasattr(result, "rows"):
            report = result  # an AuditReport itself
        table, rows = getattr(result, "table", None), getattr(result, "rows", None)
        if isinstance(table, str) and isinstance(rows, int):
            self.rows_written(self.job, table, rows)
        if report is not None:
            # backfill and publish return only once main holds the run; audit re-checks a kept branch.
            self.audit_report(report, self._features(), published=self.job in PUBLISHING_JOBS)

    def _features(self) -> Collection[str] | None:
        if self.project is None:
            return None
        try:
            return self.project.view(self.view).fields
        except Exception:
            return None  # an unknown view: record what the report has

    def outcome(self, seconds: float, error: BaseException | None, now: float) -> None:
        self.observe("featurelake_job_duration_seconds", {"job": self.job}, seconds)
        if error is None:
            self.inc("featurelake_job_success_total", {"job": self.job, "view": self.view})
            self.set("featurelake_last_success_timestamp_seconds", {"job": self.job, "view": self.view}, now)
            return
        reason = failure_reason(error)
        self.inc("featurelake_job_failure_total", {"job": self.job, "view": self.view, "reason": reason})
        report = getattr(error, "report", None)
        if report is not None and hasattr(report, "results"):
            self.audit_report(report, self._features())


@contextmanager
def job_metrics(project: Project, job: str, view: str) -> Iterator[JobRecorder]:
    """Record one run of ``job`` on ``view``: outcome, duration, whatever the block records; then flush."""
    rec = JobRecorder(job, view, project)
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        yield rec
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            rec.outcome(time.perf_counter() - t0, error, time.time())
        except Exception as exc:  # recording must never mask the job's own outcome
            log.error("could not record the outcome of job %s on %s: %s", job, view, exc)
        rec.flush(project)
        if project.config.settings.monitoring.evaluate_after_jobs:
            _evaluate_quietly(project, job, view)


def _evaluate_quietly(project: Project, job: str, view: str) -> None:
    from featurelake.monitoring.alerts import monitor

    try:
        monitor(project)
    except Exception as exc:
        log.error(
            "alert evaluation after job %s on %s failed: %s (run `featurelake monitor`)", job, view, exc
        )


def monitored_job(job: str, *, per_view: bool = True) -> Callable[[F], F]:
    """Decorate a job function ``fn(project, view_name, ...)`` (or ``fn(project, ...)`` when not per view)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(project: Project, *args: Any, **kwargs: Any) -> Any:
            if per_view:
                view = args[0] if args else kwargs.get("view_name", kwargs.get("view", "unknown"))
            else:
                view = "all"
            with lineage.one_code_version(project.root), job_metrics(project, job, str(view)) as rec:
                rec.call_kwargs = kwargs
                result = fn(project, *args, **kwargs)
                try:
                    rec.result(result)
                except Exception as exc:
                    log.error("could not record the result of job %s on %s: %s", job, view, exc)
                return result

        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["JobRecorder", "failure_reason", "job_metrics", "monitored_job"]
