"""MicroBatchWriter: conforming rows, idempotency on (key, event timestamp), WAP with the view's audits and
lineage, refused batches kept aside, online writes that never go back in time; the push buffer."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyiceberg.types import FloatType

import featurelake
from featurelake.auditing import wap_run
from featurelake.errors import (
    CatalogUnavailableError,
    ConfigError,
    OnlineStoreUnavailableError,
    RequestError,
    UsageError,
)
from featurelake.features.keys import encode_key
from featurelake.lakehouse import lineage, wap
from featurelake.streaming import REJECTED_TABLE, MicroBatchWriter, last_committed
from featurelake.streaming.buffer import PushBuffer
from featurelake.streaming.microbatch import first_per_event
from tests.online_helpers import project

VIEW = "user_features"


def rows(items: list[tuple[int, datetime, float | None]]) -> dict[str, list[Any]]:
    """Columns of feature rows (user, event time, average); count and sum follow from the average."""
    return {
        "user_id": [i[0] for i in items],
        "event_ts": [i[1].isoformat() for i in items],
        "txn_count_1d": [1 for _ in items],
        "amount_sum_1d": [float(i[2] or 0.0) for i in items],
        "amount_avg_1d": [i[2] for i in items],
    }


def d(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


@pytest.fixture
def fl(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    handle = project(tmp_path / "proj", "sqlite")
    try:
        yield handle
    finally:
        handle.close()


def main_rows(fl: featurelake.Featurelake) -> list[tuple[int, datetime, float | None]]:
    table = fl.read(VIEW)
    return sorted(
        (r["user_id"], r["event_ts"], r["amount_avg_1d"])
        for r in table.select(["user_id", "event_ts", "amount_avg_1d"]).to_pylist()
    )


def test_a_batch_is_published_with_lineage_and_the_callers_summary(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW, operation="ingest")
    result = writer.write(
        rows([(1, d(5), 1.5), (2, d(5, 3), 2.5)]), run_id="mb-1", summary={"stream.offset": "41"}
    )
    assert (result.status, result.written, result.duplicates) == ("published", 2, 0)
    tbl = fl.project.load_table(VIEW)
    assert wap.main_snapshot_id(tbl) == result.snapshot_id
    assert result.snapshot_id is not None
    snap = tbl.metadata.snapshot_by_id(result.snapshot_id)
    assert snap is not None and snap.summary is not None
    props = snap.summary.additional_properties
    assert props[lineage.RUN_ID] == "mb-1"
    assert props[lineage.PIPELINE_USER] == "test-user"
    assert props[lineage.CODE_VERSION]
    assert props[lineage.VIEW] == VIEW and props[lineage.OPERATION] == "ingest"
    assert props["stream.offset"] == "41"
    assert "audit_mb-1" not in tbl.metadata.refs  # audited in memory, appended to main: no branch
    assert snap.parent_snapshot_id is not None  # one commit on main: the batch's snapshot follows apply's
    assert props["featurelake.audit-report"] == ".featurelake/audits/user_features/mb-1.json"
    assert result.report is not None and result.report.passed
    assert main_rows(fl) == [(1, d(5), 1.5), (2, d(5, 3), 2.5)]
    writer.write(rows([(3, d(6), 3.0)]), summary={"stream.offset": "42"})
    writer.write(rows([(4, d(6), 4.0)]))  # a batch without the property: the newest value stays 42
    assert last_committed(fl.project, VIEW, "stream.offset") == "42"
    assert last_committed(fl.project, VIEW, "no.such.key") is None


def test_repeats_within_a_batch_and_against_main_are_written_once(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW)
    first = writer.write(rows([(1, d(5), 1.0), (1, d(5), 9.0), (1, d(6), 2.0)]))
    assert (first.written, first.duplicates) == (2, 1)  # the first value of (1, day 5) wins
    before = wap.main_snapshot_id(fl.project.load_table(VIEW))
    again = writer.write(rows([(1, d(5), 1.0), (1, d(6), 2.0)]))
    assert (again.status, again.written, again.snapshot_id) == ("duplicate", 0, None)
    assert wap.main_snapshot_id(fl.project.load_table(VIEW)) == before  # nothing committed
    mixed = writer.write(rows([(1, d(6), 2.0), (2, d(6), 3.0)]))
    assert (mixed.status, mixed.written, mixed.duplicates) == ("published", 1, 1)
    assert main_rows(fl) == [(1, d(5), 1.0), (1, d(6), 2.0), (2, d(6), 3.0)]
    assert writer.write(rows([])).status == "empty"


def test_a_rebase_drops_rows_another_writer_published_meanwhile(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers with overlapping batches: the one that commits second finds main moved, checks its rows
    against the new main, audits again and writes only the rest (PyIceberg's own commit retry, which would
    re-apply the append on the new main unchecked, is off for this commit)."""
    writer, other = MicroBatchWriter(fl.project, VIEW), MicroBatchWriter(fl.project, VIEW)
    real = wap_run.audit_rows
    raced = threading.Event()
    audited: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        audited.append(args[3].num_rows)
        if not raced.is_set():  # after the audit, before the commit: the other writer wins
            raced.set()
            other.write(rows([(1, d(5), 1.0), (3, d(5), 3.0)]))
        return out

    monkeypatch.setattr(wap_run, "audit_rows", racing)
    result = writer.write(rows([(1, d(5), 1.0), (2, d(5), 2.0)]))
    assert raced.is_set()
    assert (result.status, result.written, result.duplicates) == ("published", 1, 1)
    assert any("main moved" in n for n in result.notes)
    assert audited == [2, 2, 1]  # ours (2 rows), the other writer's, ours again on the new main (1 row)
    assert main_rows(fl) == [(1, d(5), 1.0), (2, d(5), 2.0), (3, d(5), 3.0)]
    assert result.report is not None and result.report.rows == 1  # the audit of what was written


