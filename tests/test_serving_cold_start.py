"""Cold start: the server loads Production models when it starts (in the background), and a request that
arrives before the load finished waits for it without the wait counting as prediction latency.

The model's unpickling blocks on a gate the test opens, so "the load is slow" is a fact of the test, not a
timing guess: the load is seen to start with no request made, a request sent meanwhile is answered once the
gate opens, and the latency the server records for it is shorter than the load it waited for.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import featurelake
from featurelake.serving.metrics import REGISTRY
from featurelake.serving.server import create_app
from tests.online_helpers import LinearModel, append, project

ENTERED = threading.Event()
GATE = threading.Event()
SIGNATURE = [
    {"name": "amount_avg_1d", "type": "double", "feature": "user_features:amount_avg_1d"},
    {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
]
ENDPOINT = "/predict/cold"


def slow_model(weights: list[float]) -> LinearModel:
    """What the pickle calls when it is loaded: waits for the test to open the gate."""
    ENTERED.set()
    GATE.wait()
    return LinearModel(weights)


class SlowToLoad:
    def __init__(self, weights: list[float]) -> None:
        self.weights = weights

    def __reduce__(self) -> tuple[Any, tuple[list[float]]]:
        return slow_model, (self.weights,)


def _latency(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"endpoint": ENDPOINT}) or 0.0


@pytest.fixture
def fl(tmp_path: Path) -> Iterator[featurelake.Featurelake]:
    handle = project(tmp_path / "proj", "sqlite")
    now = datetime.now(UTC)
    append(handle, [(1, now - timedelta(hours=1), 10.0), (2, now - timedelta(hours=2), 4.0)])
    handle.sync()
    art = tmp_path / "model.pkl"
    art.write_bytes(pickle.dumps(SlowToLoad([1.0, 0.5])))
    mv = handle.models.register("cold", art, "pickle", signature=SIGNATURE)
    handle.models.promote("cold", mv.version, "Staging")
    handle.models.promote("cold", mv.version, "Production")
    ENTERED.clear()
    GATE.clear()
    try:
        yield handle
    finally:
        GATE.set()
        handle.close()


def test_models_load_at_start_and_load_time_is_not_prediction_latency(fl: featurelake.Featurelake) -> None:
    count0, sum0 = (
        _latency("featurelake_prediction_latency_seconds_count"),
        _latency("featurelake_prediction_latency_seconds_sum"),
    )
    with TestClient(create_app(fl.project)) as client:
        # The server started and began loading the Production model before any request.
        ENTERED.wait()
        answered: dict[str, Any] = {}

        def request() -> None:
            t0 = answered["t0"] = time.perf_counter()
            answered["response"] = client.post(ENDPOINT, json={"entities": {"user_id": [1, 2, 3]}})
            answered["seconds"] = time.perf_counter() - t0

        caller = threading.Thread(target=request)
        caller.start()
        time.sleep(0.5)  # the request is in flight, waiting for the load
        assert "response" not in answered
        GATE.set()
        t_open = time.perf_counter()
        caller.join()

        r = answered["response"]
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [15.0, 6.0, None]  # 10 + 10 * 0.5, 4 + 4 * 0.5; user 3 unknown
        waited = t_open - answered["t0"]  # the request, once sent, waited at least this long for the load
        assert answered["seconds"] >= waited
        # Exactly one observation, and it is the serving part only: shorter than the wait for the load.
        assert _latency("featurelake_prediction_latency_seconds_count") == count0 + 1
        recorded = _latency("featurelake_prediction_latency_seconds_sum") - sum0
        assert recorded < waited
        load = REGISTRY.get_sample_value("featurelake_model_load_seconds", {"model": "cold"})
        assert load is not None and load >= waited  # the load itself is recorded, as load time

        # Later requests use the loaded model: no further load.
        again = client.post(ENDPOINT, json={"entities": {"user_id": [2]}})
        assert again.status_code == 200 and again.json()["predictions"] == [6.0]
        assert REGISTRY.get_sample_value("featurelake_model_load_seconds", {"model": "cold"}) == load
