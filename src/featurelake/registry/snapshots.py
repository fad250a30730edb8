"""Binding model versions to Iceberg snapshots: an Iceberg tag per bound snapshot keeps it from expiring.

Registering a version trained on snapshot S of ``features.user_features`` creates the tag
``model-<name>-<version>`` on S in that table. Snapshot expiry never removes a snapshot a tag points at, so
the exact rows a model learned from stay readable for as long as the version is kept (archiving may release
the tags when ``registry.release_tags_on_archive`` is set).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType

from featurelake.errors import UsageError
from featurelake.lakehouse.retry import retry_commit
from featurelake.registry.records import tag_name

if TYPE_CHECKING:
    from featurelake.project import Project

_ATTEMPTS = 5


class IcebergPins:
    """Creates and removes the snapshot tags of model versions in the project's catalog."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def _commit(self, view: str, what: str, change: Callable[[Table], None]) -> None:
        # manage_snapshots never retries by itself; a concurrent backfill commit makes it fail: reload, retry.
        retry_commit(
            lambda: self.project.load_table(view),
            change,
            table=self.project.table_name(view),
            what=what,
            attempts=_ATTEMPTS,
            call=self.project.catalog_call,
        )

    def check(self, views: Mapping[str, int | None], model: str) -> None:
        """Refuse snapshots that no longer exist (expired since the training set was built)."""
        for view, sid in views.items():
            if sid is None:
                continue
            tbl = self.project.load_table(view)
            if tbl.metadata.snapshot_by_id(int(sid)) is None:
                raise UsageError(
                    f"cannot register {model}: its training set was built on snapshot {sid} of "
                    f"{self.project.table_name(view)}, which has been expired since; rebuild the training set on "
                    "current data (featurelake training-set ...) and train again"
                )

    def pin(self, views: Mapping[str, int | None], model: str, version: str) -> list[dict[str, Any]]:
        """Tag every bound snapshot; returns the tag records to store with the version."""
        tag = tag_name(model, version)
        records: list[dict[str, Any]] = []
        for view, sid in views.items():
            if sid is None:
                continue
            snapshot_id = int(sid)

            def create(tbl: Table, snapshot_id: int = snapshot_id, view: str = view) -> None:
                if tbl.metadata.snapshot_by_id(snapshot_id) is None:
                    raise UsageError(
                        f"cannot bind {model} {version} to snapshot {snapshot_id} of "
                        f"{self.project.table_name(view)}: it was expired; rebuild the training set and train again"
                    )
                ref = tbl.metadata.refs.get(tag)
                if ref is not None and ref.snapshot_id == snapshot_id:
                    return
                tbl.manage_snapshots().create_tag(snapshot_id, tag).commit()

            try:
                self._commit(
                    view, f"tag snapshot {snapshot_id} of {self.project.table_name(view)} as {tag}", create
                )
            except Exception:
                self.release(records)  # all or nothing: no version half bound to its snapshots
                raise
            records.append(
                {"table": self.project.table_name(view), "view": view, "snapshot_id": snapshot_id, "tag": tag}
            )
        return records

    def release(self, records: list[dict[str, Any]]) -> list[str]:
        """Remove the tags in ``records`` (those still pointing where they were put); returns notes."""
        notes: list[str] = []
        for rec in records:
            view, tag, sid = rec["view"], rec["tag"], rec["snapshot_id"]

            def remove(tbl: Table, tag: str = tag, sid: int = sid) -> None:
                ref = tbl.metadata.refs.get(tag)
                if ref is None or ref.snapshot_ref_type != SnapshotRefType.TAG or ref.snapshot_id != sid:
                    return
                tbl.manage_snapshots().remove_tag(tag).commit()

            try:
                self._commit(view, f"remove tag {tag} from {rec['table']}", remove)
                notes.append(f"released tag {tag} on {rec['table']} (snapshot {sid} may now expire)")
            except UsageError as exc:  # the view or its table is gone: nothing left to protect
                notes.append(f"tag {tag} on {rec['table']} not released: {exc}")
        return notes

    def present(self, records: list[dict[str, Any]]) -> dict[str, bool]:
        """Whether each recorded tag still exists and points at its snapshot (``table:tag`` -> bool)."""
        out: dict[str, bool] = {}
        for rec in records:
            try:
                tbl = self.project.load_table(rec["view"])
            except UsageError:
                out[f"{rec['table']}:{rec['tag']}"] = False
                continue
            ref = tbl.metadata.refs.get(rec["tag"])
            out[f"{rec['table']}:{rec['tag']}"] = ref is not None and ref.snapshot_id == rec["snapshot_id"]
        return out
