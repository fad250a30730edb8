"""Online requests no other test sent: ``POST /push`` without a view, ``POST /predict/{model}`` with a body
that is not JSON, ``/get-online-features`` with entities that are not an object, and the SDK's lookups with
both a feature list and a feature service, with keys that are not a list, by key on an on-demand view that
reads only request data, and with a request field named like the key.

Each answer is JSON ``{"error", "detail"}`` with a 4xx status (a RequestError in the SDK) whose message says
what to send instead, and the online store holds exactly the keys it held before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import featurelake
from featurelake.errors import RequestError
from featurelake.serving.server import create_app
from featurelake.streaming.push import PushService
from tests import composite_helpers as composite
from tests.helpers import make_project, transactions
from tests.online_helpers import NOW, VIEW, append, config, d, project

SERVICE_FEATURES = """

import pyarrow.compute as pc
from featurelake import FeatureService, OnDemandFeatureView, RequestSource

scoring = FeatureService("scoring", features=["user_features:amount_avg_1d"])
txn = RequestSource({"amount": "double"}, name="txn")


def _ratio(t):
    return {"amount_vs_avg": pc.divide(t["amount"], t["amount_avg_1d"])}


def _doubled(t):
    return {"amount_x2": pc.multiply(t["amount"], 2.0)}


ratio = OnDemandFeatureView(name="ratio", sources=[user_features, txn], fields={"amount_vs_avg": "double"}, udf=_ratio)
doubled = OnDemandFeatureView(name="doubled", sources=[txn], fields={"amount_x2": "double"}, udf=_doubled)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    """An applied project on SQLite with users 1 and 2 synced to the online store and a feature service."""
    root = tmp_path_factory.mktemp("online") / "proj"
    fl = project(root, "sqlite")
    with (root / "features.py").open("a") as f:
        f.write(SERVICE_FEATURES)
    fl.close()
    fl = featurelake.open(root)
    append(fl, [(1, d(10), 10.0), (2, d(11), 4.0)])
    fl.sync()
    try:
        yield fl
    finally:
        fl.close()


@pytest.fixture(scope="module")
def client(served: featurelake.Featurelake) -> Iterator[TestClient]:
    project = served.project
    with TestClient(create_app(project, push=lambda store: PushService(project, store))) as c:
        yield c


def keys(fl: featurelake.Featurelake) -> list[str]:
    return sorted(fl.online.store.keys(VIEW))


def error_of(r: object, status: int) -> str:
    assert getattr(r, "status_code", None) == status, getattr(r, "text", r)
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in body["detail"]
    return str(body["detail"])


@pytest.mark.parametrize(
    ("path", "body", "status", "needles"),
    [
        (
            "/push",
            b'{"df": {"user_id": [3], "event_ts": ["2024-01-11T00:00:00Z"]}, "to": "online"}',
            422,
            ['"push_source_name"', "name the feature view"],
        ),
        ("/predict/churn", b'{"entities": {"user_id": [1]', 400, ["request body is not valid JSON"]),
        (
            "/get-online-features",
            b'{"features": ["user_features:amount_avg_1d"], "entities": [1, 2]}',
            422,
            ['"entities" must be an object mapping join keys to lists', '{"user_id": [1, 2]}'],
        ),
        (
            "/get-online-features",
            b'{"features": [["user_features", "amount_avg_1d"]], "entities": {"user_id": [1]}}',
            422,
            ["feature reference", "must be a string 'view:feature', e.g. 'user_features:amount_avg_1d'"],
        ),
    ],
    ids=["push-without-view", "predict-not-json", "entities-not-an-object", "feature-ref-not-a-string"],
)
def test_bad_request_is_a_json_4xx_and_writes_nothing(
    served: featurelake.Featurelake,
    client: TestClient,
    path: str,
    body: bytes,
    status: int,
    needles: list[str],
) -> None:
    before = keys(served)
    detail = error_of(client.post(path, content=body), status)
    for n in needles:
        assert n in detail, f"{n!r} not in {detail!r}"
    assert keys(served) == before
    assert client.get("/healthz").status_code == 200, "the server must keep serving after a bad request"


def test_sdk_features_and_feature_service_together(served: featurelake.Featurelake) -> None:
    before = keys(served)
    with pytest.raises(RequestError) as ei:
        served.online.get_online_features(
            ["user_features:amount_avg_1d"], {"user_id": [1]}, feature_service="scoring", now=NOW
        )
    assert 'give either "features" or "feature_service", not both' in str(ei.value)
    assert ei.value.http_status == 422
    assert keys(served) == before


def test_sdk_keys_that_are_not_a_list(served: featurelake.Featurelake) -> None:
    with pytest.raises(RequestError) as ei:
        served.online.get(VIEW, 1.5, now=NOW)  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "keys of view 'user_features'" in msg and "a list such as [1, 2]" in msg and "float" in msg, msg


@pytest.mark.parametrize(
    ("view", "request_fields", "needles"),
    [
        (
            "doubled",
            {"amount": [1.0]},
            ["'doubled' reads no feature view, only request data", "get_online_features"],
        ),
        (
            "ratio",
            {"user_id": [1], "amount": [1.0]},
            ["request field 'user_id' is also a key column of 'ratio'"],
        ),
    ],
    ids=["request-only-view-by-key", "request-field-named-like-the-key"],
)
def test_sdk_on_demand_lookup_mistakes(
    served: featurelake.Featurelake, view: str, request_fields: dict[str, list[object]], needles: list[str]
) -> None:
    before = keys(served)
    with pytest.raises(RequestError) as ei:
        served.online.get(view, [1], now=NOW, request=request_fields)
    for n in needles:
        assert n in str(ei.value), f"{n!r} not in message: {ei.value}"
    assert keys(served) == before


def test_sdk_lookup_still_answers_after_the_refusals(served: featurelake.Featurelake) -> None:
    rows = served.online.get(VIEW, [1, 2], now=NOW)
    assert [(r.key, r.status, r.values["amount_avg_1d"]) for r in rows] == [
        (1, "PRESENT", 10.0),
        (2, "PRESENT", 4.0),
    ]


def test_the_fixture_project_is_what_the_cases_assume(served: featurelake.Featurelake) -> None:
    assert "scoring" in served.definitions.services
    assert keys(served) != []


def test_a_lookup_before_apply_says_what_to_run(tmp_path: Path) -> None:
    """A view whose entity declares no key type takes it from its table: without one yet, a 404 that says
    which commands create and fill it (and nothing is created by asking)."""
    root = make_project(tmp_path / "p", config=config("sqlite", None, ""), data=transactions())
    with featurelake.open(root) as fl:
        with pytest.raises(RequestError) as ei:
            fl.online.get(VIEW, [1], now=NOW)
        assert ei.value.http_status == 404
        assert (
            "view 'user_features' has no table yet: run `featurelake apply`, a backfill and `featurelake sync`"
            in str(ei.value)
        )
        assert not fl.project.catalog.table_exists(f"features.{VIEW}")


@pytest.mark.parametrize("keys", ["1,a%2Cb", 7])
def test_composite_keys_given_as_one_value_say_how_to_give_them(tmp_path: Path, keys: object) -> None:
    root = composite.composite_project(tmp_path / "p")
    with featurelake.open(root) as fl:
        fl.apply()
        with pytest.raises(RequestError) as ei:
            fl.online.get(composite.VIEW, keys, now=NOW)  # type: ignore[arg-type]
    msg = str(ei.value)
    assert "view 'user_merchant_features' has a composite key (user_id, merchant_id)" in msg, msg
    assert "pass a list of dicts such as" in msg and "or of tuples in that order" in msg
