"""Retrying Iceberg work that lost a race or hit a transient catalog failure, with jittered backoff.

Two kinds of failure are worth another try, and both go through :func:`call_with_retries` (built on
``tenacity``, which PyIceberg already depends on):

- **Commit conflicts** (:func:`retry_commit`): another writer committed to the table between our load and our
  commit (``CommitFailedException``, or PyIceberg 0.12's ``ValueError`` about sequence numbers, see
  :func:`is_commit_conflict`). Each attempt loads the table afresh and commits again; when every attempt lost,
  ``ConflictError`` names the table, what was being done and what to do next.
- **Transient catalog failures** (``lakehouse.catalog.retry_transient``): a locked SQLite catalog or an
  unreachable server, reported in the end as ``CatalogUnavailableError``.

The backoff is exponential with jitter: before attempt ``n + 1`` it waits ``min(cap, first * 2 ** (n - 1))``
scaled by a random factor in ``[0.5, 1.5)``, so writers that collided once do not collide again in step.

Loops that do more than "load, commit, on a conflict wait and try again" keep their own loop: ``wap.publish``
(an attempt may rebase and re-audit), and maintenance's compaction and expiry (they re-plan on fresh metadata,
check whether a failed commit landed, clean up written files and report their attempts).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import tenacity
from pyiceberg.exceptions import CommitFailedException

from featurelake.errors import ConflictError

if TYPE_CHECKING:
    from pyiceberg.table import Table

T = TypeVar("T")
Call = Callable[[Callable[[], T], str], T]


def is_commit_conflict(exc: BaseException) -> bool:
    """A commit lost a race with another writer (safe to reload the table and try again).

    Besides CommitFailedException, PyIceberg 0.12 reports a snapshot built on metadata that another
    process has since advanced as a ValueError about sequence numbers.
    """
    if isinstance(exc, CommitFailedException):
        return True
    return isinstance(exc, ValueError) and "sequence number" in str(exc)


@dataclass(frozen=True)
class Backoff(tenacity.wait.wait_base):
    """Jittered exponential wait: ``min(cap, first * 2 ** (n - 1)) * uniform(0.5, 1.5)`` after attempt n."""

    first: float
    """Base wait after the first failed attempt, in seconds (the actual wait is 0.5 to 1.5 times it)."""
    cap: float
    """Largest base wait, in seconds (so at most ``1.5 * cap`` is slept)."""

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The least and (exclusive) most this waits after failed attempt number ``attempt`` (from 1)."""
        base = min(self.cap, self.first * 2 ** (attempt - 1))
        return 0.5 * base, 1.5 * base

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        low, high = self.bounds(retry_state.attempt_number)
        return low + (high - low) * random.random()


#: After a lost commit race: 0.05-0.15 s, then 0.1-0.3 s, ... at most 1.5 s.
COMMIT_BACKOFF = Backoff(first=0.1, cap=1.0)


def call_with_retries(
    fn: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool],
    attempts: int,
    backoff: Backoff,
    give_up: Callable[[BaseException], BaseException],
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn`` up to ``attempts`` times (at least once) while it raises what ``retry_on`` accepts.

    Any other exception propagates at once. When the last attempt fails with a retryable exception,
    ``give_up(exc)`` is raised from it. ``sleep`` (default ``time.sleep``) is replaceable so tests need not
    wait.
    """
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=backoff,
        retry=tenacity.retry_if_exception(retry_on),
        sleep=sleep or time.sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as exc:
        if retry_on(exc):
            raise give_up(exc) from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_commit(
    load: Callable[[], Table],
    commit: Callable[[Table], T],
    *,
    table: str,
    what: str,
    attempts: int,
    call: Call[T] | None = None,
    advice: str = "run the command again",
    backoff: Backoff = COMMIT_BACKOFF,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """``commit(load())``, again on a freshly loaded table while the commit loses a race to another writer.

    ``call(fn, what)`` wraps each commit (``Project.catalog_call``: transient-failure retries). After
    ``attempts`` lost races raises ``ConflictError`` naming ``table`` and ``what``, ending with ``advice``.
    """
    wrap: Call[T] = call or (lambda fn, _what: fn())

    def attempt() -> T:
        return wrap(functools.partial(commit, load()), what)

    def give_up(exc: BaseException) -> ConflictError:
        return ConflictError(
            f"could not {what}: {table} kept changing (another writer committed first on all "
            f"{max(1, attempts)} attempts; last: {_first_line(exc)}); {advice}"
        )

    return call_with_retries(
        attempt,
        retry_on=is_commit_conflict,
        attempts=attempts,
        backoff=backoff,
        give_up=give_up,
        sleep=sleep,
    )


__all__ = ["COMMIT_BACKOFF", "Backoff", "call_with_retries", "is_commit_conflict", "retry_commit"]
