"""Table maintenance on Spark: Iceberg's procedures under featurelake's retention, safety age and report."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import featurelake
from featurelake.errors import DataError
from featurelake.lakehouse import lineage, wap
from featurelake.maintenance import RetentionPolicy
from featurelake.maintenance import spark as spark_maintenance
from featurelake.maintenance.expiry import plan_retention
from tests.helpers import day, make_project, transactions
from tests.maintenance_helpers import (
    LATER,
    VIEW,
    age_files,
    fingerprint,
    live_data_files,
    local,
    rows,
    small_appends,
    stored,
    table,
)
from tests.spark_support import engine_config

pytestmark = pytest.mark.spark


def scan(fl: featurelake.Featurelake, snapshot_id: int | None = None) -> pa.Table:
    """The table read with PyIceberg (independent of the engine under test)."""
    return table(fl).scan(snapshot_id=snapshot_id).to_arrow()


@pytest.fixture
def small_files(spark: Any, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    """Days 0-4 backfilled, then appended again (other users) in slices of 17 rows: many small files,
    one snapshot each. Written locally, maintained on the Spark engine."""
    root = make_project(tmp_path / "proj", data=transactions(days=6))
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="base")
        data = scan(fl)
        i = data.schema.get_field_index("user_id")
        shifted = data.set_column(i, data.schema.field(i), pc.add(data.column("user_id"), 1000))
        small_appends(table(fl), shifted, 17)
    (root / "featurelake.yaml").write_text(engine_config("spark"))
    with featurelake.open(root) as fl:
        yield fl


def test_spark_compaction_keeps_every_row_and_records_lineage(small_files: featurelake.Featurelake) -> None:
    fl = small_files
    tbl = table(fl)
    old_id = tbl.metadata.current_snapshot_id
    before, files_before = scan(fl), live_data_files(tbl)

    (report,) = fl.maintain(VIEW, compact=True)

    assert fl.project.__dict__["engine"].name == "spark"
    c = report.compaction
    assert c is not None and c.snapshot_id is not None and c.attempts == 1
    tbl = table(fl)
    files_after = live_data_files(tbl)
    assert tbl.metadata.current_snapshot_id == c.snapshot_id
    assert len(files_after) == c.data_files_after == 5 < len(files_before) == c.data_files_before
    assert c.files_rewritten == len(files_before) and c.files_written == 5
    assert sorted(g.partition for g in c.groups) == [f"event_ts_day={day(d)}" for d in range(5)]
    assert sum(g.rows for g in c.groups) == before.num_rows
    assert all(Path(urlparse(o).path).is_file() for g in c.groups for o in g.outputs)  # Spark writes file:/x
    # The same rows and values at the new snapshot, and the old snapshot still reads its old files.
    assert fingerprint(scan(fl)) == fingerprint(before) and rows(scan(fl)) == rows(before)
    assert fingerprint(scan(fl, old_id)) == fingerprint(before)
    # Iceberg's commit carries featurelake's lineage, so history shows it as a compaction.
    snap = tbl.metadata.snapshot_by_id(c.snapshot_id)
    assert snap is not None and snap.summary is not None and snap.parent_snapshot_id == old_id
    props = snap.summary.additional_properties
    assert props[lineage.OPERATION] == "compaction" and props[lineage.VIEW] == VIEW
    assert props[lineage.RUN_ID].startswith("maintain_") and props[lineage.PIPELINE_USER] == "test-user"
    assert props["engine-name"] == "spark"
    assert report.files_after > report.files_before  # the old files stay for old snapshots until expiry
    (again,) = fl.maintain(VIEW, compact=True)
    assert again.compaction is not None and again.compaction.snapshot_id is None
    assert table(fl).metadata.current_snapshot_id == c.snapshot_id


def test_spark_compaction_whose_rows_differ_is_rolled_back(
    small_files: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fl = small_files
    old_id = table(fl).metadata.current_snapshot_id
    before = fingerprint(scan(fl))
    real = spark_maintenance.checksum
    calls: list[int] = []

    def corrupted_after(*args: Any) -> tuple[int, int]:
        count, total = real(*args)
        calls.append(count)
        return (count - 1, total) if len(calls) == 2 else (count, total)  # the new files "lost" a row

    monkeypatch.setattr(spark_maintenance, "checksum", corrupted_after)
    with pytest.raises(DataError) as info:
        fl.maintain(VIEW, compact=True)
    msg = str(info.value)
    assert "compaction of features.user_features on Spark changed the rows" in msg
    assert f"main was rolled back to snapshot {old_id}" in msg
    assert table(fl).metadata.current_snapshot_id == old_id and fingerprint(scan(fl)) == before


def test_spark_expiry_keeps_tagged_and_branch_snapshots(small_files: featurelake.Featurelake) -> None:
    fl = small_files
    tbl = table(fl)
    line = wap.ancestors(tbl, tbl.metadata.current_snapshot_id)  # newest first
    model, synced, inflight = line[-3], line[4], line[-2]
    tbl.manage_snapshots().create_tag(model, "model-churn-1.0.0").commit()
    table(fl).manage_snapshots().create_tag(synced, "online-sync-redis").commit()
    table(fl).manage_snapshots().create_branch(inflight, "audit_inflight").commit()
    tbl = table(fl)
    refs = {n: r.snapshot_id for n, r in tbl.metadata.refs.items()}
    now = datetime.now(UTC) + LATER
    want_kept = plan_retention(tbl.metadata, now, RetentionPolicy(older_than=timedelta(days=7)))
    at_model = fingerprint(scan(fl, model))
    files = stored(tbl)

    (report,) = fl.maintain(VIEW, expire=True, now=now)

    e = report.expiry
    assert fl.project.__dict__["engine"].name == "spark"
    assert e is not None and e.kept == want_kept
    assert set(e.expired) == {s.snapshot_id for s in tbl.metadata.snapshots} - set(want_kept)
    assert len(e.expired) >= 5
    # Kept: main's head, the line from the online-sync tag to the head, the tagged and the branch snapshots.
    assert {model, synced, inflight, *line[:5]} <= set(want_kept)
    tbl = table(fl)
    assert sorted(s.snapshot_id for s in tbl.metadata.snapshots) == sorted(want_kept)
    assert {n: r.snapshot_id for n, r in tbl.metadata.refs.items()} == refs  # no ref removed or moved
    assert fingerprint(scan(fl, model)) == at_model
    # Iceberg deleted what only the expired snapshots used; the report names those files.
    assert e.deleted and all(f in files and not local(f).exists() for f in e.deleted)
    assert e.bytes_reclaimed == sum(files[f] for f in e.deleted) == report.bytes_reclaimed
    (again,) = fl.maintain(VIEW, expire=True, now=now)
    assert again.expiry is not None and again.expiry.expired == [] and again.expiry.deleted == []


def test_spark_orphan_removal_deletes_old_orphans_and_keeps_young_ones(
    small_files: featurelake.Featurelake,
) -> None:
    fl = small_files
    tbl = table(fl)
    data = local(live_data_files(tbl)[0])
    meta = local(tbl.metadata_location)
    old = [data.with_name("00000-0-crashed-writer.parquet"), meta.with_name("crashed-m0.avro")]
    young = [data.with_name("00000-0-running-backfill.parquet")]
    for path in (old[0], young[0]):
        shutil.copy(data, path)
    old[1].write_bytes(b"not referenced")
    old_uris, young_uris = ["file://" + str(p) for p in old], ["file://" + str(p) for p in young]
    age_files(old_uris, timedelta(days=4))  # the default safety age is 3 days
    before = fingerprint(scan(fl))

    (dry,) = fl.maintain(VIEW, remove_orphans=True, dry_run=True)
    assert dry.orphans is not None and sorted(dry.orphans.orphans) == sorted(old_uris)
    assert all(p.exists() for p in old)
    (report,) = fl.maintain(VIEW, remove_orphans=True)

    o = report.orphans
    assert fl.project.__dict__["engine"].name == "spark"
    assert o is not None and sorted(o.orphans) == sorted(old_uris)
    assert o.bytes_reclaimed == dry.orphans.bytes_reclaimed > 0
    assert young_uris[0] in o.too_young and any("younger than 3 days" in n for n in o.notes)
    assert not any(p.exists() for p in old) and young[0].exists()
    assert fingerprint(scan(fl)) == before
