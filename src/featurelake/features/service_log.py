"""The applied feature services: an append-only Iceberg table ``<namespace>._services`` in the catalog.

``featurelake apply`` appends one row per service whose recorded state changed::

    name, version, features (list of view:feature), description, tags (JSON), status (active | removed),
    applied_at, run_id, code_version

``version`` starts at 1 and increments whenever the service's resolved feature list changes (a view listed
whole that gains a feature changes it too); a new description or tags append a row under the same version.
The newest row per name is the service's current state; older rows are its history. The table sits next to
the views in their namespace (so staging and production namespaces keep their own services), is committed
with the usual lineage properties, and is read by any Iceberg reader (``featurelake read <ns>._services``).
The plan is made inside the commit against the table as loaded, so two concurrent applies cannot both take
the same next version: the loser reloads, re-plans and commits again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import ListType, LongType, NestedField, StringType, TimestamptzType

from featurelake.errors import UsageError
from featurelake.features.apply import ApplyResult
from featurelake.features.services import FeatureService
from featurelake.lakehouse import lineage
from featurelake.lakehouse.retry import retry_commit

T = TypeVar("T")
Call = Callable[[Callable[[], T], str], T]

TABLE = "_services"
ACTIVE, REMOVED = "active", "removed"

SCHEMA = Schema(
    NestedField(1, "name", StringType(), required=True),
    NestedField(2, "version", LongType(), required=True),
    NestedField(3, "features", ListType(4, StringType(), element_required=True), required=True),
    NestedField(5, "description", StringType(), required=False),
    NestedField(6, "tags", StringType(), required=False),
    NestedField(7, "status", StringType(), required=True),
    NestedField(8, "applied_at", TimestamptzType(), required=True),
    NestedField(9, "run_id", StringType(), required=True),
    NestedField(10, "code_version", StringType(), required=False),
)


@dataclass(frozen=True)
class ServiceRecord:
    """One recorded state of a service (a row of ``<namespace>._services``)."""

    name: str
    version: int
    features: list[str]
    description: str
    tags: dict[str, str]
    status: str
    applied_at: datetime
    run_id: str
    code_version: str
    state: str = ""
    """How features.py compares (listings only): ``as applied``, ``changed: run apply`` or ``removed``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "features": list(self.features),
            "description": self.description,
            "tags": dict(self.tags),
            "status": self.status,
            "applied_at": self.applied_at.isoformat(),
            "run_id": self.run_id,
            "code_version": self.code_version,
            **({"state": self.state} if self.state else {}),
        }


@dataclass
class ServiceApplyResult(ApplyResult):
    """What ``apply`` did (or would do) to one feature service: ``created``, ``versioned``, ``updated``
    (description or tags), ``removed``, ``unchanged``, or ``planned`` on a dry run."""

    version: int | None = None
    previous_version: int | None = None
    features: list[str] = field(default_factory=list)
    detail: str = ""

    def describe(self) -> str:
        return " ".join(self.lines())

    def lines(self) -> list[str]:
        head = f"feature service {self.view}: {self.action}"
        if self.version is not None:
            was = (
                f" (was {self.previous_version})" if self.previous_version not in (None, self.version) else ""
            )
            head += f", version {self.version}{was}"
        out = [head]
        if self.detail:
            out.append(f"  - {self.detail}")
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "service": self.view,
            "table": self.table,
            "action": self.action,
            "version": self.version,
            "previous_version": self.previous_version,
            "features": list(self.features),
            "detail": self.detail,
            "warnings": self.warnings,
        }


def _identifier(namespace: str) -> str:
    return f"{namespace}.{TABLE}"


def _records(table: pa.Table) -> list[ServiceRecord]:
    out = []
    for row in table.to_pylist():
        tags = json.loads(row["tags"]) if row.get("tags") else {}
        out.append(
            ServiceRecord(
                name=row["name"],
                version=int(row["version"]),
                features=list(row["features"] or []),
                description=row.get("description") or "",
                tags={str(k): str(v) for k, v in tags.items()},
                status=row["status"],
                applied_at=row["applied_at"],
                run_id=row["run_id"],
                code_version=row.get("code_version") or "unknown",
            )
        )
    # Append order is the history; applied_at and version break no ties a single writer makes.
    return sorted(out, key=lambda r: (r.applied_at, r.version))


