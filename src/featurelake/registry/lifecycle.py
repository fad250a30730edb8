"""Stage transitions of model versions: planned against the state read, applied only if it still holds.

A transition is a typed change with preconditions (in the spirit of PyIceberg's table requirements):
``plan_transition`` reads the version's stage and, for a promotion to Production, which version holds
Production now; ``apply_transition`` commits only if both are unchanged, archiving the previous Production
version in the same transaction. A unique index allows at most one Production version per model, so two
promotions planned on the same state cannot both commit: the loser gets a ConflictError and the history
records its attempt as ``conflict``. Refused transitions are recorded as ``rejected``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from featurelake.errors import ConflictError, FeaturelakeError, UsageError
from featurelake.lakehouse import lineage
from featurelake.registry.records import ALLOWED, ModelVersion, Stage, TransitionPlan, TransitionResult
from featurelake.registry.schema import versions

if TYPE_CHECKING:
    from featurelake.registry.handle import RegistryHandle as ModelRegistry


class _LostRace(Exception):
    pass


def plan_transition(
    reg: ModelRegistry,
    name: str,
    version: str,
    stage: str | Stage,
    *,
    force: bool = False,
    reason: str = "",
    user: str | None = None,
) -> TransitionPlan:
    """Check that ``version`` may move to ``stage`` now and capture the state the move depends on."""
    to = Stage.parse(stage)
    who = user or lineage.pipeline_user()
    mv = reg.get(name, version)
    frm = mv.stage
    if to == frm:
        raise UsageError(f"model {name} {mv.version} is already in {to.value}: nothing to do")
    if not force and to not in ALLOWED[frm]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[frm]))
        msg = (
            f"model {name} {mv.version} cannot go from {frm.value} to {to.value} (from {frm.value} it may go "
            f"to {allowed}); pass --force (force=True) to override"
        )
        with reg._write() as conn:
            reg._event(conn, name, mv.version, "stage", frm.value, to.value, who, reason, "rejected", msg)
        raise UsageError(msg)
    replaces = None
    if to == Stage.PRODUCTION:
        try:
            replaces = reg.resolve(f"{name}@production").version
        except UsageError:
            replaces = None
    return TransitionPlan(name, mv.version, frm, to, replaces, force, reason, who)


def apply_transition(reg: ModelRegistry, plan: TransitionPlan) -> TransitionResult:
    """Commit ``plan`` if the version's stage (and the Production version) are still as planned.

    Raises ConflictError when a concurrent change got there first; nothing is changed then, and the
    attempt is recorded in the history with outcome ``conflict``.
    """
    mv = reg.get(plan.name, plan.version)
    notes: list[str] = []
    repinned = _repin_if_needed(reg, mv, plan)
    try:
        with reg._write() as conn:
            if plan.replaces is not None:
                _cas(reg, conn, plan.name, plan.replaces, Stage.PRODUCTION, Stage.ARCHIVED)
            _cas(reg, conn, plan.name, plan.version, plan.from_stage, plan.to_stage, repinned)
            detail = "forced" if plan.force else ""
            reg._event(
                conn, plan.name, plan.version, "stage", plan.from_stage.value, plan.to_stage.value,
                plan.user, plan.reason, "applied", detail,
            )  # fmt: skip
            if plan.replaces is not None:
                reg._event(
                    conn, plan.name, plan.replaces, "stage", Stage.PRODUCTION.value, Stage.ARCHIVED.value,
                    plan.user, plan.reason, "applied", f"replaced in Production by {plan.version}",
                )  # fmt: skip
    except (_LostRace, IntegrityError) as exc:
        if repinned:
            assert reg.pins is not None
            reg.pins.release(mv.snapshot_tags)
        _record_conflict(reg, plan, exc)
    archived = [plan.replaces] if plan.replaces is not None else []
    if plan.to_stage == Stage.ARCHIVED:
        archived.append(plan.version)
    if repinned:
        notes.append(
            f"re-created tags {', '.join(r['tag'] for r in mv.snapshot_tags)} (released when archived)"
        )
    if reg.release_tags_on_archive and reg.pins is not None:
        for v in archived:
            notes.extend(_release(reg, plan.name, v))
    return TransitionResult(reg.get(plan.name, plan.version), archived, notes)


# --- helpers ----------------------------------------------------------------------------------------
def _cas(
    reg: ModelRegistry,
    conn: Any,
    name: str,
    version: str,
    expect: Stage,
    to: Stage,
    repinned: bool = False,
) -> None:
    values: dict[str, Any] = {"stage": to.value}
    if repinned:
        values["tags_released"] = False
    res = conn.execute(
        versions.update()
        .where(versions.c.model_name == name, versions.c.version == version, versions.c.stage == expect.value)
        .values(**values)
    )
    if res.rowcount != 1:
        now_stage = conn.execute(
            sa.select(versions.c.stage).where(versions.c.model_name == name, versions.c.version == version)
        ).scalar()
        raise _LostRace(f"{name} {version} is in {now_stage} now, not {expect.value} as planned")


def _record_conflict(reg: ModelRegistry, plan: TransitionPlan, exc: Exception) -> None:
    if isinstance(exc, IntegrityError):
        why = "another version was promoted to Production at the same time"
    else:
        why = str(exc)
    try:
        current = reg.resolve(f"{plan.name}@production").version
    except UsageError:
        current = None
    msg = (
        f"moving model {plan.name} {plan.version} from {plan.from_stage.value} to {plan.to_stage.value} lost a "
        f"race: {why}; this call changed nothing (Production is now {current or 'empty'}); check "
        f"`featurelake models show {plan.name}` and retry if it is still wanted"
    )
    with reg._write() as conn:
        reg._event(
            conn, plan.name, plan.version, "stage", plan.from_stage.value, plan.to_stage.value, plan.user,
            plan.reason, "conflict", msg,
        )  # fmt: skip
    raise ConflictError(msg) from None


def _repin_if_needed(reg: ModelRegistry, mv: ModelVersion, plan: TransitionPlan) -> bool:
    """Leaving Archived after its tags were released: tag the snapshots again, or refuse."""
    if not (mv.tags_released and mv.snapshot_tags and plan.to_stage != Stage.ARCHIVED):
        return False
    if reg.pins is None:
        raise UsageError(
            f"model {mv.name} {mv.version}: its snapshot tags were released; re-binding them needs the "
            "project's catalog (open the registry through featurelake.open(dir).models)"
        )
    views = {r["view"]: r["snapshot_id"] for r in mv.snapshot_tags}
    try:
        reg.pins.pin(views, mv.name, mv.version)
    except FeaturelakeError as exc:
        msg = (
            f"model {mv.name} {mv.version} cannot leave Archived: its training snapshots are no longer kept "
            f"({exc}); register a new version trained on current data"
        )
        with reg._write() as conn:
            reg._event(
                conn, mv.name, mv.version, "stage", plan.from_stage.value, plan.to_stage.value, plan.user,
                plan.reason, "rejected", msg,
            )  # fmt: skip
        raise UsageError(msg) from exc
    return True


def _release(reg: ModelRegistry, name: str, version: str) -> list[str]:
    mv = reg.get(name, version)
    if mv.tags_released or not mv.snapshot_tags or reg.pins is None:
        return []
    notes = reg.pins.release(mv.snapshot_tags)
    with reg._write() as conn:
        conn.execute(
            versions.update()
            .where(versions.c.model_name == name, versions.c.version == version)
            .values(tags_released=True)
        )
    return notes
