"""The law of bounded memory, not a number: a backfill and a sync of a window whose Arrow size is several
times the memory they are allowed beyond a small piece of it succeed under that cap and publish every row; the same
window in one piece stops with a message naming the setting to lower instead of an unexplained MemoryError.

Each job runs in a subprocess (``tests/scale_child.py``) that first does the same job on a small piece (a
backfill of two days in batches of a day, as the window; a sync of one day's rows, one group), then caps its
own address space (``RLIMIT_AS``: virtual memory, which DuckDB, Arrow and the thread pools reserve
generously) at its peak so far plus ``BUDGET``, then runs the whole window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.errors import AuditFailed
from tests.helpers import START, day
from tests.scale_child import KEPT

pytestmark = pytest.mark.slow

DAYS = 16
ROWS = 3_200_000  # 200k rows a day
USERS = 50_000
BUDGET = 32 * 1024**2  # what the whole window may add to the small piece's peak
COLUMNS = 4  # float64 features besides user_id and event_ts

FEATURES = """
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id")
fields = {f"f{i}": "double" for i in range(NCOLS)}
big = FeatureView(
    name="big", entity=user, source=Source.parquet("data/events/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source", timestamp_field="event_ts", fields=fields,
)
warm = FeatureView(
    name="warm", entity=user, source=Source.parquet("data/events/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source", timestamp_field="event_ts", fields=fields,
)
warm1 = FeatureView(
    name="warm1", entity=user, source=Source.parquet("data/events/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source", timestamp_field="event_ts", fields=fields,
)
""".replace("NCOLS", str(COLUMNS))


def write_events(data: Path) -> int:
    """ROWS events over DAYS days, one Parquet file a day; returns the Arrow size of the whole window."""
    data.mkdir(parents=True)
    rng = np.random.default_rng(7)
    per_day = ROWS // DAYS
    size = 0
    base = int(START.timestamp()) * 1_000_000
    for d in range(DAYS):
        micros = np.sort(rng.integers(0, 86_400_000_000, per_day)) + base + d * 86_400_000_000
        table = pa.table(
            {
                "user_id": pa.array(rng.integers(1, USERS + 1, per_day), pa.int64()),
                "event_ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
                **{f"f{i}": pa.array(rng.random(per_day)) for i in range(COLUMNS)},
            }
        )
        size += table.nbytes
        pq.write_table(table, data / f"{(START + timedelta(days=d)).date()}.parquet")
    return size


def run_capped(root: Path, job: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.scale_child", str(root), job, str(BUDGET), day(0), day(2), day(DAYS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert proc.returncode == 0, f"{job} child exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{job} child printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return dict(json.loads(lines[-1]))


#: The same views with a row limit read from the environment: a run with SCALE_MAX_ROWS=1 is refused by its
#: audit and its branch kept; without it the branch passes its re-audit.
KEPT_FEATURES = "import os\n" + FEATURES.replace(
    "fields=fields,\n)",
    'fields=fields,\n    checks=[checks.row_count(max=int(os.environ.get("SCALE_MAX_ROWS", "1000000000")))],\n)',
).replace(
    "from featurelake import Entity, FeatureView, Source",
    "from featurelake import Entity, FeatureView, Source, checks",
)


def project(root: Path, batch_days: int, sync_batch_rows: int = 200_000, features: str = FEATURES) -> int:
    size = write_events(root / "data" / "events")
    (root / "featurelake.yaml").write_text(
        f"project: scale\nnamespace: features\nbackfill:\n  batch_days: {batch_days}\n  batch_min_rows: 0\n"
        f"online_store:\n  sync_batch_rows: {sync_batch_rows}\n"
    )
    (root / "features.py").write_text(textwrap.dedent(features))
    return size


def test_backfill_and_sync_of_a_window_several_times_the_cap_publish_every_row(tmp_path: Path) -> None:
    size = project(tmp_path, batch_days=1)
    assert size >= 4 * BUDGET  # the window's Arrow size is several times what the jobs may add
    backfill = run_capped(tmp_path, "backfill")
    assert "error" not in backfill, backfill
    assert backfill["rows"] == ROWS and backfill["snapshots"] == 1
    assert backfill["vm_peak"] <= backfill["cap"]
    sync = run_capped(tmp_path, "sync")
    assert "error" not in sync, sync
    assert (sync["mode"], sync["rows"]) == ("full", ROWS)
    assert sync["keys"] == USERS


def test_the_same_window_in_one_piece_stops_naming_the_setting(tmp_path: Path) -> None:
    """The cap is real: without batches the window does not fit, and the error says what to change."""
    project(tmp_path, batch_days=0)
    backfill = run_capped(tmp_path, "backfill")
    assert "error" in backfill, backfill
    assert backfill["error"].startswith("ConfigError: view 'big': out of memory"), backfill
    assert "set backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS) to 1 (now 0)" in backfill["error"]


def test_a_sync_reading_the_window_at_once_stops_naming_the_setting(tmp_path: Path) -> None:
    project(tmp_path, batch_days=1, sync_batch_rows=ROWS)
    assert run_capped(tmp_path, "backfill")["rows"] == ROWS
    sync = run_capped(tmp_path, "sync")
    assert "error" in sync, sync
    assert sync["error"].startswith("ConfigError: view 'big': out of memory syncing full"), sync
    # Refused before reading (the group's size against the room left), not by a native allocation failing.
    assert f"reading {ROWS:,} rows of big at once needs about" in sync["error"], sync
    assert (
        f"lower online_store.sync_batch_rows (FEATURELAKE_ONLINE_STORE__SYNC_BATCH_ROWS, now {ROWS})"
        in (sync["error"])
    )


def test_reaudit_and_publish_of_a_kept_branch_several_times_the_cap(tmp_path: Path) -> None:
    """A kept branch is re-audited and published file by file under the cap a batched backfill runs in; the
    same re-audit reading the window into memory (the fallback) stops under it."""
    size = project(tmp_path, batch_days=1, features=KEPT_FEATURES)
    assert size >= 4 * BUDGET
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCALE_MAX_ROWS", "1")  # every run refused: its branch kept
        with featurelake.open(tmp_path) as fl:
            fl.apply()
            for view, end in (("warm", day(2)), ("warm1", day(1)), ("big", day(DAYS))):
                with pytest.raises(AuditFailed):
                    fl.backfill(view, day(0), end, run_id=KEPT)
    read = run_capped(tmp_path, "reaudit-read")
    # Out of memory under the cap, said as such: what ran out, and the way out.
    assert read["streamed"] is False, read
    assert read["error"].startswith(
        f"ConfigError: view 'big': out of memory re-auditing branch audit_{KEPT} "
    ), read
    assert (
        f"featurelake discard big --run-id {KEPT}" in read["error"] and "backfill.batch_days" in read["error"]
    )
    streamed = run_capped(tmp_path, "reaudit")
    assert streamed["streamed"] is True and "error" not in streamed, streamed
    assert (streamed["audit_rows"], streamed["audit_passed"]) == (ROWS, True)
    assert (streamed["rows"], streamed["rebases"]) == (ROWS, 0)
    assert streamed["vm_peak"] <= streamed["cap"]
    with featurelake.open(tmp_path) as fl:
        assert fl.project.load_table("big").scan().count() == ROWS