def test_a_refused_batch_leaves_main_unchanged_and_its_rows_aside(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW)
    writer.write(rows([(1, d(5), 1.0)]))
    before = wap.main_snapshot_id(fl.project.load_table(VIEW))
    # null_rate(amount_avg_1d) <= 0.10 is one of the view's checks: 2 nulls of 3 rows fail it.
    result = writer.write(rows([(2, d(6), None), (3, d(6), None), (4, d(6), 4.0)]), run_id="bad-1")
    assert (result.status, result.rejected, result.snapshot_id) == ("refused", 3, None)
    assert result.verdict is not None and "null rate of amount_avg_1d" in result.verdict
    assert any(f"features.{REJECTED_TABLE}" in n for n in result.notes)
    tbl = fl.project.load_table(VIEW)
    assert wap.main_snapshot_id(tbl) == before
    assert "audit_bad-1" not in tbl.metadata.refs
    assert main_rows(fl) == [(1, d(5), 1.0)]
    kept = fl.read(f"features.{REJECTED_TABLE}").to_pylist()
    assert sorted(r["row"].count('"amount_avg_1d": null') for r in kept) == [0, 1, 1]
    assert {(r["view"], r["run_id"]) for r in kept} == {(VIEW, "bad-1")}
    assert all("null rate of amount_avg_1d" in r["verdict"] for r in kept)
    assert all(r["report"] == result.report.report_path for r in kept)  # type: ignore[union-attr]
    # The verdict is in the audit log like a backfill's.
    assert any(a.run_id == "bad-1" and not a.passed for a in fl.audits(VIEW))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"bogus": [1]}, "view user_features has no column 'bogus'"),
        ({"amount_avg_1d": None}, "lack column 'amount_avg_1d'"),
        ({"event_ts": ["2024-01-05 00:00:00"]}, "column 'event_ts' of view user_features"),
        ({"event_ts": [1704412800]}, "ISO 8601 text with an offset"),
        ({"txn_count_1d": ["many"]}, "column 'txn_count_1d' of view user_features holds int64"),
        ({"user_id": [None]}, "null 'user_id'"),
    ],
)
def test_rows_that_do_not_fit_the_view_are_refused_naming_the_column(
    fl: featurelake.Featurelake, change: dict[str, Any], needle: str
) -> None:
    bad = rows([(1, d(5), 1.0)])
    for column, values in change.items():
        if values is None:
            del bad[column]
        else:
            bad[column] = values
    writer = MicroBatchWriter(fl.project, VIEW)
    with pytest.raises(RequestError) as info:
        writer.write(bad)
    assert needle in str(info.value)
    assert main_rows(fl) == []