def _read(tbl: Table) -> list[ServiceRecord]:
    if tbl.metadata.current_snapshot_id is None:
        return []
    return _records(tbl.scan().to_arrow())


def read_records(catalog: Catalog, namespace: str, call: Call[Any] | None = None) -> list[ServiceRecord]:
    """Every recorded state of every service, oldest first ([] when no service was ever applied)."""
    wrap: Call[Any] = call or (lambda fn, _what: fn())

    def load() -> list[ServiceRecord]:
        try:
            tbl = catalog.load_table(_identifier(namespace))
        except NoSuchTableError:
            return []
        return _read(tbl)

    result: list[ServiceRecord] = wrap(load, f"read {_identifier(namespace)}")
    return result


def current(records: list[ServiceRecord]) -> dict[str, ServiceRecord]:
    """The newest state per service name (removed ones included, marked by ``status``)."""
    latest: dict[str, ServiceRecord] = {}
    for rec in records:
        latest[rec.name] = rec
    return latest


def listing(
    records: list[ServiceRecord], defined: Mapping[str, list[str]], *, history: bool = False
) -> list[ServiceRecord]:
    """The current services (or, with ``history``, every recorded state), each with how features.py compares."""
    shown = records if history else [r for r in current(records).values() if r.status == ACTIVE]
    out = []
    for rec in shown:
        if rec.status != ACTIVE:
            state = REMOVED
        elif history and rec is not current(records).get(rec.name):
            state = "superseded"
        elif defined.get(rec.name) == rec.features:
            state = "as applied"
        else:
            state = "changed: run apply"
        out.append(replace(rec, state=state))
    return out if history else sorted(out, key=lambda r: r.name)


def applied_version(
    catalog: Catalog, namespace: str, name: str, refs: list[str], call: Call[Any] | None = None
) -> int:
    """The applied version of service ``name`` whose features are ``refs`` (as features.py resolves them now);
    UsageError when it was never applied, or changed since the last ``apply``."""
    rec = current(read_records(catalog, namespace, call)).get(name)
    if rec is None or rec.status != ACTIVE:
        raise UsageError(
            f"feature service {name!r} has not been applied to the catalog (namespace {namespace}): run "
            "`featurelake apply`, which records it and gives it a version"
        )
    if rec.features != refs:
        added = [r for r in refs if r not in rec.features]
        dropped = [r for r in rec.features if r not in refs]
        change = "; ".join(
            part
            for part in (
                f"adds {', '.join(added)}" if added else "",
                f"drops {', '.join(dropped)}" if dropped else "",
                "reorders its features" if not added and not dropped else "",
            )
            if part
        )
        raise UsageError(
            f"feature service {name!r} changed in features.py since the last apply (version {rec.version}: "
            f"features.py now {change}): run `featurelake apply` to record it as a new version"
        )
    return rec.version


