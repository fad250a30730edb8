"""Orphan removal: old unreferenced files go; a running backfill's uncommitted files stay and it publishes."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.table.update import AddSnapshotUpdate, SetSnapshotRefUpdate

import featurelake
from featurelake.errors import FeaturelakeError, UsageError
from featurelake.maintenance import orphans
from featurelake.maintenance.files import StoredFile
from tests.helpers import day, make_project
from tests.maintenance_helpers import (
    LATER,
    VIEW,
    age_files,
    current_id,
    live_data_files,
    local,
    rows,
    stored,
    table,
    unreachable,
)


def plant_orphans(fl: featurelake.Featurelake, age: timedelta) -> list[str]:
    """Leftovers of a crashed writer: a data file and a manifest nobody references, ``age`` old."""
    tbl = table(fl)
    data = local(live_data_files(tbl)[0])
    planted = [
        data.with_name("00000-0-crashed-writer.parquet"),
        local(tbl.metadata_location).with_name("crashed-m0.avro"),
    ]
    shutil.copy(data, planted[0])
    planted[1].write_bytes(b"not referenced")
    uris = ["file://" + str(p) for p in planted]
    age_files(uris, age)
    return uris


def is_branch_write(updates: tuple[Any, ...]) -> bool:
    return any(isinstance(u, AddSnapshotUpdate) for u in updates) and any(
        isinstance(u, SetSnapshotRefUpdate) and u.ref_name.startswith("audit_") for u in updates
    )


def test_inflight_backfill_files_survive_and_the_backfill_publishes(
    fl: featurelake.Featurelake, project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl.backfill(VIEW, day(0), day(3), run_id="first")
    planted = plant_orphans(fl, timedelta(days=4))
    seen: dict[str, Any] = {}
    real_commit = fl.project.catalog.commit_table

    with featurelake.open(project_dir) as cron:

        def commit_table(tbl: Any, requirements: Any, updates: Any) -> Any:
            if is_branch_write(updates) and not seen:
                # The backfill has written its data files and manifests; its commit has not happened.
                seen["uncommitted"] = [u for u in unreachable(table(cron)) if u not in planted]
                (seen["would"],) = cron.maintain(
                    VIEW, remove_orphans=True, orphan_min_age="0s", force=True, dry_run=True
                )
                (seen["report"],) = cron.maintain(VIEW, remove_orphans=True)  # the default 3-day safety age
                seen["present"] = [u for u in seen["uncommitted"] if local(u).exists()]
            return real_commit(tbl, requirements, updates)

        monkeypatch.setattr(fl.project.catalog, "commit_table", commit_table)
        result = fl.backfill(VIEW, day(3), day(6), run_id="inflight")

    uncommitted = seen["uncommitted"]
    assert any(u.endswith(".parquet") for u in uncommitted) and any(u.endswith(".avro") for u in uncommitted)
    # Without the safety age they would have been deleted (the dry run proves the test is not vacuous) ...
    assert set(uncommitted) <= set(seen["would"].orphans.orphans)
    # ... with it, only the old leftovers went; the backfill's files were kept and reported as too young.
    report = seen["report"].orphans
    assert sorted(report.orphans) == sorted(planted) and report.bytes_reclaimed > 0
    assert set(uncommitted) <= set(report.too_young)
    assert seen["present"] == uncommitted
    assert not any(local(p).exists() for p in planted)
    # The backfill published, and its rows read back from the files that survived.
    assert result.snapshot_id == current_id(table(fl))
    ref = make_project(tmp_path / "ref")
    with featurelake.open(ref) as clean:
        clean.apply()
        clean.backfill(VIEW, day(0), day(3))
        clean.backfill(VIEW, day(3), day(6))
        assert rows(fl.read(VIEW)) == rows(clean.read(VIEW))
    assert unreachable(table(fl)) == []


def test_maintenance_while_a_backfill_waits_to_publish(
    fl: featurelake.Featurelake, project_dir: Path, tmp_path: Path
) -> None:
    """Compaction, expiry and orphan removal between a backfill's audit and its publish: it still publishes."""
    fl.backfill(VIEW, day(0), day(4), run_id="first")
    for i in range(3):
        fl.backfill(VIEW, day(i), day(i + 1), run_id=f"redo{i}")
    small = fl.read(VIEW).slice(0, 40)
    table(fl).append(
        small.set_column(0, small.schema.field(0), pa.array([9000 + i for i in range(40)], pa.int64()))
    )
    done: list[Any] = []

    with featurelake.open(project_dir) as cron:

        def maintain_now(msg: str) -> None:
            if msg.startswith("audit passed") and not done:
                done.extend(cron.maintain(VIEW, now=datetime.now(UTC) + LATER))

        result = fl.backfill(VIEW, day(4), day(7), run_id="waiting", progress=maintain_now)

    (report,) = done
    assert report.compaction and report.compaction.snapshot_id  # main moved under the waiting backfill
    assert report.expiry and report.expiry.expired and report.expiry.deleted
    assert "head of branch audit_waiting" in report.expiry.kept.values()  # the waiting run's branch
    assert result.rebases == 1  # main had moved: rebased onto the compacted main, re-audited, published
    ref = make_project(tmp_path / "ref")
    with featurelake.open(ref) as clean:
        clean.apply()
        clean.backfill(VIEW, day(0), day(7))
        expected = rows(clean.read(VIEW))
    got = fl.read(VIEW)
    got_features = [r for r in rows(got) if r["user_id"] < 9000]
    assert got_features == expected
    assert sum(1 for r in rows(got) if r["user_id"] >= 9000) == 40
    for s in table(fl).metadata.snapshots:  # every remaining snapshot is readable
        table(fl).scan(snapshot_id=s.snapshot_id).to_arrow()


