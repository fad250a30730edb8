"""Composite entity keys end to end: ``Entity("user_merchant", join_keys=["user_id", "merchant_id"])`` through
apply, backfill, training sets, the registry, batch prediction, the online stores (SQLite and Redis), the CLI,
``fl.online.get`` and the HTTP server; every bad input refused with a message naming the column; the store
key encoding as a property."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiceberg.types import LongType, StringType, TimestamptzType

import featurelake
from featurelake.errors import AuditFailed, ConfigError, DataError, RequestError, UsageError
from featurelake.features.keys import decode_key, describe_key, encode_key, key_sql, parse_key_text
from featurelake.serving.codec import quote
from featurelake.serving.server import create_app
from tests.composite_helpers import (
    AGGREGATIONS,
    ANCHOR,
    FEATURES,
    KEYS,
    VIEW,
    SumModel,
    composite_project,
    day,
    drop_pair_on_day,
    latest_rows,
    transactions,
    window_reference,
)
from tests.helpers import make_project
from tests.redis_server import redis_session_fixture, redis_url_fixture

_FIXTURES = (redis_session_fixture, redis_url_fixture)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    """The composite project, applied, both views backfilled over the six days of data."""
    root = composite_project(tmp_path_factory.mktemp("composite") / "proj")
    fl = featurelake.open(root)
    try:
        fl.apply()
        fl.backfill(VIEW, day(0), day(6), run_id="cmp")
        fl.backfill("user_features", day(0), day(6), run_id="usr")
        yield fl
    finally:
        fl.close()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- definitions -------------------------------------------------------------------------------------------


def test_entity_declares_a_composite_key_and_a_type_per_column() -> None:
    from featurelake import Entity

    um = Entity("user_merchant", join_keys=["user_id", "merchant_id"], dtype={"user_id": "long"})
    assert um.join_keys == ("user_id", "merchant_id") and um.composite
    assert um.key_dtype("user_id") == "long" and um.key_dtype("merchant_id") is None
    assert um.dtype == {"user_id": "long"}
    assert Entity("pair", join_keys=["a", "b"], dtype="string").dtypes == ("string", "string")
    one = Entity("user", join_key="user_id", dtype="long")
    assert (one.join_key, one.join_keys, one.dtype, one.composite) == ("user_id", ("user_id",), "long", False)
    assert Entity("user", join_keys=["user_id"]) == Entity("user", join_key="user_id")
    with pytest.raises(
        UsageError, match=r"entity 'user_merchant' has a composite key \(user_id, merchant_id\)"
    ):
        _ = um.join_key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"join_key": "a", "join_keys": ["a", "b"]}, "give join_key='col' for a one-column key or join_keys"),
        ({}, "entity 'e' has no key: give join_key="),
        ({"join_keys": "user_id"}, "join_keys must be a list of column names"),
        ({"join_keys": []}, "join_keys is empty"),
        ({"join_keys": ["a", "a"]}, "join_keys lists a twice"),
        ({"join_keys": ["a", "b c"]}, "join key of entity 'e' 'b c' is not a valid name"),
        ({"join_keys": ["a", "b"], "dtype": {"c": "long"}}, "dtype names 'c', which is not a key column"),
        (
            {"join_keys": ["a", "b"], "dtype": {"a": "int"}},
            "dtype of key column 'a' must be 'string' or 'long'",
        ),
        ({"join_keys": ["a", "b"], "dtype": "int"}, "dtype must be 'string' or 'long', got 'int'"),
        ({"join_keys": ["a", "b"], "dtype": 3}, "dtype must be 'string' or 'long' \\(every key column\\)"),
    ],
)
def test_bad_entity_definitions_name_what_to_fix(kwargs: dict[str, Any], message: str) -> None:
    from featurelake import Entity

    with pytest.raises(ConfigError, match=message):
        Entity("e", **kwargs)


def test_view_refuses_a_timestamp_that_is_also_a_key_column() -> None:
    from featurelake import Entity, FeatureView, Source

    with pytest.raises(ConfigError, match="timestamp field 'event_ts' is also a join key of entity 'pair'"):
        FeatureView(
            name="v",
            entity=Entity("pair", join_keys=["a", "event_ts"]),
            source=Source.parquet("x/*.parquet", timestamp_field="ts"),
            query="SELECT 1",
            fields={"x": "double"},
        )


def test_view_join_key_on_a_composite_view_says_to_use_join_keys(published: featurelake.Featurelake) -> None:
    fv = published.definitions.view(VIEW)
    assert fv.join_keys == KEYS and fv.columns[:3] == [*KEYS, "event_ts"]
    with pytest.raises(
        UsageError, match=r"composite key \(user_id, merchant_id\) where one key column is assumed"
    ):
        _ = fv.join_key


# --- apply, backfill ---------------------------------------------------------------------------------------


def test_apply_creates_a_required_column_per_key_column(published: featurelake.Featurelake) -> None:
    tbl = published.project.load_table(VIEW)
    fields = tbl.schema().fields
    assert [(f.field_id, f.name, f.required) for f in fields[:3]] == [
        (1, "user_id", True),
        (2, "merchant_id", True),
        (3, "event_ts", True),
    ]
    assert [type(f.field_type) for f in fields[:3]] == [LongType, StringType, TimestamptzType]
    assert tbl.properties["featurelake.join-keys"] == "user_id,merchant_id"
    assert "featurelake.join-key" not in tbl.properties
    single = published.project.load_table("user_features").properties
    assert single["featurelake.join-key"] == "user_id" and "featurelake.join-keys" not in single
    assert {r.view: r.action for r in published.apply()}[VIEW] == "unchanged"


def test_changing_the_key_columns_is_refused_by_apply(tmp_path: Path) -> None:
    root = composite_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        before = fl.project.load_table(VIEW).schema()
    (root / "features.py").write_text(
        FEATURES.replace('join_keys=["user_id", "merchant_id"]', 'join_key="user_id"').replace(
            "SELECT user_id, merchant_id, date_trunc", "SELECT user_id, date_trunc"
        )
    )
    with featurelake.open(root) as fl:
        (plan,) = [r for r in fl.apply(dry_run=True) if r.view == VIEW]
        assert "  - BREAKING: drop key/timestamp column merchant_id (string)" in plan.lines()
        with pytest.raises(featurelake.SchemaError, match="rename the view to create a new table"):
            fl.apply()
        assert fl.project.load_table(VIEW).schema() == before


def test_backfill_audits_every_key_column_and_the_composite_unique(
    published: featurelake.Featurelake,
) -> None:
    (logged,) = published.audits(VIEW, run_id="cmp")
    results = {(c["check"], c["column"]) for c in logged.checks}
    assert ("not_null", "user_id") in results and ("not_null", "merchant_id") in results
    unique = [c for c in logged.checks if c["check"] == "unique"]
    assert [c["column"] for c in unique] == ["user_id, merchant_id, event_ts"] and unique[0]["passed"]
    data = published.read(VIEW)
    # Several merchants per user and day: unique only with both key columns.
    per_user_day = {(r["user_id"], r["event_ts"]) for r in data.to_pylist()}
    assert len(per_user_day) < data.num_rows
    assert data.num_rows == len({(r["user_id"], r["merchant_id"], r["event_ts"]) for r in data.to_pylist()})


def test_backfill_refuses_a_null_in_a_key_column_naming_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=FEATURES, data=transactions(null_merchant_rows=2))
    with featurelake.open(root) as fl:
        fl.apply()
        before = fl.history(VIEW)
        with pytest.raises(DataError) as err:
            fl.backfill(VIEW, day(0), day(6), run_id="nulls")
        # The two null-merchant transactions fall on the last day, for one or two users: as many rows.
        assert re.fullmatch(
            f"view {VIEW!r}: [12] rows have a null merchant_id \\(no column of the composite join key user_id, "
            "merchant_id may not be null\\); filter them out in the query",
            str(err.value),
        ), str(err.value)
        assert fl.history(VIEW) == before
        assert fl.read(VIEW).num_rows == 0


def test_duplicate_composite_keys_fail_the_audit_and_main_is_unchanged(tmp_path: Path) -> None:
    dup = FEATURES.replace(
        "count(*) AS um_count_1d, sum(amount) AS um_amount_1d\n        FROM source GROUP BY ALL",
        "1 AS um_count_1d, amount AS um_amount_1d\n        FROM source",
    )
    root = make_project(tmp_path / "proj", features=dup, data=transactions())
    with featurelake.open(root) as fl:
        fl.apply()
        main_before = fl.history(VIEW)[0].snapshot_id
        with pytest.raises(
            AuditFailed, match=r"rows repeat an existing \(user_id, merchant_id, event_ts\) value"
        ):
            fl.backfill(VIEW, day(0), day(6), run_id="dups")
        assert fl.history(VIEW)[0].snapshot_id == main_before


# --- training sets, registry, batch prediction ---------------------------------------------------------------


def _entity_frame() -> pa.Table:
    rows = [
        (1, "a,b", 2, 12),
        (1, "a%2Cb", 2, 12),
        (2, "b=c", 5, 1),
        (3, "plain", 4, 23),
        (5, "plain", 4, 1),  # user 5's only row is on day 0: older than the 3-day ttl
        (5, "plain", 0, 6),
        (4, "nobody", 5, 0),  # no such pair
        (1, "a,b", 0, 0),  # before any row of day 0? rows are stamped at midnight: matches day 0
    ]
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int32()),  # a narrower integer type is fine
            "merchant_id": [r[1] for r in rows],
            "event_timestamp": pa.array(
                [ANCHOR + timedelta(days=r[2], hours=r[3]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
            "label": [float(i) for i in range(len(rows))],
        }
    )


def _expected(fl: featurelake.Featurelake, entities: pa.Table) -> list[Any]:
    data = fl.read(VIEW)
    con = duckdb.connect()
    con.register("f", data)
    con.register("e", entities.append_column("i", pa.array(range(entities.num_rows))))
    rows = con.sql(
        """
        SELECT e.i, (SELECT um_amount_1d FROM f
                     WHERE f.user_id = e.user_id AND f.merchant_id = e.merchant_id AND f.event_ts <= e.event_timestamp
                       AND e.event_timestamp - f.event_ts <= INTERVAL 3 DAY
                     ORDER BY f.event_ts DESC LIMIT 1) AS v
        FROM e ORDER BY e.i
        """
    ).fetchall()
    con.close()
    return [r[1] for r in rows]


def test_training_set_matches_every_key_column_point_in_time(
    published: featurelake.Featurelake, tmp_path: Path
) -> None:
    entities = _entity_frame()
    ts = published.training_set(entities, [f"{VIEW}:um_amount_1d", f"{VIEW}:um_count_1d"])
    assert ts.column_names == [
        "user_id",
        "merchant_id",
        "event_timestamp",
        "label",
        "um_amount_1d",
        "um_count_1d",
    ]
    got = ts["um_amount_1d"].to_pylist()
    assert got == _expected(published, entities)
    # "a,b" and "a%2Cb" are different merchants with their own values; the unknown pair and the stale
    # row match nothing.
    assert got[0] is not None and got[1] is not None and got[0] != got[1]
    assert got[4] is None and got[6] is None and got[5] is not None
    prov = json.loads(ts.schema.metadata[b"featurelake.provenance"])
    assert prov["join_keys"] == {VIEW: KEYS}
    path = tmp_path / "train.parquet"
    pq.write_table(ts, path)
    rebuilt = published.training_set(entities, provenance=path)
    assert rebuilt.equals(ts)


def test_training_set_without_a_key_column_names_it(published: featurelake.Featurelake) -> None:
    entities = _entity_frame().drop_columns(["merchant_id"])
    with pytest.raises(UsageError, match=f"no column 'merchant_id', the join key of view '{VIEW}'"):
        published.training_set(entities, [f"{VIEW}:um_amount_1d"])


def _register(fl: featurelake.Featurelake, tmp_path: Path, name: str) -> Any:
    entities = _entity_frame()
    ts = fl.training_set(entities, [f"{VIEW}:um_count_1d", f"{VIEW}:um_amount_1d"])
    train = tmp_path / f"{name}.parquet"
    pq.write_table(ts, train)
    model = tmp_path / f"{name}.pkl"
    model.write_bytes(pickle.dumps(SumModel([1.0, 0.5])))
    mv = fl.models.register(name, model, "pickle", training_set=train)
    fl.models.promote(name, mv.version, "Staging")
    fl.models.promote(name, mv.version, "Production")
    return mv


def test_model_on_a_composite_view_predicts_the_latest_row_per_key(
    published: featurelake.Featurelake, tmp_path: Path
) -> None:
    mv = _register(published, tmp_path, "pairs")
    assert [(f.name, f.feature) for f in mv.signature] == [
        ("um_count_1d", f"{VIEW}:um_count_1d"),
        ("um_amount_1d", f"{VIEW}:um_amount_1d"),
    ]
    res = published.predict("pairs", VIEW)
    latest = latest_rows(published)
    assert res.rows == len(latest)
    out = published.project.catalog.load_table("predictions.pairs")
    assert [(f.name, f.required) for f in out.schema().fields[:3]] == [
        ("user_id", True),
        ("merchant_id", True),
        ("event_ts", True),
    ]
    scored = {(r["user_id"], r["merchant_id"]): r for r in out.scan().to_arrow().to_pylist()}
    assert scored.keys() == latest.keys()
    for key, row in latest.items():
        assert scored[key]["event_ts"] == row["event_ts"]
        assert scored[key]["prediction"] == pytest.approx(row["um_count_1d"] + 0.5 * row["um_amount_1d"])
    assert any(
        r.check == "unique" and r.column == "user_id, merchant_id, event_ts" for r in res.report.results
    )


# --- online: sync, Python, CLI, HTTP -------------------------------------------------------------------------


def _check_online(fl: featurelake.Featurelake) -> None:
    latest = latest_rows(fl)
    assert fl.online.store.count(VIEW) == len(latest)
    rows = fl.online.get(
        VIEW, [{"user_id": 1, "merchant_id": "a,b"}, (1, "a%2Cb"), (5, "plain"), (4, "nobody")]
    )
    assert [r.key for r in rows] == [
        {"user_id": 1, "merchant_id": "a,b"},
        {"user_id": 1, "merchant_id": "a%2Cb"},
        {"user_id": 5, "merchant_id": "plain"},
        {"user_id": 4, "merchant_id": "nobody"},
    ]
    assert [r.status for r in rows] == ["PRESENT", "PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert rows[0].values["um_amount_1d"] == latest[(1, "a,b")]["um_amount_1d"]
    assert rows[1].values["um_amount_1d"] == latest[(1, "a%2Cb")]["um_amount_1d"]
    one = fl.online.get(VIEW, {"merchant_id": "b=c", "user_id": 2}, ["um_count_1d"])
    assert one[0].values == {"um_count_1d": latest[(2, "b=c")]["um_count_1d"]}
    assert one[0].to_dict()["key"] == {"user_id": 2, "merchant_id": "b=c"}


def test_sync_to_sqlite_and_look_up_from_python_and_the_cli(published: featurelake.Featurelake) -> None:
    results = {r.view: r for r in published.sync()}
    assert results[VIEW].keys == len(latest_rows(published))
    mark = published.online.store.get_watermark(VIEW)
    assert mark is not None and mark.key_type == "long,string"
    _check_online(published)
    assert (published.sync(VIEW))[0].mode == "up-to-date"

    root = published.project.root
    got = cli(root, "get", VIEW, 'user_id=1,merchant_id="a,b"', "merchant_id=b=c,user_id=2", "--json")
    assert got.returncode == 0, got.stderr
    rows = json.loads(got.stdout)
    assert [r["key"] for r in rows] == [
        {"user_id": 1, "merchant_id": "a,b"},
        {"user_id": 2, "merchant_id": "b=c"},
    ]
    latest = latest_rows(published)
    assert [r["um_amount_1d"] for r in rows] == [
        latest[(1, "a,b")]["um_amount_1d"],
        latest[(2, "b=c")]["um_amount_1d"],
    ]
    table = cli(root, "get", VIEW, "user_id=3,merchant_id=plain")
    assert table.returncode == 0, table.stderr
    assert "user_id" in table.stdout and "merchant_id" in table.stdout and "PRESENT" in table.stdout


@pytest.mark.redis
def test_sync_to_redis_and_look_up(
    published: featurelake.Featurelake, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURELAKE_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("FEATURELAKE_ONLINE_STORE__URL", redis_url)
    with featurelake.open(published.project.root) as fl:
        (res,) = fl.sync(VIEW)
        assert res.mode == "full" and res.keys == len(latest_rows(fl))
        _check_online(fl)
        stored = sorted(fl.online.store.keys(VIEW))
    assert "1,a%2Cb" in stored and "1,a%252Cb" in stored and "2,b=c" in stored


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "user_id=1",
            f"key 'user_id=1' of view '{VIEW}' lacks merchant_id: a composite key names every key column",
        ),
        (
            "user_id=1,merchant_id=a,shop=3",
            f"key 'user_id=1,merchant_id=a,shop=3': view '{VIEW}' has no key column 'shop'; its key columns are "
            "user_id, merchant_id",
        ),
        ("user_id=1,user_id=2", f"key 'user_id=1,user_id=2' of view '{VIEW}' gives user_id twice"),
        ("user_id=x,merchant_id=a", "key 'user_id=x,merchant_id=a': user_id 'x' is not an integer"),
        ("1", f"key '1' of view '{VIEW}': '1' is not COLUMN=VALUE; view '{VIEW}' has a composite key"),
        ('user_id=1,merchant_id="a', "the quoted value of merchant_id is not closed"),
    ],
)
def test_cli_composite_key_errors_exit_2_and_change_nothing(
    published: featurelake.Featurelake, key: str, message: str
) -> None:
    before = sorted(published.online.store.keys(VIEW))
    got = cli(published.project.root, "get", VIEW, key)
    assert got.returncode == 2, got.stdout
    assert got.stderr.startswith("error: ") and message in got.stderr, got.stderr
    assert sorted(published.online.store.keys(VIEW)) == before


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([{"user_id": 1}], "lacks merchant_id: a composite key names every key column"),
        ([{"user_id": 1, "merchant_id": "a", "shop": 2}], "names 'shop', which is not a key column"),
        ([(1,)], "has 1 value(s) but the key has 2 columns (user_id, merchant_id)"),
        ([1, 2], "the view has a composite key (user_id, merchant_id); give each key as a dict"),
        (
            [{"user_id": "1", "merchant_id": "a"}],
            "user_id of view 'user_merchant_features' is an integer key",
        ),
        ([{"user_id": 1, "merchant_id": 7}], "merchant_id of view 'user_merchant_features' is a string key"),
    ],
)
def test_python_lookup_errors_name_the_key_column(
    published: featurelake.Featurelake, keys: list[Any], message: str
) -> None:
    with pytest.raises(RequestError) as err:
        published.online.get(VIEW, keys)
    assert message in str(err.value)


def test_http_lookup_and_predict_with_several_entity_columns(
    published: featurelake.Featurelake, tmp_path: Path
) -> None:
    published.sync()
    _register(published, tmp_path, "pairs_online")
    latest = latest_rows(published)
    body = {
        "features": [f"{VIEW}:um_amount_1d", "user_features:amount_sum_1d"],
        "entities": {"user_id": [1, 1, 4], "merchant_id": ["a,b", "a%2Cb", "nobody"]},
    }
    with TestClient(create_app(published.project)) as client:
        r = client.post("/get-online-features", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["metadata"]["feature_names"] == ["user_id", "merchant_id", "um_amount_1d", "amount_sum_1d"]
        uid, mid, amount, user_sum = out["results"]
        assert uid["values"] == [1, 1, 4] and mid["values"] == ["a,b", "a%2Cb", "nobody"]
        assert amount["values"] == [
            latest[(1, "a,b")]["um_amount_1d"],
            latest[(1, "a%2Cb")]["um_amount_1d"],
            None,
        ]
        assert amount["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
        assert user_sum["statuses"] == ["PRESENT", "PRESENT", "PRESENT"]  # the user view needs user_id only

        missing = client.post(
            "/get-online-features", json={"features": body["features"], "entities": {"user_id": [1]}}
        )
        assert missing.status_code == 422
        assert "entities lack 'merchant_id', a column of a composite key" in missing.json()["detail"]
        wrong = client.post(
            "/get-online-features",
            json={"features": [f"{VIEW}:um_amount_1d"], "entities": {"user_id": [1], "merchant_id": [7]}},
        )
        assert wrong.status_code == 422 and "merchant_id of view" in wrong.json()["detail"]
        uneven = client.post(
            "/get-online-features",
            json={
                "features": [f"{VIEW}:um_amount_1d"],
                "entities": {"user_id": [1, 2], "merchant_id": ["a"]},
            },
        )
        assert uneven.status_code == 422 and "differ in length" in uneven.json()["detail"]

        p = client.post(
            "/predict/pairs_online", json={"entities": {"user_id": [1, 4], "merchant_id": ["a,b", "x"]}}
        )
        assert p.status_code == 200, p.text
        pred = p.json()
        row = latest[(1, "a,b")]
        assert pred["predictions"][0] == pytest.approx(row["um_count_1d"] + 0.5 * row["um_amount_1d"])
        assert pred["predictions"][1] is None and pred["statuses"] == ["PRESENT", "NOT_FOUND"]
        bad = client.post("/predict/pairs_online", json={"entities": {"merchant_id": ["a,b"]}})
        assert bad.status_code == 422 and "entities lack 'user_id'" in bad.json()["detail"]


def _store_matches_main(fl: featurelake.Featurelake) -> None:
    """Every key of main's latest rows is stored with its values, and nothing else is."""
    from featurelake.features.keys import encode_key

    latest = latest_rows(fl)
    assert sorted(fl.online.store.keys(VIEW)) == sorted(encode_key(k) for k in latest)
    rows = fl.online.get(VIEW, list(latest), now=ANCHOR + timedelta(days=6))
    got = {(r.key["user_id"], r.key["merchant_id"]): r for r in rows}  # type: ignore[index]
    for key, row in latest.items():
        assert got[key].event_ts == row["event_ts"], key
        fresh = ANCHOR + timedelta(days=6) - row["event_ts"] <= timedelta(days=3)
        assert got[key].status == ("PRESENT" if fresh else "OUTSIDE_MAX_AGE"), key
        assert got[key].values["um_amount_1d"] == (row["um_amount_1d"] if fresh else None), key