def _plan(
    services: Mapping[str, FeatureService],
    refs: Mapping[str, list[str]],
    latest: Mapping[str, ServiceRecord],
    label: str,
) -> tuple[list[dict[str, Any]], list[ServiceApplyResult]]:
    """Rows to append and a result per service (defined now, or recorded active before)."""
    rows: list[dict[str, Any]] = []
    results: list[ServiceApplyResult] = []
    for name, svc in services.items():
        features = refs[name]
        prev = latest.get(name)
        row = {"name": name, "features": features, "description": svc.description, "tags": dict(svc.tags)}
        if prev is None:
            version, action, detail = 1, "created", f"features {', '.join(features)}"
        elif prev.features != features or prev.status != ACTIVE:
            version = prev.version + 1 if prev.features != features else prev.version
            action = "versioned" if prev.status == ACTIVE else "created"
            added = [f for f in features if f not in prev.features]
            dropped = [f for f in prev.features if f not in features]
            detail = "; ".join(
                p
                for p in (
                    f"adds {', '.join(added)}" if added else "",
                    f"drops {', '.join(dropped)}" if dropped else "",
                    "reorders its features"
                    if prev.features != features and not added and not dropped
                    else "",
                    "recreated after it was removed" if prev.status != ACTIVE else "",
                )
                if p
            )
        elif (prev.description, prev.tags) != (svc.description, dict(svc.tags)):
            version, action, detail = prev.version, "updated", "description or tags changed"
        else:
            results.append(
                ServiceApplyResult(name, label, "unchanged", version=prev.version, features=features)
            )
            continue
        rows.append({**row, "version": version, "status": ACTIVE})
        results.append(
            ServiceApplyResult(
                name,
                label,
                action,
                version=version,
                previous_version=prev.version if prev else None,
                features=features,
                detail=detail,
            )
        )
    for name, prev in latest.items():
        if name in services or prev.status != ACTIVE:
            continue
        rows.append(
            {
                "name": name,
                "features": prev.features,
                "description": prev.description,
                "tags": prev.tags,
                "version": prev.version,
                "status": REMOVED,
            }
        )
        results.append(
            ServiceApplyResult(
                name,
                label,
                "removed",
                version=prev.version,
                features=prev.features,
                detail="no longer defined in features.py; its versions stay in the history",
            )
        )
    return rows, results


def apply_services(
    catalog: Catalog,
    namespace: str,
    services: Mapping[str, FeatureService],
    refs: Mapping[str, list[str]],
    *,
    lineage_props: dict[str, str],
    dry_run: bool = False,
    call: Call[Any] | None = None,
    attempts: int = 5,
) -> list[ServiceApplyResult]:
    """Record every service whose features, description or tags changed (and every removed one)."""
    ident = _identifier(namespace)
    if dry_run:
        results = _plan(services, refs, current(read_records(catalog, namespace, call)), ident)[1]
        for r in results:
            if r.action not in ("unchanged",):
                r.action = f"planned ({r.action})"
        return results
    if not services and not read_records(catalog, namespace, call):
        return []  # no service ever: do not create the table

    def load() -> Table:
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(namespace)
        try:
            return catalog.load_table(ident)
        except NoSuchTableError:
            pass
        try:
            return catalog.create_table(
                ident, schema=SCHEMA, properties={"format-version": "2", "featurelake.internal": "true"}
            )
        except TableAlreadyExistsError:  # another apply created it meanwhile
            return catalog.load_table(ident)

    def commit(tbl: Table) -> list[ServiceApplyResult]:
        rows, results = _plan(services, refs, current(_read(tbl)), ident)
        if rows:
            now = datetime.now(UTC)
            run_id = lineage_props.get(lineage.RUN_ID, "")
            code = lineage_props.get(lineage.CODE_VERSION, "unknown")
            data = pa.Table.from_pylist(
                [
                    {
                        **r,
                        "tags": json.dumps(r["tags"], sort_keys=True) if r["tags"] else None,
                        "applied_at": now,
                        "run_id": run_id,
                        "code_version": code,
                    }
                    for r in rows
                ],
                schema=tbl.schema().as_arrow(),
            )
            tbl.append(data, snapshot_properties={**lineage_props, lineage.OPERATION: "apply-services"})
        return results

    wrap: Call[Any] = call or (lambda fn, _what: fn())
    return retry_commit(
        lambda: wrap(load, f"load {ident}"),
        commit,
        table=ident,
        what="record the feature services",
        attempts=attempts,
        call=call,
        advice="run `featurelake apply` again",
    )


__all__ = [
    "ACTIVE",
    "REMOVED",
    "SCHEMA",
    "TABLE",
    "ServiceApplyResult",
    "ServiceRecord",
    "applied_version",
    "apply_services",
    "current",
    "listing",
    "read_records",
]
