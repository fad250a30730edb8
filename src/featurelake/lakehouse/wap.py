"""Write-Audit-Publish on Iceberg branches, race-safe on PyIceberg.

PyIceberg has no ``fast_forward``: setting main to a branch is a plain ref update that can rewind main
(``../notes`` trap 1). Publishing here therefore

1. loads the table fresh and requires main's current snapshot to be an ancestor of the branch tip;
2. moves main in a commit whose requirement is "main is still that snapshot", so a concurrent publish
   makes it fail instead of dropping the other run's rows (the same commit may remove the branch);
3. when main has moved past the fork point, resets the branch onto main's new head, rewrites the run's
   window there and audits again before trying once more (bounded attempts, then ``ConflictError``).

Nothing here knows about feature views, engines or audits: callers pass the write and audit steps in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table, Transaction
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.update.snapshot import ManageSnapshots

from featurelake.errors import ConflictError, UsageError
from featurelake.lakehouse.lineage import RUN_ID
from featurelake.lakehouse.retry import is_commit_conflict

MAIN = "main"
BRANCH_PREFIX = "audit_"


def branch_name(run_id: str) -> str:
    return f"{BRANCH_PREFIX}{run_id}"


def main_snapshot_id(tbl: Table) -> int | None:
    ref = tbl.metadata.refs.get(MAIN)
    return ref.snapshot_id if ref else None


def ref_snapshot_id(tbl: Table, ref: str) -> int | None:
    r = tbl.metadata.refs.get(ref)
    return r.snapshot_id if r else None


def is_ancestor(tbl: Table, ancestor_id: int | None, snapshot_id: int | None) -> bool:
    """True when ``ancestor_id`` is ``snapshot_id`` or one of its parents (None is everyone's ancestor)."""
    if ancestor_id is None:
        return True
    current = snapshot_id
    while current is not None:
        if current == ancestor_id:
            return True
        snap = tbl.metadata.snapshot_by_id(current)
        current = snap.parent_snapshot_id if snap else None
    return False


def ancestors(tbl: Table, snapshot_id: int | None) -> list[int]:
    """Snapshot ids from ``snapshot_id`` back to the first, newest first."""
    out: list[int] = []
    current = snapshot_id
    while current is not None:
        snap = tbl.metadata.snapshot_by_id(current)
        if snap is None:  # expired history
            break
        out.append(current)
        current = snap.parent_snapshot_id
    return out


def find_run(tbl: Table, run_id: str) -> str | None:
    """Describe where ``run_id`` already exists in ``tbl`` (a kept branch or a committed snapshot), else None."""
    if branch_name(run_id) in tbl.metadata.refs:
        return f"branch {branch_name(run_id)} exists"
    for snap in tbl.metadata.snapshots:
        if snap.summary is not None and snap.summary.additional_properties.get(RUN_ID) == run_id:
            return f"snapshot {snap.snapshot_id} was committed by it"
    return None


def create_branch(tbl: Table, name: str) -> int:
    """Create ``name`` at main's current snapshot and return that fork point."""
    fork = main_snapshot_id(tbl)
    if fork is None:
        raise UsageError(f"{'.'.join(tbl.name())} has no snapshot on main yet: run `featurelake apply` first")
    if name in tbl.metadata.refs:
        raise UsageError(f"branch {name} already exists in {'.'.join(tbl.name())}: choose another run id")
    # Its own commit: chaining other ref changes onto it drops the requirements that keep main safe.
    tbl.manage_snapshots().create_branch(fork, name).commit()
    return fork


def stage_branch(tx: Transaction, tbl: Table, name: str) -> int:
    """Stage the creation of branch ``name`` at main's snapshot in ``tx`` (a transaction on ``tbl`` whose next
    updates write to the branch); return the fork point. One commit then creates the branch and writes the
    run, where a separate creation is one more metadata commit per backfill.

    Safe to chain, unlike other ref changes (see :func:`create_branch`): a transaction keeps the first
    requirement of each kind, here "``name`` does not exist yet", which is the one the catalog must check;
    main is not touched by such a transaction.
    """
    fork = main_snapshot_id(tbl)
    if fork is None:
        raise UsageError(f"{'.'.join(tbl.name())} has no snapshot on main yet: run `featurelake apply` first")
    if name in tbl.metadata.refs:
        raise UsageError(f"branch {name} already exists in {'.'.join(tbl.name())}: choose another run id")
    ManageSnapshots(tx).create_branch(fork, name).commit()
    return fork


def reset_branch(tbl: Table, name: str, to_snapshot: int | None) -> None:
    """Point an existing branch at ``to_snapshot`` (asserting it is still where ``tbl`` saw it)."""
    if to_snapshot is None:
        raise ConflictError(f"cannot reset {name}: main has no snapshot")
    tbl.manage_snapshots().create_branch(to_snapshot, name).commit()


def remove_branch(tbl: Table, name: str) -> None:
    if name in tbl.metadata.refs and tbl.metadata.refs[name].snapshot_ref_type == SnapshotRefType.BRANCH:
        tbl.manage_snapshots().remove_branch(name).commit()


@dataclass
class PublishResult:
    """What a publish did: the snapshot main now points to, and how many rebases it took."""

    snapshot_id: int
    previous_main: int | None
    rebases: int = 0
    notes: list[str] = field(default_factory=list)
    #: The branch was removed in the publishing commit (``publish(..., drop_branch=True)``).
    branch_removed: bool = False


def snapshot_run_id(tbl: Table, snapshot_id: int | None) -> str | None:
    snap = tbl.metadata.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    return snap.summary.additional_properties.get(RUN_ID) if snap and snap.summary else None


def fast_forward(tbl: Table, branch: str, *, remove: bool = False) -> bool:
    """Move main to the branch tip if that is a fast-forward from main as ``tbl`` sees it; ``remove``: drop
    the branch in the same commit (one metadata commit instead of two).

    Returns False when main is not an ancestor of the tip (a rebase is needed). Raises
    CommitFailedException when main moved after ``tbl`` was loaded. When main already is the tip (a publish
    that stopped after moving main) nothing is committed and the branch is left for the caller to remove.
    """
    tip = ref_snapshot_id(tbl, branch)
    if tip is None:
        raise UsageError(f"branch {branch} does not exist in {'.'.join(tbl.name())}")
    main = main_snapshot_id(tbl)
    if main == tip:
        return True
    if not is_ancestor(tbl, main, tip):
        return False
    manage = tbl.manage_snapshots().set_current_snapshot(snapshot_id=tip)
    if remove:
        # A PyIceberg transaction keeps one requirement per kind: main's "still at the snapshot I saw",
        # staged first, is the one kept (the branch's own assertion is dropped). That is the one that
        # matters: the branch only moves in a rebase, which happens only after main moved, and then this
        # commit fails on main's assertion; the tip it removes is main's head once the commit lands.
        manage = manage.remove_branch(branch)
    manage.commit()
    return True


def publish(
    catalog: Catalog,
    identifier: str,
    branch: str,
    run_id: str,
    *,
    rebase: Callable[[Table, int], None],
    attempts: int = 5,
    drop_branch: bool = False,
) -> PublishResult:
    """Fast-forward main to ``branch``, rebasing the branch onto main first whenever main has moved.

    The branch tip must be a snapshot written by ``run_id``: a branch that was reset for a rebase whose
    write then failed points at someone else's snapshot and must never be "published" as this run.
    ``rebase(tbl, new_base)`` must reset the branch to ``new_base``, re-apply the run's changes and audit
    them (raising AuditFailed when they no longer pass); it is called with a freshly loaded table.
    ``drop_branch``: remove the branch in the commit that moves main (``PublishResult.branch_removed``
    says whether it was; not when main already pointed at the tip).
    """
    rebases = 0
    notes: list[str] = []
    for _ in range(max(1, attempts)):
        tbl = catalog.load_table(identifier)
        before = main_snapshot_id(tbl)
        tip = ref_snapshot_id(tbl, branch)
        if tip is None:
            raise UsageError(f"branch {branch} does not exist in {identifier}")
        try:
            if snapshot_run_id(tbl, tip) == run_id and fast_forward(tbl, branch, remove=drop_branch):
                removed = drop_branch and before != tip
                return PublishResult(tip, before, rebases, notes, branch_removed=removed)
            if before is None:  # pragma: no cover - tables get a first snapshot at apply
                raise UsageError(f"{identifier} has no snapshot on main: run `featurelake apply` first")
            notes.append(f"main moved to {before} since the branch was forked; rebased and re-audited")
            rebase(tbl, before)
            rebases += 1
        except (CommitFailedException, ValueError) as exc:
            if not is_commit_conflict(exc):
                raise
            notes.append("the table changed during publish; retrying")
    raise ConflictError(
        f"could not publish {branch} to {identifier}: main kept moving during {attempts} attempts; "
        f"the branch is kept, retry with `featurelake publish {identifier.split('.')[-1]} "
        f"--run-id {branch.removeprefix(BRANCH_PREFIX)}`"
    )