def test_naive_timestamps_from_pandas_are_refused(fl: featurelake.Featurelake) -> None:
    frame = pa.table(
        {
            "user_id": [1],
            "event_ts": pa.array([datetime(2024, 1, 5)], pa.timestamp("us")),
            "txn_count_1d": [1],
            "amount_sum_1d": [1.0],
            "amount_avg_1d": [1.0],
        }
    ).to_pandas()
    with pytest.raises(RequestError, match="need a time zone"):
        MicroBatchWriter(fl.project, VIEW).write(frame)


def test_lineage_keys_cannot_be_overridden(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW)
    with pytest.raises(UsageError, match="run-id"):
        writer.write(rows([(1, d(5), 1.0)]), summary={lineage.RUN_ID: "x"})
    with pytest.raises(UsageError, match="strings to strings"):
        writer.write(rows([(1, d(5), 1.0)]), summary={"offset": 3})  # type: ignore[dict-item]
    writer.write(rows([(1, d(5), 1.0)]), run_id="once")
    with pytest.raises(UsageError, match="run id once already exists"):
        writer.write(rows([(2, d(5), 1.0)]), run_id="once")


def test_online_writes_keep_the_newest_event_per_key(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW, online=fl.online.store)
    now = d(7)
    assert writer.write_online(writer.conform(rows([(1, d(6), 6.0), (1, d(5), 5.0), (2, d(5), 2.0)]))) == 2
    assert writer.write_online(writer.conform(rows([(1, d(4), 4.0)]))) == 0  # older: ignored
    got = {r.key: r.values["amount_avg_1d"] for r in fl.online.get(VIEW, [1, 2], now=now)}
    assert got == {1: 6.0, 2: 2.0}
    published = writer.write(rows([(2, d(6), 7.0)]))
    assert published.online_keys == 1
    got = {r.key: r.values["amount_avg_1d"] for r in fl.online.get(VIEW, [1, 2], now=now)}
    assert got == {1: 6.0, 2: 7.0}


def test_first_per_event_keeps_the_first_row_in_order() -> None:
    t = pa.table({"k": [2, 1, 2, 1], "ts": [1, 1, 1, 2], "v": ["a", "b", "c", "d"]})
    assert first_per_event(t, ["k"], "ts").column("v").to_pylist() == ["a", "b", "d"]


def test_buffer_keeps_entries_in_order_until_removed(tmp_path: Path) -> None:
    buf = PushBuffer(tmp_path / "push")
    a = pa.table({"x": [1, 2]})
    ids = [buf.append("v", a), buf.append("w", pa.table({"x": [9]})), buf.append("v", pa.table({"x": [3]}))]
    assert ids == sorted(ids)
    assert [(p.view, p.rows, p.entries) for p in buf.pending()] == [("v", 3, 2), ("w", 1, 1)]
    first = buf.take("v", max_rows=2)
    assert first is not None and first.rows.column("x").to_pylist() == [1, 2] and first.last_id == ids[0]
    whole = buf.take("v", max_rows=100)
    assert whole is not None and whole.rows.column("x").to_pylist() == [1, 2, 3]
    assert buf.remove("v", first.last_id) == 1
    buf.close()
    reopened = PushBuffer(tmp_path / "push")  # what survives a restart
    assert [(p.view, p.rows) for p in reopened.pending()] == [("v", 1), ("w", 1)]
    with reopened.flush_lock() as mine, PushBuffer(tmp_path / "push").flush_lock() as theirs:
        assert (mine, theirs) == (True, False)  # one flusher at a time, across processes (flock)
    with reopened.flush_lock(wait=True) as again:  # fl.push waits for another flusher instead
        assert again
    assert reopened.take("nothing", 10) is None


