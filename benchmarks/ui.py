"""Benchmark: the web UI's pages of a view with a long history (issue 20: <= 300 ms with 2,000 snapshots).

Builds a project whose view has ``--snapshots`` snapshots on main (default 2,000: one published backfill, then
a synthetic history of snapshots with the usual lineage properties, see :func:`build`). Then times, through Starlette's
TestClient (no network), the overview, the view page (newest 100 snapshots), the view page with the time-travel
preview of main's first 20 rows (read on demand: planning the scan reads every manifest), a run page and
the online page, ``--repeats`` times each after one warm-up, against the named reference: reading the
view's whole history with ``fl.history(view)`` (what ``featurelake history`` does).

    .venv/bin/python benchmarks/ui.py [--snapshots N] [--repeats K]

Prints median and best milliseconds per page and the ratio page / history. Exits non-zero only on errors,
never because a page is slow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import day, make_project

import featurelake
from featurelake.lakehouse import lineage

VIEW = "user_features"


def build(root: Path, snapshots: int) -> None:
    """A view with ``snapshots`` snapshots on main: a real published backfill, then a synthetic history.

    Committing 2,000 appends through PyIceberg takes hours (each commit deep-copies the whole metadata, so the
    cost grows with the history), so the history is written as table metadata: snapshots chained by parent id,
    each with featurelake's lineage properties and pointing at the backfill's manifest list (their data is the
    backfill's rows), registered in the catalog in place of the table. Every snapshot is readable.
    """
    from pyiceberg.serializers import ToOutputFile
    from pyiceberg.table.refs import SnapshotRef, SnapshotRefType
    from pyiceberg.table.snapshots import Operation, Snapshot, SnapshotLogEntry, Summary

    make_project(root)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        tbl = fl.project.load_table(VIEW)
        md = tbl.metadata
        head = md.snapshot_by_id(md.refs["main"].snapshot_id)
        assert head is not None and head.sequence_number is not None
        extra, parent = [], head
        log = list(md.snapshot_log)
        for i in range(snapshots - len(fl.history(VIEW))):
            props = lineage.lineage_properties(
                root,
                f"run{i:05d}",
                **{lineage.VIEW: VIEW, lineage.WINDOW_START: day(0), lineage.WINDOW_END: day(5)},
            )
            # Keyword arguments through a dict: PyIceberg's pydantic models take them by field name at run
            # time, while mypy (without pydantic's plugin) knows only the aliases ("snapshot-id").
            fields: dict[str, Any] = {
                "snapshot_id": head.snapshot_id + 1 + i,
                "parent_snapshot_id": parent.snapshot_id,
                "sequence_number": head.sequence_number + 1 + i,
                "timestamp_ms": head.timestamp_ms + 1000 * (i + 1),
                "manifest_list": head.manifest_list,
                "summary": Summary(Operation.APPEND, **props, **{"added-records": "0"}),
                "schema_id": head.schema_id,
            }
            snap = Snapshot(**fields)
            extra.append(snap)
            log.append(
                SnapshotLogEntry(**{"snapshot_id": snap.snapshot_id, "timestamp_ms": snap.timestamp_ms})
            )
            parent = snap
        main: dict[str, Any] = {
            "snapshot_id": parent.snapshot_id,
            "snapshot_ref_type": SnapshotRefType.BRANCH,
        }
        synthetic = md.model_copy(
            update={
                "snapshots": [*md.snapshots, *extra],
                "snapshot_log": log,
                "refs": {
                    **md.refs,
                    "main": SnapshotRef(**main),
                },
                "last_sequence_number": parent.sequence_number,
                "current_snapshot_id": parent.snapshot_id,
                "last_updated_ms": parent.timestamp_ms,
            }
        )
        location = f"{tbl.location()}/metadata/99999-synthetic-history.metadata.json"
        ToOutputFile.table_metadata(synthetic, tbl.io.new_output(location))
        ident = fl.project.table_name(VIEW)
        fl.project.catalog.drop_table(ident)  # the catalog's entry only; the files stay
        fl.project.catalog.register_table(ident, location)
    with featurelake.open(root) as fl:
        assert len(fl.history(VIEW)) == snapshots
        assert fl.read(VIEW).num_rows > 0


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from starlette.testclient import TestClient

    from featurelake.ui import create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        t0 = time.perf_counter()
        build(root, args.snapshots)
        print(f"built {args.snapshots} snapshots in {time.perf_counter() - t0:.0f} s")
        with featurelake.open(root) as fl:
            reference = timed(lambda: fl.history(VIEW), args.repeats)
            app = create_app(fl)
            with TestClient(app) as client:

                def page(path: str) -> Callable[[], object]:
                    def get() -> object:
                        response = client.get(path)
                        assert response.status_code == 200, (path, response.status_code)
                        return response

                    return get

                rows = [("fl.history(view) [reference]", reference)]
                for label, path in (
                    ("overview /", "/"),
                    (f"view /views/{VIEW}", f"/views/{VIEW}"),
                    (
                        "view + rows ?snapshot=<main>",
                        f"/views/{VIEW}?snapshot={fl.history(VIEW)[0].snapshot_id}",
                    ),
                    ("run /views/.../runs/first", f"/views/{VIEW}/runs/first"),
                    ("online /online", "/online"),
                ):
                    rows.append((label, timed(page(path), args.repeats)))
            app.state.ui.close()
    ref = statistics.median(reference)
    print(f"\nUI pages of a view with {args.snapshots} snapshots (median / best of {args.repeats}, ms)")
    print(f"{'page':34} {'median':>8} {'best':>8} {'/ history':>10}")
    for label, times in rows:
        med = statistics.median(times)
        print(f"{label:34} {med:8.1f} {min(times):8.1f} {med / ref:10.2f}")
    view_ms = statistics.median(rows[2][1])
    print(f"\nview page {view_ms:.0f} ms: target <= 300 ms {'met' if view_ms <= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
