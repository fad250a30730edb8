"""Training sets end to end on real Iceberg tables: correctness, provenance, byte-identical rebuilds, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.errors import UsageError
from featurelake.lakehouse import wap
from featurelake.training import Provenance, build_training_set, write_training_set
from tests.helpers import START, day, transactions, write_source
from tests.training_helpers import FEATURES, brute_force, entities, run_cli, two_view_project


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A fresh two-view project for tests that change it."""
    return two_view_project(tmp_path / "proj")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One two-view project for the tests that only read (each checks that nothing changed)."""
    return two_view_project(tmp_path_factory.mktemp("shared") / "proj")


def cli(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_point_in_time_join_over_two_views_matches_brute_force(shared: Path) -> None:
    ents = entities()
    with featurelake.open(shared) as fl:
        ts = fl.training_set(ents, FEATURES)
        prov = Provenance.load(ts)
        assert ts.num_rows == ents.num_rows  # one row per entity row, even before any feature row exists
        assert ts.select(ents.column_names).equals(ents)
        assert ts.column_names == [*ents.column_names, "amount_avg_1d", "txn_count_1d", "amount_max_1d"]
        assert ts.schema.field("txn_count_1d").type == pa.int64()
        uf_sid, um_sid = prov.views["user_features"], prov.views["user_max"]
        assert uf_sid is not None and um_sid is not None  # both views were published before
        uf = brute_force(
            fl,
            ents,
            "user_features",
            uf_sid,
            ["amount_avg_1d", "txn_count_1d"],
            timedelta(days=7),
        )
        um = brute_force(fl, ents, "user_max", um_sid, ["amount_max_1d"], None)
    assert ts.column("amount_avg_1d").to_pylist() == uf["amount_avg_1d"]
    assert ts.column("txn_count_1d").to_pylist() == uf["txn_count_1d"]
    assert ts.column("amount_max_1d").to_pylist() == um["amount_max_1d"]
    # The data has entity rows before the first feature day and after the ttl runs out: both stay, as nulls.
    before = [e < START for e in ents.column("event_timestamp").to_pylist()]
    assert any(before) and all(v is None for v, b in zip(uf["amount_avg_1d"], before, strict=True) if b)
    assert any(v is None for v in uf["amount_avg_1d"]) and any(v is not None for v in uf["amount_avg_1d"])


def test_provenance_in_the_parquet_metadata(shared: Path, tmp_path: Path) -> None:
    ents = entities(50)
    with featurelake.open(shared) as fl:
        ts = fl.training_set(ents, FEATURES)
        mains = {v: wap.main_snapshot_id(fl.project.load_table(v)) for v in ("user_features", "user_max")}
    out = write_training_set(ts, tmp_path / "t.parquet")
    meta = json.loads(pq.read_schema(out).metadata[b"featurelake.provenance"])
    assert meta["views"] == mains
    assert meta["features"] == FEATURES
    assert meta["entities_rows"] == 50 and len(meta["entities_sha256"]) == 64
    assert meta["feature_types"] == {
        "user_features:amount_avg_1d": "double",
        "user_features:txn_count_1d": "long",
        "user_max:amount_max_1d": "double",
    }
    assert meta["ttl_seconds"] == {"user_features": 7 * 86400, "user_max": None}


def test_rebuild_from_provenance_is_byte_identical_after_new_backfills(
    proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Built by the CLI in another process, rebuilt in this one after new backfills: the same bytes."""
    ents = entities()
    ents_file = tmp_path / "entities.parquet"
    pq.write_table(ents, ents_file)
    first = tmp_path / "first.parquet"
    r = cli(
        proj,
        "training-set",
        "--entities",
        str(ents_file),
        "--features",
        ",".join(FEATURES),
        "--output",
        str(first),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    # New data lands on main: more days, and days already published are recomputed from more source rows.
    write_source(proj, transactions(days=10, seed=9, rows_per_day=120), name="late.parquet")
    with featurelake.open(proj) as fl:
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(10), run_id=f"{v}_second")
        now = fl.training_set(ents_file, FEATURES)
        again = fl.training_set(ents_file, provenance=first)
        pinned = fl.training_set(ents_file, FEATURES, as_of=Provenance.load(first).views)
    assert not now.equals(pq.read_table(first))  # main really moved on
    second, third = tmp_path / "second.parquet", tmp_path / "third.parquet"
    write_training_set(again, second)
    write_training_set(pinned, third)
    assert second.read_bytes() == first.read_bytes()
    assert third.read_bytes() == first.read_bytes()
    out = str(tmp_path / "4.parquet")
    code, _, err = run_cli(
        capsys,
        proj,
        "training-set",
        "--entities",
        str(ents_file),
        "--from-provenance",
        str(first),
        "--output",
        out,
    )
    assert code == 0, err
    assert (tmp_path / "4.parquet").read_bytes() == first.read_bytes()


