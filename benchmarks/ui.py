"""Benchmark: the web UI's pages of a view with a long history (issue 20: <= 300 ms with 2,000 snapshots).

Builds a project whose view has ``--snapshots`` snapshots on main (default 2,000: one published backfill, then
small appends carrying the usual lineage properties, committed straight through PyIceberg, which is much
faster than as many backfills). Then times, through Starlette's
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import day, make_project

import featurelake
from featurelake.lakehouse import lineage

VIEW = "user_features"


def build(root: Path, snapshots: int) -> None:
    make_project(root)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        tbl = fl.project.load_table(VIEW)
        row = fl.read(VIEW).slice(0, 1)
        t0 = time.perf_counter()
        for i in range(snapshots - len(fl.history(VIEW))):
            props = lineage.lineage_properties(root, f"append{i:05d}", **{lineage.VIEW: VIEW})
            tbl.append(row, snapshot_properties=props)
            if i % 250 == 0:
                print(f"  {i} appends, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        assert len(fl.history(VIEW)) == snapshots


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
