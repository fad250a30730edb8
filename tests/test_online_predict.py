"""`POST /predict/{model}`: features looked up online, scored by the Production version, promotions picked
up without a restart, and clear errors for models that cannot be served."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import featurelake
from featurelake.serving.metrics import REGISTRY
from featurelake.serving.server import create_app
from tests.online_helpers import LinearModel, append, project
from tests.redis_server import redis_session_fixture, redis_url_fixture

_FIXTURES = (redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
SIGNATURE = [
    {"name": "amount_avg_1d", "type": "double", "feature": "user_features:amount_avg_1d"},
    {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
]
REFRESH = 0.2


def ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


def register(
    fl: featurelake.Featurelake, tmp: Path, model: LinearModel, signature: object = SIGNATURE
) -> str:
    path = tmp / f"model-{time.monotonic_ns()}.pkl"
    path.write_bytes(pickle.dumps(model))
    mv = fl.models.register("churn", path, "pickle", signature=signature)  # type: ignore[arg-type]
    fl.models.promote("churn", mv.version, "Staging")
    fl.models.promote("churn", mv.version, "Production")
    return mv.version


@pytest.fixture(params=BACKENDS)
def fl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    handle = project(tmp_path / "proj", request.param, url)
    handle.project.config.settings.server.model_refresh_seconds = REFRESH
    # Users 1 and 2 fresh, user 3 older than the 7-day ttl, user 4 never synced.
    append(handle, [(1, ago(1), 10.0), (2, ago(2), 4.0), (3, ago(24 * 8), 1.0)])
    handle.sync()
    try:
        yield handle
    finally:
        handle.close()


def test_predict_scores_online_features_with_the_production_version(
    fl: featurelake.Featurelake, tmp_path: Path
) -> None:
    v1 = register(fl, tmp_path, LinearModel([1.0, 0.5], bias=100.0))
    with TestClient(create_app(fl.project)) as client:
        r = client.post("/predict/churn", json={"entities": {"user_id": [1, 2, 3, 4]}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "churn" and body["model_version"] == v1
        # amount_avg_1d * 1 + txn_count_1d * 0.5 + 100 (txn_count = int(amount) in these rows)
        assert body["predictions"] == [115.0, 106.0, None, None]
        assert body["statuses"] == ["PRESENT", "PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
        assert body["features"] == ["user_features:amount_avg_1d", "user_features:txn_count_1d"]

        # A promotion is picked up without a restart, within model_refresh_seconds.
        v2 = register(fl, tmp_path, LinearModel([2.0, 0.0], bias=0.0))
        time.sleep(REFRESH + 0.05)
        labels = {"model": "churn", "version": v2}
        counted = REGISTRY.get_sample_value("featurelake_predictions_total", labels) or 0.0
        after = client.post("/predict/churn", json={"entities": {"user_id": [1, 2]}}).json()
        assert after["model_version"] == v2 != v1
        assert after["predictions"] == [20.0, 8.0]
        assert REGISTRY.get_sample_value("featurelake_predictions_total", labels) == counted + 2
        assert (
            'featurelake_prediction_latency_seconds_count{endpoint="/predict/churn"}'
            in client.get("/metrics").text
        )


def test_inputs_named_without_a_view_resolve_to_the_one_view_defining_them(
    fl: featurelake.Featurelake, tmp_path: Path
) -> None:
    register(fl, tmp_path, LinearModel([3.0]), signature={"amount_avg_1d": "double"})
    with TestClient(create_app(fl.project)) as client:
        body = client.post("/predict/churn", json={"entities": {"user_id": [2]}}).json()
    assert body["predictions"] == [12.0] and body["features"] == ["user_features:amount_avg_1d"]


@pytest.mark.parametrize(
    ("setup", "path", "body", "status", "message"),
    [
        (None, "/predict/nope", {"entities": {"user_id": [1]}}, 404, "nope"),
        ("staging-only", "/predict/churn", {"entities": {"user_id": [1]}}, 404, "no version in Production"),
        ("unmapped", "/predict/churn", {"entities": {"user_id": [1]}}, 422, "input 'mystery'"),
        ("ok", "/predict/churn", {"features": []}, 422, '{"entities"'),
        ("ok", "/predict/churn", {"entities": {"user_id": ["1"]}}, 422, "integer key"),
        (
            "unsigned",
            "/predict/churn",
            {"entities": {"user_id": [1]}},
            422,
            "register it with --training-set",
        ),
    ],
    ids=[
        "unknown model",
        "no production version",
        "unmapped input",
        "bad body",
        "wrong key type",
        "no signature",
    ],
)
def test_models_that_cannot_be_served_are_clear_errors(
    fl: featurelake.Featurelake,
    tmp_path: Path,
    setup: str | None,
    path: str,
    body: object,
    status: int,
    message: str,
) -> None:
    if setup == "staging-only":
        model = tmp_path / "m.pkl"
        model.write_bytes(pickle.dumps(LinearModel([1.0, 1.0])))
        mv = fl.models.register("churn", model, "pickle", signature=SIGNATURE)
        fl.models.promote("churn", mv.version, "Staging")
    elif setup == "unmapped":
        register(fl, tmp_path, LinearModel([1.0]), signature={"mystery": "double"})
    elif setup == "ok":
        register(fl, tmp_path, LinearModel([1.0, 1.0]))
    elif setup == "unsigned":  # neither a signature nor a training set: the inputs are unknown
        register(fl, tmp_path, LinearModel([1.0, 1.0]), signature=None)
    keys_before = sorted(fl.online.store.keys("user_features"))
    with TestClient(create_app(fl.project)) as client:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert sorted(fl.online.store.keys("user_features")) == keys_before