def test_sync_rewrites_a_pair_whose_newest_row_a_backfill_removed(tmp_path: Path) -> None:
    root = composite_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(6), run_id="all")
        fl.sync(VIEW)
        before = latest_rows(fl)
        newest = max(
            (r["event_ts"], k) for k, r in before.items() if r["event_ts"] == ANCHOR + timedelta(days=5)
        )
        pair = newest[1]
        assert drop_pair_on_day(root, pair, 5) > 0
        fl.backfill(VIEW, day(5), day(6), run_id="fix")
        (res,) = fl.sync(VIEW)
        assert res.mode == "incremental"
        after = latest_rows(fl)
        assert after[pair]["event_ts"] < ANCHOR + timedelta(days=5)  # its newest row is an older one now
        _store_matches_main(fl)


def test_window_aggregations_per_composite_key(tmp_path: Path) -> None:
    data = transactions()
    root = make_project(tmp_path / "proj", features=AGGREGATIONS, data=data)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("pair_windows", day(1), day(6))
        rows = fl.read("pair_windows")
    assert rows.column_names == ["user_id", "merchant_id", "event_ts", "amount_sum_2d", "count_2d"]
    got = [
        (
            r["user_id"],
            r["merchant_id"],
            r["event_ts"],
            None if r["amount_sum_2d"] is None else round(r["amount_sum_2d"], 6),
            r["count_2d"],
        )
        for r in rows.to_pylist()
    ]
    assert got == window_reference(data, rows)
    pairs = {(r[0], r[1]) for r in got}
    assert {"a,b", "a%2Cb"} <= {m for _, m in pairs} and len(pairs) > len({u for u, _ in pairs})