def test_buffer_in_an_unwritable_place_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"push\.buffer"):
        PushBuffer(blocker / "push")


def test_fl_push_offline_publishes_before_returning(fl: featurelake.Featurelake) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    result = fl.push(VIEW, rows([(1, now - timedelta(hours=1), 1.0)]), to="offline")
    assert (result.buffered, result.online_keys) == (1, 0)
    assert [p.status for p in result.published] == ["published"]
    assert main_rows(fl) == [(1, now - timedelta(hours=1), 1.0)]
    assert fl.pusher.buffer.pending() == []
    with pytest.raises(RequestError, match="'to' must be one of"):
        fl.push(VIEW, rows([(1, now, 1.0)]), to="everywhere")
    with pytest.raises(RequestError, match="no feature view 'nope'") as info:
        fl.push("nope", rows([(1, now, 1.0)]))
    assert info.value.http_status == 404


EVERY_TYPE = {
    "b": "boolean",
    "i": "int",
    "l": "long",
    "f": "float",
    "d": "double",
    "s": "string",
    "dt": "date",
    "t": "timestamp",
    "dec": "decimal(10,2)",
    "bin": "binary",
}


def _every_type_view() -> Any:
    from featurelake import Entity, FeatureView, Source

    return FeatureView(
        name="typed",
        entity=Entity("pair", join_keys=["user_id", "merchant"]),
        source=Source.parquet("data/none/*.parquet", timestamp_field="event_ts"),
        query="SELECT * FROM source",
        timestamp_field="event_ts",
        fields=EVERY_TYPE,
    )


