"""The HTTP server: Feast's shapes over HTTP, JSON errors with the right status, auth, metrics, Redis outages,
and `featurelake serve` started as a real process and queried over loopback."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import featurelake
from featurelake.serving.server import create_app
from tests.online_helpers import LinearModel, append, project
from tests.redis_server import (
    RedisServer,
    free_port,
    fresh_db,
    own_redis_fixture,
    redis_session_fixture,
    redis_url_fixture,
)

_FIXTURES = (own_redis_fixture, redis_session_fixture, redis_url_fixture)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
REQUEST = {
    "features": ["user_features:amount_avg_1d", "user_features:txn_count_1d"],
    "entities": {"user_id": [1, 2]},
}


def recent(hours: float) -> object:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(hours=hours)


def published(fl: featurelake.Featurelake) -> None:
    """User 1 fresh, user 2 older than the 7-day ttl, user 3 absent."""
    append(fl, [(1, recent(2), 10.5), (2, recent(24 * 9), 20.0)])  # type: ignore[list-item]
    fl.sync()


@pytest.fixture(params=BACKENDS)
def fl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    handle = project(tmp_path / "proj", request.param, url)
    published(handle)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture(params=BACKENDS, scope="module")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[featurelake.Featurelake, TestClient]]:
    """One published project and app for the tests that only read (they must not change its config)."""
    url = fresh_db(request.getfixturevalue("redis_session"), 2) if request.param == "redis" else None
    handle = project(tmp_path_factory.mktemp("server"), request.param, url)
    try:
        published(handle)
        with TestClient(create_app(handle.project)) as c:
            yield handle, c
    finally:
        handle.close()


@pytest.fixture
def client(shared: tuple[featurelake.Featurelake, TestClient]) -> TestClient:
    return shared[1]


def check_feast_shape(body: dict) -> None:
    assert body["metadata"]["feature_names"] == ["user_id", "amount_avg_1d", "txn_count_1d"]
    key, avg, count = body["results"]
    assert key["values"] == [1, 2] and key["statuses"] == ["PRESENT", "PRESENT"]
    assert avg["values"] == [10.5, None] and count["values"] == [10, None]
    assert avg["statuses"] == ["PRESENT", "OUTSIDE_MAX_AGE"]
    assert all(ts.endswith("Z") for ts in avg["event_timestamps"])


def test_get_online_features_feast_shape(client: TestClient) -> None:
    r = client.post("/get-online-features", json=REQUEST)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    check_feast_shape(r.json())


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_body_is_json_whatever_the_content_type(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/get-online-features", content=json.dumps(REQUEST).encode(), headers=headers)
    assert r.status_code == 200, r.text
    check_feast_shape(r.json())


ERRORS = [
    ("malformed json", b'{"features": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 422, "must be a JSON object"),
    (
        "unknown field",
        b'{"features": ["user_features:amount_avg_1d"], "entity": {}}',
        422,
        "unknown request field",
    ),
    (
        "unknown feature service",
        b'{"feature_service": "fs", "entities": {"user_id": [1]}}',
        404,
        "unknown feature service 'fs'",
    ),
    (
        "features and feature service",
        b'{"features": ["user_features:a"], "feature_service": "fs", "entities": {"user_id": [1]}}',
        422,
        "not both",
    ),
    ("unknown view", b'{"features": ["nope:a"], "entities": {"user_id": [1]}}', 404, "unknown feature view"),
    (
        "unknown feature",
        b'{"features": ["user_features:a"], "entities": {"user_id": [1]}}',
        404,
        "no feature 'a'",
    ),
    (
        "wrong key type",
        b'{"features": ["user_features:amount_avg_1d"], "entities": {"user_id": ["1"]}}',
        422,
        "integer key",
    ),
    (
        "empty entities",
        b'{"features": ["user_features:amount_avg_1d"], "entities": {"user_id": []}}',
        422,
        "empty",
    ),
    (
        "full names not bool",
        b'{"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1]}, "full_feature_names": 1}',
        422,
        "true or false",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_json_with_the_right_status(
    shared: tuple[featurelake.Featurelake, TestClient], case: str, body: bytes, status: int, message: str
) -> None:
    fl, client = shared
    keys_before = sorted(fl.online.store.keys("user_features"))
    r = client.post("/get-online-features", content=body)
    assert r.status_code == status, (case, r.text)
    err = r.json()
    assert set(err) == {"error", "detail"} and message in err["detail"], err
    assert sorted(fl.online.store.keys("user_features")) == keys_before


def test_too_many_entities_is_413(client: TestClient) -> None:
    r = client.post(
        "/get-online-features",
        json={"features": ["user_features:amount_avg_1d"], "entities": {"user_id": list(range(100_000))}},
    )
    assert r.status_code == 413
    assert "exceed" in r.json()["detail"]


def test_oversized_body_is_413_before_parsing(fl: featurelake.Featurelake) -> None:
    fl.project.config.settings.server.max_request_bytes = 2048
    with TestClient(create_app(fl.project)) as c:
        r = c.post("/get-online-features", content=b"[" + b"1," * 5000 + b"1]")
    assert r.status_code == 413 and "server.max_request_bytes" in r.json()["detail"]


def test_bearer_token_guards_every_endpoint_but_healthz(fl: featurelake.Featurelake) -> None:
    fl.project.config.settings.server.token = SecretStr("s3cret")
    with TestClient(create_app(fl.project)) as c:
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic s3cret"}):
            r = c.post("/get-online-features", json=REQUEST, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in r.json()["detail"]
            assert c.get("/metrics", headers=headers).status_code == 401
        ok = {"authorization": "Bearer s3cret"}
        check_feast_shape(c.post("/get-online-features", json=REQUEST, headers=ok).json())
        assert c.get("/metrics", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_metrics_expose_requests_and_latency(client: TestClient) -> None:
    client.post("/get-online-features", json=REQUEST)
    client.post("/get-online-features", content=b"{")
    text = client.get("/metrics").text
    assert 'featurelake_prediction_latency_seconds_bucket{endpoint="/get-online-features",le="0.005"}' in text
    assert 'featurelake_http_requests_total{endpoint="/get-online-features",status="200"}' in text
    assert 'featurelake_http_requests_total{endpoint="/get-online-features",status="400"}' in text


def test_healthz(shared: tuple[featurelake.Featurelake, TestClient]) -> None:
    fl, client = shared
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "online_store": fl.online.store.type_name}


@pytest.mark.redis
def test_redis_down_is_503_and_the_server_recovers(
    tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    redis: RedisServer = request.getfixturevalue("own_redis")
    fl = project(tmp_path / "proj", "redis", redis.url)
    try:
        published(fl)
        with TestClient(create_app(fl.project)) as c:
            check_feast_shape(c.post("/get-online-features", json=REQUEST).json())
            redis.kill()
            r = c.post("/get-online-features", json=REQUEST)
            assert r.status_code == 503
            assert r.json()["error"] == "OnlineStoreUnavailableError"
            # The caller learns what is down; the address and the advice go to the server log.
            assert r.json()["detail"].startswith("the online store is unavailable")
            assert "127.0.0.1" not in r.json()["detail"]
            assert "check that Redis is running" in caplog.text
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            assert "featurelake_online_store_errors_total" in c.get("/metrics").text
            redis.start()  # append-only file: the synced data is back
            check_feast_shape(c.post("/get-online-features", json=REQUEST).json())
            assert c.get("/healthz").status_code == 200
    finally:
        fl.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, _ = proc.communicate()
            raise AssertionError(f"featurelake serve exited with {proc.returncode}: {out.decode()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("featurelake serve did not become healthy within 60 s")


@pytest.mark.redis
@pytest.mark.slow
def test_featurelake_serve_as_a_real_process(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url")
    fl = project(tmp_path / "proj", "redis", url)
    try:
        published(fl)
        model = tmp_path / "model.pkl"
        model.write_bytes(pickle.dumps(LinearModel([2.0], bias=1.0)))
        mv = fl.models.register("scorer", model, "pickle", signature={"amount_avg_1d": "double"})
        fl.models.promote("scorer", mv.version, "Staging")
        fl.models.promote("scorer", mv.version, "Production")
    finally:
        fl.close()
    port = free_port()
    env = {**os.environ, "FEATURELAKE_SERVER__TOKEN": "t0ken"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurelake", "-C", str(tmp_path / "proj"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        auth = {"authorization": "Bearer t0ken"}
        with httpx.Client(base_url=base, headers=auth, timeout=10) as http:
            r = http.post("/get-online-features", content=json.dumps(REQUEST))  # no Content-Type header
            assert r.status_code == 200
            check_feast_shape(r.json())
            assert http.post("/get-online-features", content=b"nope").status_code == 400
            scored = http.post("/predict/scorer", content=b'{"entities": {"user_id": [1, 2, 3]}}').json()
            assert scored["model_version"] == mv.version and scored["predictions"] == [22.0, None, None]
            assert 'endpoint="/get-online-features"' in http.get("/metrics").text
        assert httpx.post(f"{base}/get-online-features", json=REQUEST).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # A graceful shutdown (uvicorn re-raises SIGTERM after finishing, hence -15 rather than 0).
    assert proc.returncode in (0, -signal.SIGTERM)
    assert b"Finished server process" in out
