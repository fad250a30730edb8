"""Request-time (on-demand) features: declared once, computed after the point-in-time join in training sets and from
the rows just read in online lookups (request data from the entity frame / the request's entities), with clear errors
naming the view; a hypothesis law checks that both paths give every value the same."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featurelake
from featurelake import ConfigError, DataError, OnDemandFeatureView, RequestSource, UsageError
from featurelake.serving.server import create_app
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions
from tests.online_helpers import NOW, LinearModel, config, table
from tests.redis_server import fresh_db, redis_session_fixture

_FIXTURES = (redis_session_fixture,)

ON_DEMAND = """
import pyarrow.compute as pc
from featurelake import FeatureService, OnDemandFeatureView, RequestSource

txn = RequestSource({"amount": "double", "n": "long"}, name="txn")


def mix_arrow(t):
    return {
        "ratio": pc.divide(t["amount"], t["amount_avg_1d"]),
        "total": pc.add(t["amount_sum_1d"], pc.multiply(t["amount"], pc.cast(t["n"], "double"))),
        "more": pc.greater(t["txn_count_1d"], t["n"]),
        "count_plus": pc.add(t["txn_count_1d"], t["n"]),
    }


def mix_pandas(df):
    out = df.copy()
    out["ratio"] = df["amount"] / df["amount_avg_1d"]
    out["total"] = df["amount_sum_1d"] + df["amount"] * df["n"]
    out["more"] = (df["txn_count_1d"] > df["n"]).where(df["txn_count_1d"].notna() & df["n"].notna())
    out["count_plus"] = df["txn_count_1d"] + df["n"]
    return out


def mix_python(d):
    def op(f, *xs):
        return None if any(x is None for x in xs) else f(*xs)

    def div(a, b):
        if b == 0:
            return math.copysign(math.inf, a) if a != 0 and not math.isnan(a) else math.nan
        return a / b

    import math
    rows = list(zip(d["amount"], d["amount_avg_1d"], d["amount_sum_1d"], d["txn_count_1d"], d["n"]))
    return {
        "ratio": [op(div, a, avg) for a, avg, s, c, n in rows],
        "total": [op(lambda s, a, n: s + a * n, s, a, n) for a, avg, s, c, n in rows],
        "more": [op(lambda c, n: c > n, c, n) for a, avg, s, c, n in rows],
        "count_plus": [op(lambda c, n: c + n, c, n) for a, avg, s, c, n in rows],
    }


FIELDS = {"ratio": "double", "total": "double", "more": "boolean", "count_plus": "long"}
mix = OnDemandFeatureView(name="mix", sources=[user_features, txn], fields=FIELDS, udf=mix_arrow)
mix_pd = OnDemandFeatureView(name="mix_pd", sources=[user_features, txn], fields=FIELDS, udf=mix_pandas, mode="pandas")
mix_py = OnDemandFeatureView(name="mix_py", sources=[user_features, txn], fields=FIELDS, udf=mix_python, mode="python")