def _sorted(rows: pa.Table) -> list[dict[str, Any]]:
    return sorted(rows.to_pylist(), key=lambda r: (r["user_id"], r["merchant_id"], r["event_ts"]))


@pytest.mark.spark
@pytest.mark.redis
def test_spark_backfill_sync_and_predict_of_a_composite_view(
    spark: Any, redis_url: str, tmp_path: Path
) -> None:
    features = FEATURES + AGGREGATIONS.split("user_merchant = Entity", 1)[1].split("\n", 1)[1]
    features = features.replace(
        "from featurelake import Entity", "from featurelake import Aggregation, Entity"
    )
    local_root = make_project(tmp_path / "local", features=features, data=transactions())
    with featurelake.open(local_root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(6))
        expected = _sorted(fl.read(VIEW))
    config = (
        'project: spark-composite\nnamespace: features\nengine:\n  type: spark\n  spark:\n    master: "local[2]"\n'
        f"online_store:\n  type: redis\n  url: {redis_url}\n"
    )
    root = make_project(tmp_path / "spark", features=features, config=config, data=transactions())
    with featurelake.open(root) as fl:
        assert fl.project.engine.name == "spark"
        fl.apply()
        fl.backfill(VIEW, day(0), day(6), run_id="spark")
        got = _sorted(fl.read(VIEW))
        assert [(r["user_id"], r["merchant_id"], r["event_ts"], r["um_count_1d"]) for r in got] == [
            (r["user_id"], r["merchant_id"], r["event_ts"], r["um_count_1d"]) for r in expected
        ]
        assert [r["um_amount_1d"] for r in got] == pytest.approx([r["um_amount_1d"] for r in expected])

        (res,) = fl.sync(VIEW)  # Spark reads, its executors write Redis
        assert res.mode == "full" and res.keys == len(latest_rows(fl))
        _store_matches_main(fl)
        _check_online(fl)
        pair = next(k for k, r in latest_rows(fl).items() if r["event_ts"] == ANCHOR + timedelta(days=5))
        assert drop_pair_on_day(root, pair, 5) > 0
        fl.backfill(VIEW, day(5), day(6), run_id="fix")
        (res,) = fl.sync(VIEW)
        assert res.mode == "incremental" and latest_rows(fl)[pair]["event_ts"] < ANCHOR + timedelta(days=5)
        _store_matches_main(fl)

        fl.backfill("pair_windows", day(1), day(6))
        windows = fl.read("pair_windows")
        assert [
            (
                r["user_id"],
                r["merchant_id"],
                r["event_ts"],
                round(r["amount_sum_2d"], 6) if r["amount_sum_2d"] else None,
                r["count_2d"],
            )
            for r in windows.to_pylist()
        ] == window_reference(pq.read_table(root / "data" / "transactions" / "part-0.parquet"), windows)

        _register(fl, tmp_path, "spark_pairs")
        pred = fl.predict("spark_pairs", VIEW)
        latest = latest_rows(fl)
        assert pred.rows == len(latest)
        scored = fl.project.catalog.load_table("predictions.spark_pairs").scan().to_arrow().to_pylist()
        assert {(r["user_id"], r["merchant_id"]) for r in scored} == set(latest)
        for r in scored:
            row = latest[(r["user_id"], r["merchant_id"])]
            assert r["prediction"] == pytest.approx(row["um_count_1d"] + 0.5 * row["um_amount_1d"])