_floats = st.floats(allow_nan=True, allow_infinity=True) | st.none()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.tuples(
            st.integers(1, 3),
            st.sampled_from(["m", "a,b", "100%"]),
            st.integers(0, 10**9),
            st.floats(width=32, allow_nan=True, allow_infinity=True) | st.none(),
            _floats,
            st.none() | st.text(max_size=5),
            st.none() | st.decimals(min_value=-999, max_value=999, places=2, allow_nan=False),
            st.none() | st.binary(max_size=4),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda v: v[2],  # one event per time: the latest row per key is unambiguous
    )
)
# Float32s whose DuckDB VARCHAR form (57696448.0, 2744867.75) is not their shortest float32 digits (57696450.0,
# 2744867.8): once both paths' stored texts, which decode to different floats.
@example(
    values=[(1, "m", 1, 57696448.0, None, None, None, None), (2, "m", 2, 2744867.75, 1.1, "", None, b"")]
)
@example(values=[(3, "a,b", 3, 1.1, 0.1, None, None, None), (1, "m", 4, -0.0, -0.0, None, None, None)])
def test_the_small_push_encoder_stores_what_the_sync_stores(values: list[tuple[Any, ...]]) -> None:
    """The Python encoder of small pushes and the sync's DuckDB Reducer give the same keys, event times and
    decoded payloads (NaN, infinities, nulls, float32, decimals, dates, timestamps, bytes, composite keys)."""
    import json as _json

    import numpy as np

    from featurelake.serving import codec
    from featurelake.serving.sync import SEQ, Reducer
    from featurelake.streaming.microbatch import SmallEncoder

    view = _every_type_view()
    base = datetime(2024, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "user_id": pa.array([v[0] for v in values], pa.int64()),
            "merchant": pa.array([v[1] for v in values], pa.string()),
            "event_ts": pa.array(
                [base + timedelta(microseconds=v[2]) for v in values], pa.timestamp("us", "UTC")
            ),
            "b": pa.array([v[2] % 2 == 0 for v in values]),
            "i": pa.array([v[2] % 1000 for v in values], pa.int32()),
            "l": pa.array([v[2] for v in values], pa.int64()),
            "f": pa.array([None if v[3] is None else np.float32(v[3]) for v in values], pa.float32()),
            "d": pa.array([v[4] for v in values], pa.float64()),
            "s": pa.array([v[5] for v in values], pa.string()),
            "dt": pa.array([(base + timedelta(days=v[2] % 400)).date() for v in values], pa.date32()),
            "t": pa.array([base + timedelta(seconds=v[2]) for v in values], pa.timestamp("us", "UTC")),
            "dec": pa.array([v[6] for v in values], pa.decimal128(10, 2)),
            "bin": pa.array([v[7] for v in values], pa.binary()),
        }
    )
    encoder = SmallEncoder(view)
    assert encoder.usable
    small = encoder.records(table, 5)
    reducer = Reducer(view.join_keys, view.timestamp_field, codec.field_types(view))
    try:
        big = reducer.records(table.append_column(SEQ, pa.array([5] * table.num_rows, pa.int64())))
    finally:
        reducer.close()

    def by_key(records: Any) -> dict[str, tuple[int, int, Any]]:
        return {
            k: (t, s, _json.loads(p))
            for k, t, s, p in zip(records.keys, records.event_ts, records.seqs, records.payloads, strict=True)
        }

    mine, theirs = by_key(small), by_key(big)
    latest: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        k = encode_key([row["user_id"], row["merchant"]])
        if k not in latest or row["event_ts"] > latest[k]["event_ts"]:
            latest[k] = row
    read_float = codec.python_decoder(FloatType())
    assert read_float is not None
    assert mine.keys() == theirs.keys()
    for key, (ts, seq, payload) in mine.items():
        other_ts, other_seq, other = theirs[key]
        assert (ts, seq) == (other_ts, other_seq)
        assert payload == other
        # A float32 reads back as its exact value: what an offline read of the column gives.
        stored, offline = payload["f"], latest[key]["f"]
        if offline is None or math.isnan(offline):
            assert stored == (None if offline is None else "NaN")
        else:
            assert read_float(stored) == offline


