"""Builders and probes shared by the maintenance tests."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from pyiceberg.table import Table

import featurelake
from featurelake.maintenance import checksum
from featurelake.maintenance.files import ManifestReader, list_files, reachable

VIEW = "user_features"
#: An "8 days later" clock: every snapshot made by a test is older than the default 7-day cutoff.
LATER = timedelta(days=8)


def table(fl: featurelake.Featurelake) -> Table:
    return fl.project.load_table(VIEW)


def current_id(tbl: Table) -> int:
    """The id of ``tbl``'s current snapshot (the tables of these tests always have one)."""
    snapshot = tbl.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id


def rows(t: pa.Table) -> list[dict]:
    return t.sort_by([(c, "ascending") for c in ("user_id", "event_ts")]).to_pylist()


def fingerprint(t: pa.Table) -> tuple[int, int]:
    return checksum(t)


def small_appends(tbl: Table, data: pa.Table, size: int) -> Table:
    """Append ``data`` again in slices of ``size`` rows: many small files, one snapshot each."""
    for i in range(0, data.num_rows, size):
        tbl.append(data.slice(i, size))
    return tbl


def live_data_files(tbl: Table) -> list[str]:
    snap = tbl.current_snapshot()
    if snap is None:
        return []
    return [e.data_file.file_path for m in snap.manifests(tbl.io) for e in m.fetch_manifest_entry(tbl.io)]


def stored(tbl: Table) -> dict[str, int]:
    """Every file under the table location with its size."""
    return {f.uri: f.size for f in list_files(tbl.io, tbl.metadata.location)}


def unreachable(tbl: Table) -> list[str]:
    """Files under the table location that no metadata reaches (what orphan removal would consider)."""
    keep = reachable(tbl.metadata, tbl.metadata_location, ManifestReader(tbl.io)).all()
    return sorted(f.uri for f in list_files(tbl.io, tbl.metadata.location) if f.key not in keep)


def age_files(paths: list[str], age: timedelta) -> None:
    """Set the modification time of local ``file://`` paths to ``age`` ago."""
    t = (datetime.now(UTC) - age).timestamp()
    for p in paths:
        os.utime(p.removeprefix("file://"), (t, t))


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def appended_batch(i: int) -> pa.Table:
    """Rows another process appends (users 20000+, one day each): deterministic, so tests can expect them."""
    users = pa.array([20_000 + 10 * i + k for k in range(10)], pa.int64())
    ts = pa.array([datetime(2024, 1, 1 + i % 5, tzinfo=UTC)] * 10, pa.timestamp("us", tz="UTC"))
    schema = pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),  # required columns need non-null Arrow fields
            pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("txn_count_1d", pa.int64()),
            pa.field("amount_sum_1d", pa.float64()),
            pa.field("amount_avg_1d", pa.float64()),
        ]
    )
    return pa.table(
        [
            users,
            ts,
            pa.array([i + k for k in range(10)], pa.int64()),
            pa.array([float(i * k) for k in range(10)], pa.float64()),
            pa.array([float(k) for k in range(10)], pa.float64()),
        ],
        schema=schema,
    )
