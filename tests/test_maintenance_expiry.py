"""Snapshot expiry: tags, branches and sync watermarks survive, time travel to kept snapshots works, and the
files only expired snapshots used are deleted."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import AuditFailed, UsageError
from featurelake.lakehouse import wap
from featurelake.maintenance.files import list_files, metadata_dir
from tests.helpers import START, day, transactions, write_source
from tests.maintenance_helpers import LATER, VIEW, age_files, local, rows, stored, table, unreachable


def main_id(fl: featurelake.Featurelake) -> int:
    sid = wap.main_snapshot_id(table(fl))
    assert sid is not None
    return sid


def tag(fl: featurelake.Featurelake, name: str, sid: int) -> None:
    table(fl).manage_snapshots().create_tag(sid, name).commit()


def correct_days(project_dir: Path, first: int, days: int, seed: int) -> None:
    """Extra upstream transactions for some days: recomputing them changes the features."""
    extra = transactions(days=days, start=START + timedelta(days=first), seed=seed, rows_per_day=50)
    write_source(project_dir, extra, name=f"late-{seed}.parquet")


@pytest.fixture
def story(fl: featurelake.Featurelake, project_dir: Path) -> dict[str, int]:
    """A history with a model tag, a sync watermark, a user tag, a corrected window and a refused run."""
    ids: dict[str, int] = {}
    fl.backfill(VIEW, day(0), day(3), run_id="a")
    ids["a"] = main_id(fl)
    tag(fl, "model-churn-1.0.0", ids["a"])
    fl.backfill(VIEW, day(3), day(6), run_id="b")
    ids["b"] = main_id(fl)
    correct_days(project_dir, 0, 2, seed=5)
    fl.backfill(VIEW, day(0), day(2), run_id="c")  # not tagged: expires
    ids["c"] = main_id(fl)
    fl.backfill(VIEW, day(6), day(8), run_id="d")
    ids["d"] = main_id(fl)
    tag(fl, "online-sync-sqlite", ids["d"])
    correct_days(project_dir, 6, 1, seed=6)
    fl.backfill(VIEW, day(6), day(7), run_id="e")
    ids["e"] = main_id(fl)
    tag(fl, "release-2024", ids["c"])  # a user tag keeps c after all
    fl.backfill(VIEW, day(8), day(10), run_id="f")
    ids["f"] = main_id(fl)
    write_source(
        project_dir,
        transactions(days=2, start=START + timedelta(days=20), null_share=0.6, seed=9),
        name="bad.parquet",
    )
    with pytest.raises(AuditFailed):
        fl.backfill(VIEW, day(20), day(22), run_id="bad")
    ids["bad"] = wap.ref_snapshot_id(table(fl), "audit_bad") or 0
    return ids


def test_expiry_keeps_every_tag_branch_and_watermark_and_deletes_the_rest(
    fl: featurelake.Featurelake, story: dict[str, int]
) -> None:
    tbl = table(fl)
    snapshots_before = {s.snapshot_id for s in tbl.metadata.snapshots}
    reads = {k: rows(fl.read(VIEW, snapshot_id=sid)) for k, sid in story.items()}
    files_before = stored(tbl)

    (report,) = fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + LATER)

    e = report.expiry
    assert e is not None and e.expired and e.deleted and e.bytes_reclaimed > 0
    tbl = table(fl)
    kept = {s.snapshot_id for s in tbl.metadata.snapshots}
    assert kept == set(e.kept) and kept | set(e.expired) == snapshots_before
    # Tags, the refused run's branch and main's head survive, and read exactly as before.
    assert e.kept[story["a"]] == "tag model-churn-1.0.0"
    assert e.kept[story["c"]] == "tag release-2024"
    assert e.kept[story["f"]] == "head of branch main"
    assert e.kept[story["bad"]] == "head of branch audit_bad"
    for key in ("a", "c", "d", "e", "f", "bad"):
        assert rows(fl.read(VIEW, snapshot_id=story[key])) == reads[key], key
    # The watermark's whole line to main's head is kept: an incremental sync can resume from it.
    assert wap.is_ancestor(tbl, story["d"], story["f"])
    assert "between tag online-sync-sqlite and the head of main" in e.kept[story["e"]]
    # b is on no tag and older than the cutoff: gone, and a read says so.
    assert story["b"] in e.expired
    with pytest.raises(UsageError, match=f"snapshot {story['b']} does not exist .*expired"):
        fl.read(VIEW, snapshot_id=story["b"])
    # Every kept snapshot still reads (no file it needs was deleted) ...
    for sid in kept:
        tbl.scan(snapshot_id=sid).to_arrow()
    # ... the deleted files are gone, and nothing unreachable is left behind.
    assert all(not local(f).exists() for f in e.deleted)
    assert set(e.deleted) <= set(files_before)
    assert unreachable(tbl) == []
    new_metadata = local(tbl.metadata_location).stat().st_size  # the expiry commit's metadata file
    assert report.files_after == report.files_before - len(e.deleted) + 1
    assert report.bytes_after == report.bytes_before - e.bytes_reclaimed + new_metadata
    # Refs are never removed.
    assert set(tbl.metadata.refs) == {
        "main",
        "audit_bad",
        "model-churn-1.0.0",
        "online-sync-sqlite",
        "release-2024",
    }


def test_dry_run_lists_the_same_plan_and_changes_nothing(
    fl: featurelake.Featurelake, story: dict[str, int]
) -> None:
    later = datetime.now(UTC) + LATER
    tbl = table(fl)
    location, files = tbl.metadata_location, stored(tbl)
    (dry,) = fl.maintain(VIEW, expire=True, dry_run=True, now=later)
    assert table(fl).metadata_location == location and stored(table(fl)) == files
    (real,) = fl.maintain(VIEW, expire=True, now=later)
    assert dry.expiry is not None and real.expiry is not None
    assert dry.expiry.expired == real.expiry.expired and dry.expiry.kept == real.expiry.kept
    assert sorted(dry.expiry.deleted) == sorted(real.expiry.deleted)
    assert dry.expiry.bytes_reclaimed == real.expiry.bytes_reclaimed
    assert dry.files_after == real.files_after


def test_retain_last_and_time_travel(fl: featurelake.Featurelake) -> None:
    mains = []
    for i in range(5):
        fl.backfill(VIEW, day(2 * i), day(2 * i + 2), run_id=f"r{i}")
        mains.append(main_id(fl))
    published = {s.snapshot_id: s.published_at for s in fl.history(VIEW)}
    r3 = published[mains[3]]
    assert r3 is not None
    as_of = r3 + timedelta(milliseconds=1)  # between r3 and r4 being published
    at_r3 = rows(fl.read(VIEW, as_of=as_of))
    # A branch asking for more history than the default keeps it for its own line.
    table(fl).manage_snapshots().create_branch(mains[2], "keep3", min_snapshots_to_keep=3).commit()

    (report,) = fl.maintain(VIEW, expire=True, retain_last=3, now=datetime.now(UTC) + LATER)

    e = report.expiry
    assert e is not None
    # Disjoint windows: one snapshot per backfill. Main keeps r4, r3, r2; keep3 keeps r2, r1, r0.
    assert wap.ancestors(table(fl), main_id(fl)) == mains[::-1]
    assert e.kept[mains[3]] == "one of the last 3 of branch main"
    assert e.kept[mains[1]] == e.kept[mains[0]] == "one of the last 3 of branch keep3"
    assert len(e.expired) == 1  # the empty snapshot `apply` made
    assert rows(fl.read(VIEW, as_of=as_of)) == at_r3  # time travel to a kept point in time
    oldest = min(s.timestamp_ms for s in table(fl).metadata.snapshots)
    with pytest.raises(UsageError, match="had no data at"):
        fl.read(VIEW, as_of=datetime.fromtimestamp(oldest / 1000 - 3600, UTC))


def test_tag_created_during_expiry_is_honoured(
    fl: featurelake.Featurelake, project_dir: Path, story: dict[str, int]
) -> None:
    target = story["b"]
    tagged: list[str] = []

    with featurelake.open(project_dir) as registry_like:

        def tag_once(msg: str) -> None:
            if "removing" in msg and not tagged:
                # A model is registered on snapshot b while expiry is about to commit.
                tag(registry_like, "model-late-1.0.0", target)
                tagged.append(msg)

        before = rows(fl.read(VIEW, snapshot_id=target))
        (report,) = fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + LATER, progress=tag_once)

    e = report.expiry
    assert tagged and e is not None and e.attempts == 2
    assert any("changed concurrently" in n for n in e.notes)
    assert e.kept[target] == "tag model-late-1.0.0"
    assert "model-late-1.0.0" in table(fl).metadata.refs
    assert rows(fl.read(VIEW, snapshot_id=target)) == before


def test_unsafe_expiry_is_refused_and_changes_nothing(
    fl: featurelake.Featurelake, story: dict[str, int]
) -> None:
    tbl = table(fl)
    location, files = tbl.metadata_location, stored(tbl)
    with pytest.raises(UsageError) as info:
        fl.maintain(VIEW, expire=True, expire_older_than="10m")
    assert "--expire-older-than 0:10:00 is under 1 hour" in str(info.value) and "--force" in str(info.value)
    with pytest.raises(UsageError, match="--retain-last 0 would expire the current snapshot"):
        fl.maintain(VIEW, expire=True, retain_last=0)
    assert table(fl).metadata_location == location and stored(table(fl)) == files
    # With --force a short age is allowed (nothing reads old snapshots in this test).
    (forced,) = fl.maintain(VIEW, expire=True, expire_older_than="0s", force=True)
    assert forced.expiry is not None and forced.expiry.expired


def test_stale_metadata_files_are_deleted_but_not_a_pending_commit(fl: featurelake.Featurelake) -> None:
    tbl = table(fl)
    with tbl.transaction() as txn:
        txn.set_properties({"write.metadata.previous-versions-max": "2"})
    for i in range(3):
        fl.backfill(VIEW, day(i), day(i + 1), run_id=f"m{i}")
    tbl = table(fl)
    mdir = metadata_dir(tbl)
    jsons = [f.uri for f in list_files(tbl.io, mdir) if f.uri.endswith(".metadata.json")]
    logged = {tbl.metadata_location, *(m.metadata_file for m in tbl.metadata.metadata_log)}
    stale = [u for u in jsons if u not in logged]
    assert len(stale) > 3 and len(logged) == 3
    age_files(stale, timedelta(days=2))
    age_files(sorted(logged), timedelta(days=1))
    # A commit in flight has written its next metadata file but not swapped it in yet.
    pending = local(tbl.metadata_location).with_name("99999-pending.metadata.json")
    pending.write_text(local(tbl.metadata_location).read_text())

    (report,) = fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + LATER)

    assert report.expiry is not None
    assert set(stale) <= set(report.expiry.deleted)
    assert all(local(u).exists() for u in logged) and pending.exists()
    assert not any(local(u).exists() for u in stale)
    assert rows(fl.read(VIEW)) == rows(table(fl).scan().to_arrow())


def test_a_models_training_set_and_the_online_sync_survive_expiry(
    fl: featurelake.Featurelake, project_dir: Path, tmp_path: Path
) -> None:
    """The registry's and the sync's tags, end to end: same training set, incremental sync after expiry."""
    fl.backfill(VIEW, day(0), day(5), run_id="train")
    entities = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 4], pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(days=d, hours=12) for d in (1, 2, 3, 4)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    ts = fl.training_set(entities, ["user_features:amount_avg_1d", "user_features:txn_count_1d"])
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    fl.models.register("churn", artifact, "pickle", training_set=ts)
    first = fl.sync(VIEW)
    assert first[0].tag and first[0].tag.startswith("online-sync-")
    correct_days(project_dir, 1, 3, seed=11)  # later corrections change the training days' features
    fl.backfill(VIEW, day(1), day(4), run_id="fix")
    fl.backfill(VIEW, day(5), day(8), run_id="more")
    assert fl.training_set(entities, ["user_features:amount_avg_1d", "user_features:txn_count_1d"]) != ts

    (report,) = fl.maintain(VIEW, compact=True, expire=True, now=datetime.now(UTC) + LATER)

    assert report.expiry is not None and report.expiry.expired
    again = fl.training_set(entities, provenance=ts)
    assert again.equals(ts) and again.schema.metadata == ts.schema.metadata
    second = fl.sync(VIEW)
    assert second[0].mode == "incremental", second[0].reason
    latest = fl.read(VIEW).sort_by([("event_ts", "ascending")]).to_pylist()
    newest = {r["user_id"]: r for r in latest}  # each user's latest row
    last_day = max(r["event_ts"] for r in latest)
    keys = sorted(k for k, r in newest.items() if r["event_ts"] == last_day)[:3]
    got = fl.online.get(VIEW, keys, now=last_day + timedelta(hours=1))
    assert [r.values["amount_avg_1d"] for r in got] == [newest[k]["amount_avg_1d"] for k in keys]
    assert [r.status for r in got] == ["PRESENT"] * len(keys)


def test_as_of_a_time_of_an_expired_snapshot_is_not_answered_with_an_older_one(
    fl: featurelake.Featurelake,
) -> None:
    mains = []
    for i in range(5):
        fl.backfill(VIEW, day(2 * i), day(2 * i + 2), run_id=f"r{i}")
        mains.append(main_id(fl))
    tag(fl, "model-old-1.0.0", mains[0])
    published = {s.snapshot_id: s.published_at for s in fl.history(VIEW)}
    r1, r3 = published[mains[1]], published[mains[3]]
    assert r1 is not None and r3 is not None
    when_r1 = r1 + timedelta(milliseconds=1)  # main was r1 then
    when_r3 = r3 + timedelta(milliseconds=1)
    at_r0, at_r3 = rows(fl.read(VIEW, snapshot_id=mains[0])), rows(fl.read(VIEW, as_of=when_r3))

    (report,) = fl.maintain(VIEW, expire=True, retain_last=2, now=datetime.now(UTC) + LATER)

    assert report.expiry is not None and {mains[1], mains[2]} <= set(report.expiry.expired)
    # r1 is gone: the answer for that time is "no data", never r0's rows (which main had moved past).
    with pytest.raises(UsageError, match="had no data at"):
        fl.read(VIEW, as_of=when_r1)
    assert rows(fl.read(VIEW, as_of=when_r3)) == at_r3
    assert rows(fl.read(VIEW, snapshot_id=mains[0])) == at_r0  # the tagged snapshot, by id
    assert [e.snapshot_id for e in table(fl).metadata.snapshot_log] == [mains[3], mains[4]]
