"""A maintenance process killed at any phase leaves the table readable and consistent; the next run cleans up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

import featurelake
from tests.helpers import day
from tests.maintenance_helpers import LATER, VIEW, current_id, rows, small_appends, table, unreachable

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime, timedelta

    import featurelake
    from featurelake.maintenance import files
    from pyiceberg.catalog.sql import SqlCatalog

    project, phase = sys.argv[1], sys.argv[2]

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def progress(msg: str) -> None:
        print(msg, flush=True)
        if phase == "compaction-files-written" and msg.startswith("compaction") and "verified" in msg:
            die()
        if phase == "expiry-committed" and "committed; finding" in msg:
            die()

    if phase == "compaction-metadata-written":
        real_write = SqlCatalog._write_metadata

        def write_then_die(*args, **kwargs):
            real_write(*args, **kwargs)
            die()  # the new metadata file exists, the catalog still points at the old one

        SqlCatalog._write_metadata = staticmethod(write_then_die)

    if phase == "expiry-deleting":
        real_delete = files.delete_file
        calls = [0]

        def delete_then_die(io, uri):
            calls[0] += 1
            if calls[0] == 3:
                die()
            return real_delete(io, uri)

        files.delete_file = delete_then_die

    with featurelake.open(project) as fl:
        fl.maintain("user_features", now=datetime.now(UTC) + timedelta(days=8), progress=progress)
    print("finished", flush=True)
    """
)

PHASES = ["compaction-files-written", "compaction-metadata-written", "expiry-committed", "expiry-deleting"]


@pytest.mark.parametrize("phase", PHASES)
def test_crash_mid_maintenance_leaves_the_table_readable(
    fl: featurelake.Featurelake, project_dir: Path, tmp_path: Path, phase: str
) -> None:
    fl.backfill(VIEW, day(0), day(4), run_id="a")
    fl.backfill(VIEW, day(1), day(3), run_id="b")
    small_appends(table(fl), fl.read(VIEW).slice(0, 60), 15)
    table(fl).manage_snapshots().create_tag(current_id(table(fl)), "model-m-1.0.0").commit()
    tagged = current_id(table(fl))
    fl.backfill(VIEW, day(4), day(6), run_id="c")
    before = rows(fl.read(VIEW))
    at_tag = rows(fl.read(VIEW, snapshot_id=tagged))
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT)

    out = subprocess.run(
        [sys.executable, str(script), str(project_dir), phase], capture_output=True, text=True, timeout=300
    )

    assert out.returncode == -9, out.stderr  # killed, not finished
    assert "finished" not in out.stdout
    with featurelake.open(project_dir) as after:
        tbl = table(after)
        leftovers = unreachable(tbl)
        assert leftovers  # what the killed run wrote or had not deleted yet
        assert rows(after.read(VIEW)) == before
        assert rows(after.read(VIEW, snapshot_id=tagged)) == at_tag
        for snap in tbl.metadata.snapshots:  # no file any remaining snapshot needs was deleted
            tbl.scan(snapshot_id=snap.snapshot_id).to_arrow()
        # The next scheduled run completes and leaves nothing unreachable behind.
        (report,) = after.maintain(VIEW, now=datetime.now(UTC) + LATER)
        assert report.error is None
        assert rows(after.read(VIEW)) == before
        assert rows(after.read(VIEW, snapshot_id=tagged)) == at_tag
        assert unreachable(table(after)) == []
