"""Fuzz the HTTP API of a real ``featurelake serve`` process on a loopback port: never a 500, never a hang.

Two generators, both bounded (a fixed number of examples, a timeout on every request):

- schemathesis, driven by the OpenAPI spec the server itself serves at ``/openapi.json``: every operation,
  valid and invalid (negative mode) paths, query strings and headers;
- hypothesis, for what the spec cannot describe (both POST endpoints read a raw JSON body): arbitrary JSON
  documents, near-valid lookup and predict requests with hostile values (huge and negative integers,
  floats, NaN-like strings, nested objects, unicode, NUL), and raw bytes.

The server has a synced view and a Production model, so fuzzed requests reach the lookup and the model,
not only the parser. After the fuzzing, the server is still healthy and its log holds no traceback.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.online_helpers import LinearModel, append, project
from tests.redis_server import free_port
from tests.reliability.common import REPO, env

pytestmark = [pytest.mark.reliability]

TIMEOUT = 10.0  # seconds per request: a request that takes longer is a hang, and fails the test
ALLOWED = {200, 307, 400, 401, 404, 405, 413, 422}  # 307: Starlette redirects a trailing slash
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"the server died:\n{self.log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    root = tmp / "proj"
    now = datetime.now(UTC)
    fl = project(root, "sqlite")
    try:
        append(fl, [(u, now - timedelta(hours=u), float(u)) for u in range(1, 21)])
        fl.sync()
        model = tmp / "model.pkl"
        model.write_bytes(pickle.dumps(LinearModel([2.0], bias=1.0)))
        mv = fl.models.register("scorer", model, "pickle", signature={"amount_avg_1d": "double"})
        fl.models.promote("scorer", mv.version, "Staging")
        fl.models.promote("scorer", mv.version, "Production")
    finally:
        fl.close()
    port = free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "featurelake", "-C", str(root), "serve", "--port", str(port)],
            env=env(),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        for _ in range(600):
            srv.check_alive()
            try:
                if httpx.get(f"{srv.base}/healthz", timeout=TIMEOUT).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"featurelake serve did not become healthy:\n{log.read_text()}")
        yield srv
        srv.check_alive()
        assert httpx.get(f"{srv.base}/healthz", timeout=TIMEOUT).status_code == 200
        # No request may have crashed a handler.
        tracebacks = log.read_text().split("Traceback (most recent call last):")[1:]
        assert not tracebacks, tracebacks[0][-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as c:
        yield c


def check(server: Server, status: int, body: bytes, what: str) -> None:
    assert status in ALLOWED, f"{what} -> {status}: {body[:500]!r}"
    if status in (200, 307):
        return  # /metrics answers Prometheus text; the JSON endpoints' 200s are checked by tests/test_online_*
    elif status in (404, 405) and set(json.loads(body)) == {"detail"}:
        pass  # a path no route matches (e.g. /predict/.. normalised to /): Starlette's own JSON error
    else:
        err = json.loads(body)
        assert set(err) == {"error", "detail"} and err["detail"], err


# --- schemathesis over the served spec -------------------------------------------------------------------
def test_schemathesis_over_the_served_openapi_spec(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json", timeout=TIMEOUT)
    paths = {op.ok().path for op in schema.get_all_operations() if isinstance(op, Ok)}
    assert {"/get-online-features", "/predict/{model}", "/healthz", "/metrics"} <= paths
    seen: list[int] = []

    @FUZZ
    @given(
        case=st.one_of(
            schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
        )
    )
    def run(case: Any) -> None:
        response = case.call(base_url=server.base, timeout=TIMEOUT)
        seen.append(response.status_code)
        check(server, response.status_code, response.content, f"{case.method} {case.formatted_path}")

    run()
    server.check_alive()
    assert len(seen) >= 50 and 200 in seen  # the generator really drove the server


# --- hypothesis JSON bodies ------------------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)  # NaN/Infinity are not JSON
    | st.text(max_size=30)
    | st.sampled_from(["NaN", "1e400", "-0", "\x00", "../../etc/passwd", "'; DROP TABLE x; --", "1" * 400])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
feature_refs = st.sampled_from(
    [
        "user_features:amount_avg_1d",
        "user_features:txn_count_1d",
        "user_features:nope",
        "nope:x",
        "amount_avg_1d",
    ]
) | st.text(max_size=40)
key_lists = st.lists(st.integers(min_value=-(2**70), max_value=2**70) | json_values, max_size=6) | json_values
join_keys = st.sampled_from(["user_id", "user", ""]) | st.text(max_size=10)
lookups = st.fixed_dictionaries(
    {
        "features": st.lists(feature_refs, max_size=4) | json_values,
        "entities": st.dictionaries(join_keys, key_lists, max_size=3) | json_values,
    },
    optional={"full_feature_names": json_values, "feature_service": json_values, "extra": json_values},
)
predicts = st.fixed_dictionaries(
    {"entities": st.dictionaries(join_keys, key_lists, max_size=3) | json_values}
)


@pytest.mark.parametrize("features", [[[]], [{"a": 1}], ["user_features:amount_avg_1d", ["x"]]])
def test_non_string_feature_reference_is_a_4xx(server: Server, http: httpx.Client, features: Any) -> None:
    r = http.post("/get-online-features", content=json.dumps({"features": features, "entities": {}}))
    check(server, r.status_code, r.content, f"features={features!r}")


@FUZZ
@given(body=lookups | json_values)
def test_get_online_features_json_bodies(server: Server, http: httpx.Client, body: Any) -> None:
    r = http.post("/get-online-features", content=json.dumps(body))
    check(server, r.status_code, r.content, f"lookup {body!r:.300}")


@FUZZ
@given(
    model=st.sampled_from(["scorer", "nope", "..", "%2e%2e", "a" * 300]) | st.text(min_size=1, max_size=20),
    body=predicts | json_values,
)
def test_predict_json_bodies(server: Server, http: httpx.Client, model: str, body: Any) -> None:
    r = http.post(f"/predict/{quote(model, safe='')}", content=json.dumps(body))
    check(server, r.status_code, r.content, f"predict {model!r} {body!r:.300}")


@FUZZ
@given(path=st.sampled_from(["/get-online-features", "/predict/scorer"]), raw=st.binary(max_size=200))
def test_raw_bytes_bodies(server: Server, http: httpx.Client, path: str, raw: bytes) -> None:
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    check(server, r.status_code, r.content, f"{path} {raw!r:.300}")