def test_short_safety_age_is_refused_and_deletes_nothing(fl: featurelake.Featurelake) -> None:
    fl.backfill(VIEW, day(0), day(2), run_id="a")
    planted = plant_orphans(fl, timedelta(days=4))
    files = stored(table(fl))
    with pytest.raises(UsageError) as info:
        fl.maintain(VIEW, remove_orphans=True, orphan_min_age="30m")
    msg = str(info.value)
    assert "--orphan-min-age 0:30:00 is under 1 hour" in msg and "running" in msg and "--force" in msg
    assert stored(table(fl)) == files and all(local(p).exists() for p in planted)
    (report,) = fl.maintain(VIEW, remove_orphans=True, orphan_min_age="2h")
    assert report.orphans is not None and sorted(report.orphans.orphans) == sorted(planted)


def test_a_table_nested_in_the_location_is_not_touched(fl: featurelake.Featurelake) -> None:
    fl.backfill(VIEW, day(0), day(2), run_id="a")
    outer = table(fl)
    cat = fl.project.catalog
    cat.create_namespace("scratch")
    nested = cat.create_table(
        "scratch.inside",
        schema=pa.schema([pa.field("x", pa.int64())]),
        location=outer.metadata.location + "/nested_table",
    )
    nested.append(pa.table({"x": pa.array([1, 2, 3], pa.int64())}))
    nested_files = [u for u in stored(outer) if "/nested_table/" in u]
    assert nested_files
    age_files(nested_files, timedelta(days=10))
    (report,) = fl.maintain(VIEW, remove_orphans=True)
    assert report.orphans is not None and report.orphans.orphans == []
    assert all(local(u).exists() for u in nested_files)
    assert cat.load_table("scratch.inside").scan().to_arrow().num_rows == 3


def test_paths_that_do_not_match_stop_everything(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the listing names files differently from the metadata (another mount, scheme or bucket alias),
    every file would look orphaned: nothing is deleted."""
    fl.backfill(VIEW, day(0), day(2), run_id="a")
    planted = plant_orphans(fl, timedelta(days=4))
    files = stored(table(fl))
    real_list = orphans.list_files

    def elsewhere(io: Any, location: str) -> list[StoredFile]:
        return [
            StoredFile(f.uri.replace("/proj/", "/mirror/proj/"), f.size, f.modified)
            for f in real_list(io, location)
        ]

    monkeypatch.setattr(orphans, "list_files", elsewhere)
    with pytest.raises(FeaturelakeError) as info:
        fl.maintain(VIEW, remove_orphans=True)
    assert "orphan removal in features.user_features stopped" in str(info.value)
    assert "nothing was deleted" in str(info.value)
    assert stored(table(fl)) == files and all(local(p).exists() for p in planted)