# --- the store key encoding ---------------------------------------------------------------------------------

_VALUE = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=12))
_TEXT = st.text(
    alphabet=st.sampled_from([",", "=", "%", "2", "C", "5", '"', "a", " ", ":", "\\"]), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), _TEXT, _TEXT), min_size=2, max_size=6, unique=True))
def test_distinct_composite_keys_never_share_a_store_key(keys: list[tuple[int, str, str]]) -> None:
    encoded = [encode_key(k) for k in keys]
    assert len(set(encoded)) == len(keys)
    for key, text in zip(keys, encoded, strict=True):
        assert decode_key(text, 3) == [str(v) for v in key]


@settings(max_examples=200, deadline=None)
@given(st.lists(_VALUE, min_size=1, max_size=4))
def test_store_key_round_trips_and_duckdb_builds_the_same_string(values: list[Any]) -> None:
    text = encode_key(values)
    assert decode_key(text, len(values)) == [str(v) for v in values]
    if len(values) == 1:
        assert text == str(values[0])  # one-column keys are stored exactly as before composite keys
    columns = [f"c{i}" for i in range(len(values))]
    con = duckdb.connect()
    con.register("frame", pa.table({c: [v] for c, v in zip(columns, values, strict=True)}))
    got = con.execute(f"SELECT {key_sql(columns, quote)} FROM frame").fetchone()
    con.close()
    assert got is not None and got[0] == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "user_id=1,merchant_id=a,b",
            """'b' is not COLUMN=VALUE; view 'v' has a composite key, written user_id=...,merchant_id=... (double-quote a value holding a comma: col="a,b")""",
        ),
        ('user_id=1,merchant_id="a"b', "after the quoted value of merchant_id comes 'b'"),
        ("user_id=1,merchant_id=a,", "ends with ','; remove it"),
        ("", "'' is not COLUMN=VALUE"),
    ],
)
def test_malformed_key_text_says_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_key_text(text, ["user_id", "merchant_id"], "v")
    assert message in str(err.value)
    assert parse_key_text('merchant_id="a,b",user_id=1', ["user_id", "merchant_id"], "v") == ["1", "a,b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEXT, min_size=2, max_size=3))
def test_cli_key_text_round_trips(values: list[str]) -> None:
    columns = ["user_id", "merchant_id", "shop"][: len(values)]
    assert parse_key_text(describe_key(columns, values), columns, "v") == values
