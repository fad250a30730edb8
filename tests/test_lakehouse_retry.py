"""lakehouse.retry: commit conflicts and transient catalog failures retried with jittered backoff."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField
from sqlalchemy.exc import OperationalError

from featurelake.errors import CatalogUnavailableError, ConflictError
from featurelake.lakehouse import retry
from featurelake.lakehouse.catalog import open_catalog, retry_transient
from featurelake.lakehouse.retry import COMMIT_BACKOFF, Backoff, call_with_retries, retry_commit


class Recorder:
    """Stands in for ``time.sleep``: records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(errors: Sequence[BaseException], result: Any = "done") -> tuple[Callable[[Any], Any], list[Any]]:
    """A commit that raises ``errors`` in turn, then returns ``result``; and the tables it was given."""
    seen: list[Any] = []
    pending = iter(errors)

    def commit(tbl: Any) -> Any:
        seen.append(tbl)
        err = next(pending, None)
        if err is not None:
            raise err
        return result

    return commit, seen


def loader() -> Callable[[], int]:
    """Stands in for loading the table: returns 1, 2, 3, ... (a fresh handle each time)."""
    count = iter(range(1, 1_000))
    return lambda: next(count)


def assert_waits_within(waits: list[float], backoff: Backoff) -> None:
    for attempt, wait in enumerate(waits, start=1):
        low, high = backoff.bounds(attempt)
        assert low <= wait < high, (attempt, wait, low, high)


def test_conflicts_are_retried_on_a_fresh_table_with_backoff() -> None:
    commit, seen = failing([CommitFailedException("branch main has changed")] * 2)
    sleep = Recorder()
    out = retry_commit(loader(), commit, table="ns.t", what="tag x", attempts=5, sleep=sleep)  # type: ignore[arg-type]
    assert out == "done"
    assert seen == [1, 2, 3]  # three attempts, each on a newly loaded table
    assert len(sleep.waits) == 2
    assert_waits_within(sleep.waits, COMMIT_BACKOFF)


def test_sequence_number_value_error_is_a_conflict() -> None:
    err = ValueError("Cannot add snapshot with sequence number 5 older than last sequence number 6")
    assert retry.is_commit_conflict(err)
    assert not retry.is_commit_conflict(ValueError("bad value"))
    commit, seen = failing([err])
    assert retry_commit(loader(), commit, table="ns.t", what="w", attempts=2, sleep=Recorder()) == "done"  # type: ignore[arg-type]
    assert len(seen) == 2


def test_gives_up_after_attempts_naming_the_table_and_what_to_do() -> None:
    last = CommitFailedException("Requirement failed: branch main has changed\nmore detail")
    commit, seen = failing([CommitFailedException("first")] * 3 + [last] + [CommitFailedException("never")])
    sleep = Recorder()
    with pytest.raises(ConflictError) as ei:
        retry_commit(
            loader(),  # type: ignore[arg-type]
            commit,
            table="features.user_features",
            what="write audit_r1",
            attempts=4,
            advice="branch audit_r1 is kept; run `featurelake publish` again",
            sleep=sleep,
        )
    assert len(seen) == 4 and len(sleep.waits) == 3  # no wait after the last attempt
    msg = str(ei.value)
    assert msg.startswith("could not write audit_r1: features.user_features kept changing")
    assert "all 4 attempts" in msg and "last: Requirement failed: branch main has changed)" in msg
    assert msg.endswith("; branch audit_r1 is kept; run `featurelake publish` again")
    assert "more detail" not in msg
    assert ei.value.__cause__ is last
    assert_waits_within(sleep.waits, COMMIT_BACKOFF)


def test_default_advice_says_to_run_again() -> None:
    commit, _ = failing([CommitFailedException("x")] * 2)
    with pytest.raises(ConflictError, match=r"could not w: ns\.t kept changing .*; run the command again$"):
        retry_commit(loader(), commit, table="ns.t", what="w", attempts=2, sleep=Recorder())  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [ValueError("bad value"), KeyError("k"), ConflictError("main moved")])
def test_other_errors_propagate_at_once(exc: Exception) -> None:
    commit, seen = failing([exc])
    sleep = Recorder()
    with pytest.raises(type(exc)) as ei:
        retry_commit(loader(), commit, table="ns.t", what="w", attempts=5, sleep=sleep)  # type: ignore[arg-type]
    assert ei.value is exc and len(seen) == 1 and sleep.waits == []


def test_at_least_one_attempt() -> None:
    commit, seen = failing([CommitFailedException("x")])
    with pytest.raises(ConflictError, match="all 1 attempts"):
        retry_commit(loader(), commit, table="ns.t", what="w", attempts=0, sleep=Recorder())  # type: ignore[arg-type]
    assert len(seen) == 1