def test_as_of_a_time_reads_main_as_it_was(proj: Path) -> None:
    ents = entities(100)
    with featurelake.open(proj) as fl:
        before = fl.training_set(ents, FEATURES)
        # As of the later of the two publishes (user_max was backfilled after user_features).
        published = max(fl.history(v)[0].published_at for v in ("user_features", "user_max"))  # type: ignore[type-var]
        fl.backfill("user_features", day(5), day(10), run_id="later")
        after = fl.training_set(ents, FEATURES)
        as_of = fl.training_set(ents, FEATURES, as_of=published)
    assert Provenance.load(as_of).views == Provenance.load(before).views
    assert as_of.equals(before)
    assert not after.equals(before)


def test_string_keys_pandas_input_and_full_feature_names(tmp_path: Path) -> None:
    from tests.helpers import DEFAULT_FEATURES, make_project

    proj = make_project(tmp_path / "s", features=DEFAULT_FEATURES, data=transactions(string_keys=True))
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(5), run_id="s")
        import pandas as pd

        df = pd.DataFrame(
            {
                "user_id": ["u0001", "u0002", "nobody"],
                "event_timestamp": pd.to_datetime(["2024-01-03", "2024-01-04", "2024-01-04"], utc=True),
            }
        )
        ts = fl.training_set(df, ["user_features:amount_avg_1d"], full_feature_names=True)
        categorical = fl.training_set(
            df.astype({"user_id": "category"}), ["user_features:amount_avg_1d"], full_feature_names=True
        )
    assert ts.column_names == ["user_id", "event_timestamp", "user_features__amount_avg_1d"]
    vals = ts.column("user_features__amount_avg_1d").to_pylist()
    assert categorical.column("user_features__amount_avg_1d").to_pylist() == vals
    assert vals[0] is not None and vals[2] is None


