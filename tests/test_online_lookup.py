"""Online lookups on both stores: typed values, statuses by ttl, Feast's response shape, one round trip, and
every bad request refused with the right status and no change to the store."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import RequestError
from tests.helpers import make_project, write_source
from tests.online_helpers import NOW, append, config, d
from tests.online_helpers import project as user_project
from tests.redis_server import fresh_db, redis_session_fixture, redis_url_fixture

_FIXTURES = (redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]

DEVICE_FEATURES = """
from datetime import timedelta
from featurelake import Entity, FeatureView, Source

device = Entity("device", join_key="device_id")

device_stats = FeatureView(
    name="device_stats",
    entity=device,
    source=Source.parquet("data/devices/*.parquet", timestamp_field="ts"),
    query="SELECT device_id, ts AS event_ts, score, ratio, label, active, last_seen, day, price, blob, hits FROM source",
    fields={"score": "double", "ratio": "float", "label": "string", "active": "boolean", "last_seen": "timestamp",
            "day": "date", "price": "decimal(10,2)", "blob": "binary", "hits": "long"},
    ttl=timedelta(hours=1),
)

device_counts = FeatureView(
    name="device_counts",
    entity=device,
    source=Source.parquet("data/devices/*.parquet", timestamp_field="ts"),
    query="SELECT device_id, ts AS event_ts, hits FROM source",
    fields={"hits": "long"},
)
"""

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
SEEN = datetime(2024, 2, 29, 8, 30, 15, 250000, tzinfo=UTC)

DEVICE_ROWS: list[dict[str, Any]] = [
    {
        "device_id": "d-1",
        "event_ts": T0,
        "score": 0.25,
        "ratio": 1.5,
        "label": 'café "quoted"',
        "active": True,
        "last_seen": SEEN,
        "day": date(2024, 2, 29),
        "price": Decimal("12.34"),
        "blob": b"\x00\xffbytes",
        "hits": 7,
    },
    {
        "device_id": "d-2",
        "event_ts": T0 - timedelta(hours=3),  # outside the 1 h ttl at T0
        "score": float("nan"),
        "ratio": float("inf"),
        "label": None,
        "active": False,
        "last_seen": None,
        "day": None,
        "price": None,
        "blob": None,
        "hits": None,
    },
    {
        "device_id": "d-3",
        "event_ts": T0 - timedelta(minutes=5),
        "score": float("-inf"),
        "ratio": float("nan"),
        "label": "",
        "active": None,
        "last_seen": SEEN,
        "day": date(1999, 12, 31),
        "price": Decimal("-0.01"),
        "blob": b"",
        "hits": -(2**62),
    },
]


def _device_source() -> pa.Table:
    return pa.table(
        {
            "device_id": pa.array(["x"], pa.string()),
            "ts": pa.array([T0], pa.timestamp("us", tz="UTC")),
            "score": pa.array([0.0]),
            "ratio": pa.array([0.0], pa.float32()),
            "label": pa.array(["x"]),
            "active": pa.array([True]),
            "last_seen": pa.array([T0], pa.timestamp("us", tz="UTC")),
            "day": pa.array([date(2024, 1, 1)]),
            "price": pa.array([Decimal("1.00")], pa.decimal128(10, 2)),
            "blob": pa.array([b"x"]),
            "hits": pa.array([1], pa.int64()),
        }
    )


@pytest.fixture(params=BACKENDS)
def devices(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    """A string-keyed project with every field type, rows committed to both views and synced."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    root = tmp_path / "devices"
    make_project(root, features=DEVICE_FEATURES, config=config(request.param, url), data=pa.table({"x": [1]}))
    write_source(root, _device_source(), subdir="data/devices")
    fl = featurelake.open(root)
    try:
        fl.apply()
        for view in ("device_stats", "device_counts"):
            tbl = fl.project.load_table(view)
            schema = tbl.schema().as_arrow()
            tbl.append(
                pa.Table.from_pylist([{n: r[n] for n in schema.names} for r in DEVICE_ROWS], schema=schema)
            )
        fl.sync()
        yield fl
    finally:
        fl.close()