def test_call_wraps_every_commit() -> None:
    calls: list[str] = []

    def call(fn: Callable[[], Any], what: str) -> Any:
        calls.append(what)
        return fn()

    commit, _ = failing([CommitFailedException("x")])
    retry_commit(loader(), commit, table="ns.t", what="tag x", attempts=3, call=call, sleep=Recorder())  # type: ignore[arg-type]
    assert calls == ["tag x", "tag x"]


def test_backoff_is_exponential_jittered_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    b = Backoff(first=0.1, cap=1.0)
    flat = [x for n in (1, 2, 3) for x in b.bounds(n)]
    assert flat == pytest.approx([0.05, 0.15, 0.1, 0.3, 0.2, 0.6])
    assert b.bounds(10) == (0.5, 1.5)  # capped
    state: Any = type("State", (), {"attempt_number": 3})()
    monkeypatch.setattr(retry.random, "random", lambda: 0.0)
    assert b(state) == pytest.approx(0.2)
    monkeypatch.setattr(retry.random, "random", lambda: 0.999999)
    assert b(state) == pytest.approx(0.6, abs=1e-5)


def test_waits_vary_between_writers() -> None:
    state: Any = type("State", (), {"attempt_number": 2})()
    waits = {COMMIT_BACKOFF(state) for _ in range(50)}
    assert len(waits) > 40  # jitter: colliding writers do not retry in step


def test_call_with_retries_counts_attempts() -> None:
    attempts: list[int] = []

    def fn() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError("t")
        return 7

    sleep = Recorder()
    got = call_with_retries(
        fn,
        retry_on=lambda e: isinstance(e, TimeoutError),
        attempts=3,
        backoff=Backoff(first=1.0, cap=4.0),
        give_up=lambda e: RuntimeError("gave up"),
        sleep=sleep,
    )
    assert got == 7 and len(attempts) == 3
    assert_waits_within(sleep.waits, Backoff(first=1.0, cap=4.0))


# --- the catalog's transient-failure retry ---------------------------------------------------------------


def locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception("database is locked"))


def test_retry_transient_retries_then_succeeds() -> None:
    errors = iter([locked(), locked()])
    sleep = Recorder()

    def fn() -> str:
        err = next(errors, None)
        if err is not None:
            raise err
        return "ok"

    assert retry_transient(fn, what="load t", uri="sqlite:///c.db", retries=4, sleep=sleep) == "ok"
    assert len(sleep.waits) == 2
    assert_waits_within(sleep.waits, Backoff(first=0.2, cap=5.0))


def test_retry_transient_gives_up_clearly() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise locked()

    sleep = Recorder()
    with pytest.raises(CatalogUnavailableError) as ei:
        retry_transient(fn, what="load t", uri="postgresql://u:secret@h/db", retries=2, sleep=sleep)
    assert len(calls) == 3 and len(sleep.waits) == 2
    msg = str(ei.value)
    assert "is locked while trying to load t (gave up after 3 attempts: database is locked)" in msg
    assert "secret" not in msg and "retry when it finishes" in msg
    assert isinstance(ei.value.__cause__, OperationalError)


def test_retry_transient_passes_other_errors_through() -> None:
    def fn() -> None:
        raise CommitFailedException("lost race")

    with pytest.raises(CommitFailedException):
        retry_transient(fn, what="w", uri="sqlite://", retries=3, sleep=Recorder())


# --- a real race on a SQL catalog ------------------------------------------------------------------------

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True))


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = open_catalog("t", f"sqlite:///{tmp_path}/catalog.db", f"file://{tmp_path}/warehouse")
    cat.create_namespace("ns")
    tbl = cat.create_table("ns.t", SCHEMA)
    tbl.append(pa.table({"id": pa.array([1], pa.int64())}, schema=SCHEMA.as_arrow()))
    yield cat


def test_a_lost_race_on_a_real_catalog_is_retried(catalog: Catalog) -> None:
    stale = catalog.load_table("ns.t")
    fresh = catalog.load_table("ns.t")
    fresh.append(pa.table({"id": pa.array([2], pa.int64())}, schema=SCHEMA.as_arrow()))  # another writer
    handles = iter([stale])

    def load() -> Table:
        return next(handles, None) or catalog.load_table("ns.t")

    def pin_main(tbl: Table) -> int:
        # Asserts main is where ``tbl`` saw it: the stale handle would roll main back, so its commit fails.
        sid = tbl.metadata.current_snapshot_id
        assert sid is not None
        tbl.manage_snapshots().set_current_snapshot(snapshot_id=sid).commit()
        return sid

    sleep = Recorder()
    sid = retry_commit(load, pin_main, table="ns.t", what="set main", attempts=3, sleep=sleep)
    assert len(sleep.waits) == 1  # the stale handle lost, the fresh one won
    table = catalog.load_table("ns.t")
    assert sid == table.metadata.current_snapshot_id == fresh.refresh().metadata.current_snapshot_id
    assert table.scan().to_arrow().num_rows == 2  # the other writer's row is still on main