def test_csv_entities_through_the_cli(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "e.csv"
    csv.write_text(
        "user_id,event_timestamp,label\n1,2024-01-03T10:00:00Z,1\n2,2024-01-04T00:00:00+01:00,0\n"
        "999,2024-01-04T00:00:00Z,1\n"
    )
    out = tmp_path / "t.parquet"
    args = [
        "training-set",
        "--entities",
        str(csv),
        "--features",
        "user_features:amount_avg_1d",
        "--output",
        str(out),
    ]
    code, stdout, err = run_cli(capsys, shared, *args, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["rows"] == 3 and summary["matched"] == {"user_features": 2}
    t = pq.read_table(out)
    assert t.column("label").to_pylist() == [1, 0, 1]
    assert t.column("amount_avg_1d").to_pylist()[2] is None
    code, stdout, err = run_cli(capsys, shared, *args)
    assert code == 0 and "rows matched" in stdout and "entities sha256" in stdout


# --- bad input: a clear error, nothing written, tables unchanged -------------------------------------------
def _mains(proj: Path) -> dict[str, int | None]:
    with featurelake.open(proj) as fl:
        return {v: wap.main_snapshot_id(fl.project.load_table(v)) for v in ("user_features", "user_max")}


BAD_FEATURES = [
    (["amount_avg_1d"], "must be written VIEW:FEATURE"),
    (["nope:amount_avg_1d"], "unknown feature view 'nope'"),
    (["user_features:nope"], "view 'user_features' has no feature nope"),
    (["user_features:amount_avg_1d", "user_features:amount_avg_1d"], "requested twice"),
    ([], "no features requested"),
]


@pytest.mark.parametrize(("features", "message"), BAD_FEATURES)
def test_bad_feature_lists(shared: Path, features: list[str], message: str) -> None:
    before = _mains(shared)
    with featurelake.open(shared) as fl, pytest.raises(UsageError, match=message):
        fl.training_set(entities(5), features)
    assert _mains(shared) == before


def _ents(**cols: pa.Array) -> pa.Table:
    base = {
        "user_id": pa.array([1, 2], pa.int64()),
        "event_timestamp": pa.array([START, START + timedelta(days=1)], pa.timestamp("us", tz="UTC")),
    }
    base.update(cols)
    return pa.table({k: v for k, v in base.items() if v is not None})


BAD_ENTITIES = [
    (_ents(event_timestamp=None), "has no 'event_timestamp' column"),
    (
        _ents(event_timestamp=pa.array([START.replace(tzinfo=None)] * 2, pa.timestamp("us"))),
        "without a time zone",
    ),
    (
        _ents(event_timestamp=pa.array([START, None], pa.timestamp("us", tz="UTC"))),
        "1 entity rows have a null",
    ),
    (_ents(event_timestamp=pa.array(["2024-01-01", "2024-01-02"])), "not a timestamp"),
    (_ents(user_id=None), "no column 'user_id', the join key of view 'user_features'"),
    (_ents(user_id=pa.array(["1", "2"])), "keys its rows by int64"),
    (_ents(amount_avg_1d=pa.array([1.0, 2.0])), "pass full_feature_names=True"),
]


@pytest.mark.parametrize(("ents", "message"), BAD_ENTITIES)
def test_bad_entity_frames(shared: Path, ents: pa.Table, message: str) -> None:
    before = _mains(shared)
    with featurelake.open(shared) as fl, pytest.raises(UsageError, match=message):
        fl.training_set(ents, FEATURES)
    assert _mains(shared) == before


def test_bad_as_of_and_provenance(shared: Path, tmp_path: Path) -> None:
    ents = entities(20)
    with featurelake.open(shared) as fl:
        sid = wap.main_snapshot_id(fl.project.load_table("user_features"))
        assert sid is not None
        with pytest.raises(UsageError, match="but not for 'user_max'"):
            fl.training_set(ents, FEATURES, as_of={"user_features": sid})
        with pytest.raises(UsageError, match="which no requested feature uses"):
            fl.training_set(ents, ["user_max:amount_max_1d"], as_of={"user_features": sid, "user_max": 1})
        with pytest.raises(UsageError, match=r"snapshot 12345 of features\.user_max no longer exists"):
            fl.training_set(ents, FEATURES, as_of={"user_features": sid, "user_max": 12345})
        with pytest.raises(UsageError, match="had no data at"):
            fl.training_set(ents, FEATURES, as_of="1999-01-01")
        built = fl.training_set(ents, FEATURES)
        with pytest.raises(UsageError, match="is not the one this training set was built from"):
            fl.training_set(entities(20, seed=99), provenance=built)
        with pytest.raises(UsageError, match="either a provenance"):
            fl.training_set(ents, FEATURES, provenance=built)
        with pytest.raises(UsageError, match="carries no training-set provenance"):
            fl.training_set(ents, provenance=ents)
    missing = tmp_path / "missing.csv"
    with featurelake.open(shared) as fl, pytest.raises(UsageError, match="does not exist"):
        fl.training_set(missing, FEATURES)


def test_rebuild_refuses_an_expired_snapshot(proj: Path) -> None:
    ents = entities(30)
    with featurelake.open(proj) as fl:
        built = fl.training_set(ents, FEATURES)
        old = Provenance.load(built).views["user_features"]
        assert old is not None
        fl.backfill("user_features", day(5), day(7), run_id="newer")
        tbl = fl.project.load_table("user_features")
        tbl.maintenance.expire_snapshots().by_id(old).commit()
        with pytest.raises(UsageError, match=rf"snapshot {old} of features\.user_features no longer exists"):
            fl.training_set(ents, provenance=built)


def test_cli_bad_input_writes_nothing(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ents_file = tmp_path / "e.parquet"
    pq.write_table(entities(10), ents_file)
    base = ["training-set", "--entities", str(ents_file)]
    cases = [
        ([*base, "--features", FEATURES[0], "--output", str(tmp_path / "o.csv")], "use a .parquet file"),
        (
            [*base, "--features", FEATURES[0], "--snapshot", "user_features", "--output", "o.parquet"],
            "VIEW=SNAPSHOT_ID",
        ),
        ([*base, "--output", str(tmp_path / "o.parquet")], "give --features"),
        (
            [
                *base,
                "--features",
                FEATURES[0],
                "--as-of",
                "2024-01-02",
                "--snapshot",
                "user_max=1",
                "--output",
                "o.parquet",
            ],
            "either --as-of or --snapshot",
        ),
        (
            [
                "training-set",
                "--entities",
                str(tmp_path / "nope.parquet"),
                "--features",
                FEATURES[0],
                "--output",
                str(tmp_path / "o.parquet"),
            ],
            "does not exist",
        ),
    ]
    before = _mains(shared)
    for args, message in cases:
        code, _, err = run_cli(capsys, shared, *args)
        assert code == 2 and message in err, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not list(tmp_path.glob("o.*")) and _mains(shared) == before


def test_build_result_reports_statistics(shared: Path) -> None:
    with featurelake.open(shared) as fl:
        result = build_training_set(fl.project, entities(200), FEATURES)
    s = result.summary()
    assert s["rows"] == 200
    assert 0 < s["matched"]["user_features"] <= 200
    assert s["outside_ttl"]["user_max"] == 0  # no ttl: nothing is ever too old
    assert s["ties"] == {"user_features": 0, "user_max": 0}


def test_columns_follow_the_requested_order(shared: Path) -> None:
    order = ["user_features:txn_count_1d", "user_max:amount_max_1d", "user_features:amount_avg_1d"]
    with featurelake.open(shared) as fl:
        ts = fl.training_set(entities(40), order)
        again = fl.training_set(entities(40), provenance=ts)
    assert ts.column_names[-3:] == ["txn_count_1d", "amount_max_1d", "amount_avg_1d"]
    assert Provenance.load(ts).features == order
    assert again.equals(ts) and again.schema.metadata == ts.schema.metadata