scored = FeatureService("scored", features=["user_features:amount_avg_1d", "mix:ratio"])
"""
OUTPUTS = list({"ratio": "double", "total": "double", "more": "boolean", "count_plus": "long"})


def features_py(extra: str = "") -> str:
    return DEFAULT_FEATURES + ON_DEMAND + extra


def entity_frame(users: list[int], at: datetime, amount: list[Any], n: list[Any]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array([at] * len(users), pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
            "n": pa.array(n, pa.int64()),
        }
    )


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def fl(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[featurelake.Featurelake]:
    """Days 0-1 published and synced to the online store (SQLite, and a real redis-server); the parity law writes
    its own rows."""
    url = fresh_db(request.getfixturevalue("redis_session"), 6) if request.param == "redis" else None
    root = tmp_path_factory.mktemp("ondemand") / "proj"
    make_project(root, features=features_py(), config=config(request.param, url), data=transactions(days=2))
    handle = featurelake.open(root)
    handle.apply()
    handle.backfill("user_features", day(0), day(2), run_id="base")
    handle.sync()
    try:
        yield handle
    finally:
        handle.close()


# --- declaring ---------------------------------------------------------------------------------------------


def test_exported_and_described(fl: featurelake.Featurelake) -> None:
    assert {"OnDemandFeatureView", "RequestSource"} <= set(featurelake.__all__)
    odfv = fl.definitions.on_demand["mix"]
    assert isinstance(odfv, OnDemandFeatureView) and odfv.mode == "arrow"
    assert list(odfv.inputs) == ["txn_count_1d", "amount_sum_1d", "amount_avg_1d", "amount", "n"]
    assert odfv.input_refs == [
        f"user_features:{f}" for f in ("txn_count_1d", "amount_sum_1d", "amount_avg_1d")
    ]
    assert RequestSource([("amount", "double")], name="r").schema == {"amount": "double"}


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('OnDemandFeatureView("x", sources=[txn], fields={"y": "double"}, udf=mix_arrow, mode="sql")', "mode must be one of"),
        ('OnDemandFeatureView("x", sources=[txn], fields={"y": "double"}, udf=3)', "udf must be a function"),
        ('OnDemandFeatureView("x", sources=[], fields={"y": "double"}, udf=mix_arrow)', "has no sources"),
        ('OnDemandFeatureView("x", sources=txn, fields={"y": "double"}, udf=mix_arrow)', "sources must be a list"),
        ('OnDemandFeatureView("x", sources=["user_features"], fields={"y": "double"}, udf=mix_arrow)', "must be a FeatureView or a RequestSource, got str"),
        ('OnDemandFeatureView("x", sources=[txn], fields={}, udf=mix_arrow)', "declares no fields"),
        ('OnDemandFeatureView("x", sources=[txn], fields={"y": "complex"}, udf=mix_arrow)', "field 'y': unknown type 'complex'"),
        ('OnDemandFeatureView("x", sources=[user_features, RequestSource({"amount_avg_1d": "double"})], fields={"y": "double"}, udf=mix_arrow)',
         "input 'amount_avg_1d' comes from both view 'user_features' and request source 'request'"),
        ('OnDemandFeatureView("x", sources=[user_features, RequestSource({"user_id": "long"})], fields={"y": "double"}, udf=mix_arrow)',
         "request field(s) user_id are also join keys"),
        ('OnDemandFeatureView("x", sources=[txn, txn], fields={"y": "double"}, udf=mix_arrow)', "listed twice"),
        ('RequestSource({})', "the schema is empty"),
        ('RequestSource({"a": "nope"})', "field 'a': unknown type 'nope'"),
        ('RequestSource("amount")', "schema must be a dict"),
        ('OnDemandFeatureView("user_features", sources=[txn], fields={"y": "double"}, udf=mix_arrow)', "has the name of a feature view"),
        ('FeatureService("s", features=["mix:nope"])', "names feature 'nope' of view 'mix'"),
    ],
)  # fmt: skip
def test_wrong_declarations_are_refused_when_features_py_loads(
    tmp_path: Path, declaration: str, message: str
) -> None:
    root = make_project(
        tmp_path / "proj", features=features_py(f"\nbad = {declaration}\n"), data=transactions(days=1)
    )
    with featurelake.open(root) as handle, pytest.raises(ConfigError) as err:
        handle.definitions  # noqa: B018 - loading is what is tested
    assert message in str(err.value)


def test_an_on_demand_view_has_no_table(fl: featurelake.Featurelake) -> None:
    with pytest.raises(UsageError, match="'mix' is an on-demand feature view: it is computed when asked for"):
        fl.backfill("mix", day(0), day(1))
    assert all(r.view != "mix" for r in fl.apply())  # apply creates nothing for it


# --- training sets -----------------------------------------------------------------------------------------


def test_training_set_computes_after_the_join_with_request_data_from_the_entity_frame(
    fl: featurelake.Featurelake,
) -> None:
    ents = entity_frame([1, 2, 999], START + timedelta(days=1, hours=12), [50.0, None, 10.0], [2, 3, 1])
    ts = fl.training_set(ents, ["user_features:amount_avg_1d", "mix:ratio", "mix:count_plus"])
    assert ts.column_names == [
        "user_id",
        "event_timestamp",
        "amount",
        "n",
        "amount_avg_1d",
        "ratio",
        "count_plus",
    ]
    avg = ts["amount_avg_1d"].to_pylist()
    assert ts["ratio"].to_pylist() == [50.0 / avg[0], None, None]  # no request amount; no feature row
    counts = fl.training_set(ents, ["user_features:txn_count_1d"])["txn_count_1d"].to_pylist()
    assert ts["count_plus"].to_pylist() == [counts[0] + 2, counts[1] + 3, None]
    # The three modes are one computation.
    outs = {
        v: fl.training_set(ents, [f"{v}:{f}" for f in OUTPUTS], full_feature_names=True)
        for v in ("mix", "mix_pd", "mix_py")
    }
    for v in ("mix_pd", "mix_py"):
        for f in OUTPUTS:
            assert outs[v][f"{v}__{f}"].to_pylist() == outs["mix"][f"mix__{f}"].to_pylist(), (v, f)
    prov = ts.schema.metadata[b"featurelake.provenance"].decode()
    assert '"on_demand":{"mix":' in prov and '"udf_sha256"' in prov


def test_training_set_errors_name_the_view_and_the_field(fl: featurelake.Featurelake, tmp_path: Path) -> None:
    at = START + timedelta(days=1)
    no_n = entity_frame([1], at, [1.0], [1]).drop_columns(["n"])
    with pytest.raises(
        UsageError, match=r"on-demand feature view 'mix' needs request field\(s\) n: in a training set"
    ):
        fl.training_set(no_n, ["mix:ratio"])
    text_n = no_n.append_column("n", pa.array(["lots"]))
    with pytest.raises(
        UsageError, match="entity column 'n' is string, but on-demand feature view 'mix' declares"
    ):
        fl.training_set(text_n, ["mix:ratio"])
    with pytest.raises(
        UsageError, match="on-demand feature view 'mix' has no feature nope: it defines ratio"
    ):
        fl.training_set(entity_frame([1], at, [1.0], [1]), ["mix:nope"])


BROKEN = {
    "raises": ("def f(t):\n    raise ValueError('boom')\n", "its udf (mode arrow) raised ValueError: boom"),
    "missing": ("def f(t):\n    return {'other': t['amount']}\n", "its udf returned no column y (it returned other)"),
    "length": ("def f(t):\n    return {'y': [1.0]}\n", "output 'y' has 1 values for 2 input rows"),
    "type": ("def f(t):\n    return {'y': ['a', 'b']}\n", "output 'y' is string, which does not convert to its declared type double"),
    "shape": ("def f(t):\n    return 42\n", "its udf returned int; in mode 'arrow' it must return a pyarrow.Table"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_udf_is_a_data_error_naming_the_view(tmp_path: Path, case: str) -> None:
    udf, message = BROKEN[case]
    extra = (
        f"\n{udf}\nbroken = OnDemandFeatureView('broken', sources=[txn], fields={{'y': 'double'}}, udf=f)\n"
    )
    root = make_project(
        tmp_path / "proj", features=features_py(extra), config=config("sqlite"), data=transactions(days=1)
    )
    with featurelake.open(root) as handle:
        handle.apply()
        with pytest.raises(DataError) as err:
            handle.training_set(entity_frame([1, 2], START, [1.0, 2.0], [1, 1]), ["broken:y"])
        assert str(err.value).startswith("on-demand feature view 'broken': ") and message in str(err.value)
        with pytest.raises(DataError, match=message.split("(")[0]):
            handle.online.get_online_features(["broken:y"], {"amount": [1.0, 2.0], "n": [1, 1]})


def test_a_rebuild_refuses_a_changed_udf(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=features_py(), data=transactions(days=2))
    ents = entity_frame([1, 2], START + timedelta(days=1, hours=6), [5.0, 6.0], [1, 2])
    with featurelake.open(root) as handle:
        handle.apply()
        handle.backfill("user_features", day(0), day(2))
        ts = handle.training_set(ents, ["mix:ratio"])
        assert handle.training_set(ents, provenance=ts).equals(ts)
    (root / "features.py").write_text(
        features_py().replace('pc.divide(t["amount"], t["amount_avg_1d"])', 't["amount"]')
    )
    with (
        featurelake.open(root) as handle,
        pytest.raises(UsageError, match="'mix' changed since this training set was built"),
    ):
        handle.training_set(ents, provenance=ts)


# --- online ------------------------------------------------------------------------------------------------


def test_online_lookup_computes_from_the_request_and_does_not_echo_request_fields(
    fl: featurelake.Featurelake,
) -> None:
    now = START + timedelta(days=2)
    stored = fl.online.get("user_features", [1, 2], now=now)
    found = fl.online.get_online_features(
        ["mix:ratio", "mix:count_plus", "user_features:amount_avg_1d"],
        {"user_id": [1, 2, 999], "amount": [50.0, None, 1.0], "n": [2, 3, 4]},
        now=now,
    )
    assert found["metadata"]["feature_names"] == ["user_id", "ratio", "count_plus", "amount_avg_1d"]
    ratio, plus = found["results"][1], found["results"][2]
    assert ratio["values"] == [50.0 / stored[0].values["amount_avg_1d"], None, None]
    assert ratio["statuses"] == ["PRESENT", "NULL_VALUE", "NULL_VALUE"]
    assert ratio["event_timestamps"] == ["1970-01-01T00:00:00Z"] * 3
    assert plus["values"] == [
        stored[0].values["txn_count_1d"] + 2,
        stored[1].values["txn_count_1d"] + 3,
        None,
    ]
    rows = fl.online.get("mix", [1, 2], request={"amount": [50.0, None], "n": [2, 3]}, now=now)
    assert rows[0].values["ratio"] == ratio["values"][0]
    assert rows[1].statuses is not None and rows[1].statuses["ratio"] == "NULL_VALUE"
    with pytest.raises(UsageError, match=r"request\['n'\] must be a list with one value per key \(2 keys\)"):
        fl.online.get("mix", [1, 2], request={"amount": [1.0, 2.0], "n": [1]})
    with pytest.raises(UsageError, match="request data applies to on-demand feature views"):
        fl.online.get("user_features", [1], request={"amount": [1.0]})


def test_http_lookup_and_prediction_with_on_demand_features(
    fl: featurelake.Featurelake, tmp_path: Path
) -> None:
    ents = {"user_id": [1, 2], "amount": [50.0, 20.0], "n": [2, 3]}
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(LinearModel([1.0, 10.0], bias=0.0)))
    mv = fl.models.register("ratio_model", path, "pickle", service="scored")
    assert [f.feature for f in mv.signature] == ["user_features:amount_avg_1d", "mix:ratio"]
    fl.models.promote("ratio_model", mv.version, "Staging")
    fl.models.promote("ratio_model", mv.version, "Production")
    fl.project.config.settings.server.model_refresh_seconds = 3600.0
    with TestClient(create_app(fl.project)) as client:
        r = client.post(
            "/get-online-features", json={"features": ["mix:ratio", "mix:more"], "entities": ents}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["metadata"]["feature_names"] == ["user_id", "ratio", "more"]
        pred = client.post("/predict/ratio_model", json={"entities": ents})
        assert pred.status_code == 200, pred.text
        got = pred.json()
        # The stored rows are from 2024: outside the view's ttl today, so the model's inputs are null.
        assert got["statuses"] == ["OUTSIDE_MAX_AGE", "OUTSIDE_MAX_AGE"] and got["predictions"] == [
            None,
            None,
        ]
        errors = [
            ({"features": ["mix:ratio"], "entities": {"user_id": [1], "amount": [1.0]}}, 422,
             "entities lack 'n', request field(s) of on-demand feature view 'mix'"),
            ({"features": ["mix:ratio"], "entities": {"user_id": [1], "amount": ["x"], "n": [1]}}, 422,
             "request field 'amount' of on-demand feature view 'mix' is double; got 'x'"),
            ({"features": ["mix:ratio"], "entities": {"user_id": [1], "amount": [1.0], "n": [1.5]}}, 422,
             "request field 'n' of on-demand feature view 'mix' is int64; got 1.5"),
            ({"features": ["mix:nope"], "entities": ents}, 404, "on-demand feature view 'mix' has no feature 'nope'"),
        ]  # fmt: skip
        for request, status, detail in errors:
            bad = client.post("/get-online-features", json=request)
            assert bad.status_code == status and detail in bad.json()["detail"], bad.text
        missing = client.post("/predict/ratio_model", json={"entities": {"user_id": [1]}})
        assert missing.status_code == 422 and "entities lack 'amount', 'n'" in missing.json()["detail"]
    with pytest.raises(
        UsageError, match=r"reads on-demand feature view\(s\) mix, which are computed when a request"
    ):
        fl.predict("ratio_model", "user_features")


def test_prediction_with_fresh_rows_uses_request_data(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make_project(root, features=features_py(), config=config("sqlite"), data=transactions(days=1))
    with featurelake.open(root) as handle:
        handle.apply()
        tbl = table(handle)
        now = datetime.now(UTC)
        rows = {"user_id": [1], "event_ts": [now - timedelta(hours=1)], "txn_count_1d": [2], "amount_sum_1d": [8.0],
                "amount_avg_1d": [4.0]}  # fmt: skip
        tbl.append(pa.table(rows).cast(tbl.schema().as_arrow()))
        handle.sync()
        path = tmp_path / "m.pkl"
        path.write_bytes(pickle.dumps(LinearModel([1.0, 10.0], bias=0.0)))
        mv = handle.models.register("ratio_model", path, "pickle", service="scored")
        handle.models.promote("ratio_model", mv.version, "Staging")
        handle.models.promote("ratio_model", mv.version, "Production")
        with TestClient(create_app(handle.project)) as client:
            got = client.post(
                "/predict/ratio_model", json={"entities": {"user_id": [1], "amount": [20.0], "n": [0]}}
            )
        assert got.json()["predictions"] == [4.0 + 10.0 * (20.0 / 4.0)], got.text


# --- parity: one law over both paths -------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6, width=64)
maybe_float = st.one_of(st.none(), finite, st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]))
maybe_int = st.one_of(st.none(), st.integers(-1000, 1000))
row = st.fixed_dictionaries(
    {
        "stored": st.booleans(),
        "count": maybe_int,
        "sum": maybe_float,
        "avg": maybe_float,
        "amount": maybe_float,
        "n": maybe_int,
    }
)
_users = count(10_000)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str):  # the JSON form of a non-finite float
        a = float(a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=8))
def test_training_and_serving_compute_every_value_the_same(
    fl: featurelake.Featurelake, rows: list[dict[str, Any]]
) -> None:
    users = [next(_users) for _ in rows]
    at = NOW - timedelta(hours=1)
    stored = [(u, r) for u, r in zip(users, rows, strict=True) if r["stored"]]
    if stored:
        tbl = table(fl)
        data = {
            "user_id": [u for u, _ in stored],
            "event_ts": [at - timedelta(hours=1)] * len(stored),
            "txn_count_1d": [r["count"] for _, r in stored],
            "amount_sum_1d": [r["sum"] for _, r in stored],
            "amount_avg_1d": [r["avg"] for _, r in stored],
        }
        tbl.append(pa.table(data).cast(tbl.schema().as_arrow()))
        fl.sync()
    amount, n = [r["amount"] for r in rows], [r["n"] for r in rows]
    for view in ("mix", "mix_pd", "mix_py"):
        refs = [f"{view}:{f}" for f in OUTPUTS]
        trained = fl.training_set(entity_frame(users, at, amount, n), refs)
        served = fl.online.get(view, users, request={"amount": amount, "n": n}, now=at)
        feast = fl.online.get_online_features(refs, {"user_id": users, "amount": amount, "n": n}, now=at)
        for j, f in enumerate(OUTPUTS):
            expected = trained[f].to_pylist()
            for i, want in enumerate(expected):
                got = served[i].values[f]
                assert _same(got, want) or (want is None and got is None), (view, f, i, want, got, rows[i])
                json_value = feast["results"][1 + j]["values"][i]
                assert _same(json_value, want) or (want is None and json_value is None), (
                    view,
                    f,
                    i,
                    want,
                    json_value,
                )