@pytest.fixture(params=BACKENDS, scope="module")
def users(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[featurelake.Featurelake]:
    """Read-only tests share it: users 1 and 3 fresh at NOW, user 2 outside the ttl."""
    url = fresh_db(request.getfixturevalue("redis_session"), 1) if request.param == "redis" else None
    fl = user_project(tmp_path_factory.mktemp("users"), request.param, url)
    try:
        append(fl, [(1, d(10), 10.5), (2, d(3), 20.0), (3, d(11), 30.0)])
        fl.sync()
        yield fl
    finally:
        fl.close()


def test_python_values_round_trip_every_type(devices: featurelake.Featurelake) -> None:
    d1, d2, d3, missing = devices.online.get("device_stats", ["d-1", "d-2", "d-3", "nope"], now=T0)
    assert d1.status == "PRESENT" and d1.event_ts == T0
    assert d1.values == {k: v for k, v in DEVICE_ROWS[0].items() if k not in ("device_id", "event_ts")}
    assert isinstance(d1.values["price"], Decimal) and isinstance(d1.values["blob"], bytes)
    assert d2.status == "OUTSIDE_MAX_AGE" and d2.event_ts == T0 - timedelta(hours=3)
    assert set(d2.values.values()) == {None}  # stale values are never served, as in a training set
    assert d3.status == "PRESENT"
    v = d3.values
    assert v["score"] == float("-inf") and math.isnan(v["ratio"]) and v["label"] == "" and v["active"] is None
    assert (v["day"], v["price"], v["blob"], v["hits"]) == (
        date(1999, 12, 31),
        Decimal("-0.01"),
        b"",
        -(2**62),
    )
    assert missing.status == "NOT_FOUND" and missing.event_ts is None
    # The stale row is served once "now" is within its ttl.
    (d2_then,) = devices.online.get("device_stats", ["d-2"], now=T0 - timedelta(hours=2, minutes=30))
    assert d2_then.status == "PRESENT" and math.isnan(d2_then.values["score"])
    assert d2_then.values["ratio"] == float("inf") and d2_then.values["active"] is False


def test_feast_response_json_values_and_statuses(devices: featurelake.Featurelake) -> None:
    out = devices.online.get_online_features(
        [
            "device_stats:score",
            "device_stats:last_seen",
            "device_stats:price",
            "device_stats:blob",
            "device_stats:day",
        ],
        {"device_id": ["d-1", "d-2", "d-3", "nope"]},
        now=T0,
    )
    assert out["metadata"]["feature_names"] == ["device_id", "score", "last_seen", "price", "blob", "day"]
    key, score, seen, price, blob, day = out["results"]
    assert key["values"] == ["d-1", "d-2", "d-3", "nope"] and set(key["statuses"]) == {"PRESENT"}
    assert score["statuses"] == ["PRESENT", "OUTSIDE_MAX_AGE", "PRESENT", "NOT_FOUND"]
    assert score["event_timestamps"] == [
        "2024-03-01T12:00:00Z",
        "2024-03-01T09:00:00Z",
        "2024-03-01T11:55:00Z",
        "1970-01-01T00:00:00Z",
    ]
    assert score["values"] == [0.25, None, "-Infinity", None]
    assert seen["values"] == ["2024-02-29T08:30:15.250000Z", None, "2024-02-29T08:30:15.250000Z", None]
    assert price["values"] == [12.34, None, -0.01, None]
    assert blob["values"] == ["AP9ieXRlcw==", None, "", None]
    assert day["values"] == ["2024-02-29", None, "1999-12-31", None]


def test_features_of_several_views_keep_request_order_in_one_round_trip(
    devices: featurelake.Featurelake,
) -> None:
    store = devices.online.store
    calls: list[Any] = []
    original = store.read

    def counting(requests: Any) -> Any:
        calls.append([(v, list(k)) for v, k in requests])
        return original(requests)

    store.read = counting  # type: ignore[method-assign]
    keys = [f"d-{i % 4}" for i in range(100)]
    out = devices.online.get_online_features(
        ["device_stats:label", "device_counts:hits", "device_stats:active"],
        {"device_id": keys},
        full_feature_names=True,
        now=T0,
    )
    assert len(calls) == 1 and [v for v, _ in calls[0]] == ["device_stats", "device_counts"]
    names = out["metadata"]["feature_names"]
    assert names == ["device_id", "device_stats__label", "device_counts__hits", "device_stats__active"]
    assert all(len(col["values"]) == 100 for col in out["results"])
    hits = out["results"][2]
    # device_counts has no ttl: the 3-hour-old row of d-2 is PRESENT there (hits is null in it).
    assert hits["values"][:4] == [None, 7, None, -(2**62)]
    assert hits["statuses"][:4] == ["NOT_FOUND", "PRESENT", "PRESENT", "PRESENT"]


@pytest.mark.redis
@pytest.mark.parametrize("devices", ["redis"], indirect=True)
def test_redis_lookup_of_many_entities_is_one_mget(devices: featurelake.Featurelake) -> None:
    client = devices.online.store.client  # type: ignore[attr-defined]

    def mgets() -> int:
        return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    before = mgets()
    devices.online.get_online_features(
        ["device_stats:hits", "device_counts:hits"],
        {"device_id": [f"d-{i}" for i in range(100)]},
        full_feature_names=True,
    )
    assert mgets() - before == 1


def test_key_type_comes_from_the_applied_table(users: featurelake.Featurelake) -> None:
    assert users.online.key_is_int(users.definitions.view("user_features")) is True
    r1, r2, r3 = users.online.get("user_features", [1, 2, 3], now=NOW)
    assert (r1.status, r2.status, r3.status) == ("PRESENT", "OUTSIDE_MAX_AGE", "PRESENT")
    assert r1.values["amount_avg_1d"] == 10.5 and r1.values["txn_count_1d"] == 10


def _store_snapshot(fl: featurelake.Featurelake) -> Any:
    store = fl.online.store
    keys = sorted(store.keys("user_features"))
    return keys, store.read([("user_features", keys)]), store.get_watermark("user_features")


BAD_REQUESTS: list[tuple[str, list[Any], Any, int, str]] = [
    ("unknown view", ["nope:x"], {"user_id": [1]}, 404, "unknown feature view 'nope'"),
    ("unknown feature", ["user_features:nope"], {"user_id": [1]}, 404, "has no feature 'nope'"),
    ("bad reference", ["amount_avg_1d"], {"user_id": [1]}, 422, "must be written 'view:feature'"),
    ("no features", [], {"user_id": [1]}, 422, "no features requested"),
    ("string for int key", ["user_features:amount_avg_1d"], {"user_id": ["1"]}, 422, "integer key; got '1'"),
    ("bool for int key", ["user_features:amount_avg_1d"], {"user_id": [True]}, 422, "got True (bool)"),
    ("null key", ["user_features:amount_avg_1d"], {"user_id": [None]}, 422, "got None (null)"),
    ("empty list", ["user_features:amount_avg_1d"], {"user_id": []}, 422, "entity lists are empty"),
    ("missing join key", ["user_features:amount_avg_1d"], {"uid": [1]}, 422, "entities lack 'user_id'"),
    ("no entities", ["user_features:amount_avg_1d"], {}, 422, "entities must map join keys"),
    ("not a list", ["user_features:amount_avg_1d"], {"user_id": 1}, 422, "must be a list of keys, got int"),
    ("ragged", ["user_features:amount_avg_1d"], {"user_id": [1, 2], "x": [1]}, 422, "differ in length"),
    (
        "too many",
        ["user_features:amount_avg_1d"],
        {"user_id": list(range(10_001))},
        413,
        "exceed the limit of 10000",
    ),
]


@pytest.mark.parametrize(
    ("case", "features", "entities", "status", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_are_refused_clearly_and_change_nothing(
    users: featurelake.Featurelake, case: str, features: list[Any], entities: Any, status: int, message: str
) -> None:
    before = _store_snapshot(users)
    with pytest.raises(RequestError) as info:
        users.online.get_online_features(features, entities)
    assert info.value.http_status == status and message in str(info.value), (case, str(info.value))
    assert _store_snapshot(users) == before


def test_name_collision_needs_full_feature_names(devices: featurelake.Featurelake) -> None:
    with pytest.raises(RequestError, match="set full_feature_names") as info:
        devices.online.get_online_features(
            ["device_stats:hits", "device_counts:hits"], {"device_id": ["d-1"]}
        )
    assert info.value.http_status == 422


def test_string_key_view_refuses_integers(devices: featurelake.Featurelake) -> None:
    with pytest.raises(RequestError, match="device_id of view 'device_stats' is a string key; got 1"):
        devices.online.get("device_stats", [1])