def test_a_rebase_finding_every_row_published_commits_nothing(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, other = MicroBatchWriter(fl.project, VIEW), MicroBatchWriter(fl.project, VIEW)
    real = wap_run.audit_rows
    raced = threading.Event()

    def racing(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if not raced.is_set():
            raced.set()
            other.write(rows([(1, d(5), 1.0), (2, d(5), 2.0)]))  # exactly the same rows win the race
        return out

    monkeypatch.setattr(wap_run, "audit_rows", racing)
    result = writer.write(rows([(1, d(5), 1.0), (2, d(5), 2.0)]), run_id="late")
    assert (result.status, result.written, result.duplicates) == ("duplicate", 0, 2)
    assert "audit_late" not in fl.project.load_table(VIEW).metadata.refs
    assert main_rows(fl) == [(1, d(5), 1.0), (2, d(5), 2.0)]


def test_a_failed_publish_leaves_main_unchanged_and_can_be_written_again(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = MicroBatchWriter(fl.project, VIEW)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise CatalogUnavailableError("catalog sqlite:///x is unavailable")

    monkeypatch.setattr(wap_run, "append_to_main", down)
    with pytest.raises(CatalogUnavailableError):
        writer.write(rows([(1, d(5), 1.0)]), run_id="down")
    tbl = fl.project.load_table(VIEW)
    assert "audit_down" not in tbl.metadata.refs and main_rows(fl) == []
    assert writer.logs.pending == 1  # its audit (passed, never published) is spooled, not lost
    monkeypatch.undo()
    assert writer.write(rows([(1, d(5), 1.0)])).status == "published"
    assert main_rows(fl) == [(1, d(5), 1.0)]
    assert {a.run_id for a in fl.audits(VIEW) if a.passed} >= {"down"}  # appended with the next batch's
    assert writer.logs.pending == 0


def test_refused_rows_that_cannot_be_kept_aside_are_an_error_saying_so(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from featurelake.streaming import microbatch

    def down(*args: Any, **kwargs: Any) -> Any:
        raise CatalogUnavailableError("catalog is locked")

    # Only the append to _rejected fails (the audit log, written through the same module, still works).
    monkeypatch.setattr(microbatch, "logtable", types.SimpleNamespace(append=down))
    with pytest.raises(CatalogUnavailableError, match=r"could not be kept aside in features\._rejected"):
        MicroBatchWriter(fl.project, VIEW).write(rows([(2, d(6), None)]))
    assert main_rows(fl) == []


class _DownStore:
    """An online store that cannot be reached."""

    def write(self, view: str, records: Any, *, force: bool = False) -> int:
        raise OnlineStoreUnavailableError("Redis at redis://127.0.0.1:1 is unreachable")


def test_a_published_batch_the_online_store_missed_says_to_sync(fl: featurelake.Featurelake) -> None:
    writer = MicroBatchWriter(fl.project, VIEW, online=_DownStore())  # type: ignore[arg-type]
    result = writer.write(rows([(1, d(5), 1.0)]))
    assert result.status == "published" and result.online_keys == 0
    assert any("`featurelake sync user_features`" in n for n in result.notes)
    with pytest.raises(OnlineStoreUnavailableError):
        writer.write_online(writer.conform(rows([(1, d(6), 1.0)])))


@pytest.mark.parametrize(
    ("given", "error", "needle"),
    [
        ([1, 2], RequestError, "rows must be dicts"),
        ({"user_id": [1, 2], "event_ts": ["2024-01-05T00:00:00Z"]}, RequestError, "equally long"),
        ("user_id,event_ts", UsageError, "cannot read rows from a str"),
    ],
)
def test_unreadable_rows_are_refused(
    fl: featurelake.Featurelake, given: Any, error: type, needle: str
) -> None:
    with pytest.raises(error, match=needle):
        MicroBatchWriter(fl.project, VIEW).write(given)


def test_push_service_errors_and_a_flusher_that_cannot_publish(
    fl: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurelake.streaming.push import PushService

    offline_only = PushService(fl.project)
    with pytest.raises(UsageError, match="needs one"):
        offline_only.push(VIEW, rows([(1, d(5), 1.0)]), "online")
    with pytest.raises(RequestError, match="push_source_name"):
        offline_only.push("", rows([(1, d(5), 1.0)]), "online")
    offline_only.close()

    svc = PushService(fl.project, fl.online.store)
    svc.push(VIEW, rows([(1, d(5), 1.0)]), "offline")
    writer, _ = svc._writer(VIEW)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise CatalogUnavailableError("catalog is locked")

    monkeypatch.setattr(writer, "write", down)
    assert svc.flush(force=False) == []  # not due yet (push.batch_seconds = 5): nothing tried
    svc.batch_seconds = 0.0
    assert svc.flush() == []  # due, but the catalog is down: logged, the rows stay buffered
    assert [p.rows for p in svc.buffer.pending()] == [1]
    with pytest.raises(CatalogUnavailableError):
        svc.flush(force=True)  # fl.push's flush says so
    monkeypatch.undo()
    assert [r.status for r in svc.flush(force=True)] == ["published"]
    assert svc.buffer.pending() == [] and main_rows(fl) == [(1, d(5), 1.0)]
    svc.close()


def test_buffered_rows_that_no_longer_fit_the_view_are_kept_aside(fl: featurelake.Featurelake) -> None:
    from featurelake.streaming.push import PushService

    svc = PushService(fl.project, fl.online.store)
    stale = pa.table({**rows([(1, d(5), 1.0)]), "dropped_feature": [1.0]})  # buffered before a change
    svc.buffer.append(VIEW, stale)
    results = svc.flush(force=True)
    assert [r.status for r in results] == ["refused"]
    assert "no longer fit" in (results[0].verdict or "") and "dropped_feature" in (results[0].verdict or "")
    kept = fl.read(f"features.{REJECTED_TABLE}").to_pylist()
    assert len(kept) == 1 and '"dropped_feature": 1.0' in kept[0]["row"]
    assert svc.buffer.pending() == [] and main_rows(fl) == []
    svc.close()


def _audited_runs(fl: featurelake.Featurelake) -> list[str]:
    return sorted(a.run_id for a in fl.audits(VIEW))


def _stats_runs(fl: featurelake.Featurelake) -> list[str]:
    from featurelake.auditing import stats_log

    table = fl.read(f"features.{stats_log.TABLE}")
    return sorted({r for r in table.column("run_id").to_pylist()})


def test_logs_are_spooled_and_appended_every_n_batches(fl: featurelake.Featurelake) -> None:
    """log_batches=3: the verdicts and statistics wait in the spool (durable files) and land in _audits and
    _stats together, one commit per table for three batches."""
    writer = MicroBatchWriter(fl.project, VIEW, log_batches=3)
    for i in (1, 2):
        writer.write(rows([(i, d(5), 1.0)]), run_id=f"s{i}")
    assert _audited_runs(fl) == [] and writer.logs.pending == 4  # 2 verdicts + 2 statistics files
    spooled = sorted(p.name.split(".")[1] for p in writer.logs.root.rglob("*.arrow"))
    assert spooled == ["s1", "s1", "s2", "s2"]
    writer.write(rows([(3, d(5), 1.0)]), run_id="s3")
    assert _audited_runs(fl) == ["s1", "s2", "s3"] and _stats_runs(fl) == ["s1", "s2", "s3"]
    audits = fl.project.catalog.load_table("features._audits")
    assert len(audits.metadata.snapshots) == 1  # one append for the three batches
    assert writer.logs.pending == 0 and not any(writer.logs.root.iterdir())  # nothing held between flushes
    writer.write(rows([(4, d(5), 1.0)]), run_id="s4")
    writer.close()  # the rest on close
    assert _audited_runs(fl) == ["s1", "s2", "s3", "s4"]


def test_logs_a_dead_writer_spooled_are_appended_once_by_the_next(fl: featurelake.Featurelake) -> None:
    """A writer killed before its flush leaves its spool; the next writer of the project appends it, and rows
    a writer had appended but not yet removed are not appended twice."""
    import shutil

    dead = MicroBatchWriter(fl.project, VIEW, log_batches=10)
    dead.write(rows([(1, d(5), 1.0)]), run_id="d1")
    dead.write(rows([(2, d(5), 1.0)]), run_id="d2")
    spool = dead.logs._own
    assert spool is not None and spool.lock is not None
    # The same files once more, as if a writer had appended them and died before removing them.
    twin = spool.path.with_name(spool.path.name + "-twin")
    shutil.copytree(spool.path, twin)
    spool.lock.close()  # the process dies: its flock goes with it
    dead.logs._own = None

    live = MicroBatchWriter(fl.project, VIEW, log_batches=10)
    busy = MicroBatchWriter(fl.project, VIEW, log_batches=10)
    busy.write(rows([(3, d(5), 1.0)]), run_id="b1")  # a live writer's spool is never taken
    live.write(rows([(4, d(5), 1.0)]), run_id="l1")
    live.flush_logs()
    # l1 was audited twice (busy's commit moved main after live had loaded the table: checked and audited
    # again); d1 and d2 once each, although their rows were spooled twice.
    assert _audited_runs(fl) == ["d1", "d2", "l1", "l1"]
    assert all(a.checks for a in fl.audits(VIEW))
    assert _stats_runs(fl) == ["d1", "d2", "l1"]
    per_run = Counter(fl.read("features._stats").column("run_id").to_pylist())
    assert per_run["d1"] == per_run["d2"] == per_run["l1"] > 0  # one row per column, not two
    assert not spool.path.exists() and not twin.exists()
    busy.close()
    assert _audited_runs(fl) == ["b1", "d1", "d2", "l1", "l1"]
    live.close()
