"""What the HTTP server tells a caller (docs/reliability.md, "Auth and error bodies").

With ``server.token`` set every path but ``/healthz`` needs it: the OpenAPI spec, the docs routes, unknown
paths. Error bodies name no file path and nothing the caller did not ask about (other views, other models,
the registry's database); the CLI, which is local, keeps listing what exists.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import featurelake
from featurelake.errors import RequestError
from featurelake.serving.server import create_app
from tests.helpers import DEFAULT_FEATURES, make_project
from tests.online_helpers import LinearModel

pytestmark = [pytest.mark.reliability]

SECRET_VIEW = """
merchant_secrets = FeatureView(
    name="merchant_secrets",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, ts AS event_ts, amount AS hidden_amount FROM source",
    timestamp_field="event_ts",
    fields={"hidden_amount": "double"},
)
"""
LOOKUP = b'{"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1]}}'
TOKEN = "s3cret-t0ken"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with two views and a model registered but never promoted (``secret_model``)."""
    root = make_project(
        tmp_path_factory.mktemp("disclosure") / "proj", features=DEFAULT_FEATURES + SECRET_VIEW
    )
    with featurelake.open(root) as fl:
        fl.apply()
        model = root.parent / "model.pkl"
        model.write_bytes(pickle.dumps(LinearModel([2.0], bias=1.0), protocol=2))
        fl.models.register("secret_model", model, "pickle", signature={"amount_avg_1d": "double"})
    return root


@pytest.fixture
def fl(root: Path) -> Iterator[featurelake.Featurelake]:
    with featurelake.open(root) as handle:
        yield handle


def assert_discloses_nothing(body: str, root: Path) -> None:
    for secret in (
        str(root),
        str(root.resolve()),
        "merchant_secrets",
        "hidden_amount",
        "secret_model",
        "sqlite",
    ):
        assert secret not in body, (secret, body)
    assert ".featurelake" not in body and "registry.db" not in body, body


PATHS = [
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/ui"),
    ("GET", "/no-such-path"),
    ("GET", "/metrics"),
    ("POST", "/get-online-features"),
    ("POST", "/predict/secret_model"),
    ("DELETE", "/healthz/x"),
]


def test_every_path_but_healthz_needs_the_token(fl: featurelake.Featurelake) -> None:
    fl.project.config.settings.server.token = SecretStr(TOKEN)
    with TestClient(create_app(fl.project)) as c:
        for method, path in PATHS:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
                r = c.request(method, path, content=LOOKUP, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {
                    "error": "HTTPError",
                    "detail": "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                }
        assert c.get("/healthz").status_code == 200  # the one open path
        ok = {"authorization": f"Bearer {TOKEN}"}
        spec = c.get("/openapi.json", headers=ok)
        assert spec.status_code == 200 and "/get-online-features" in spec.json()["paths"]
        missing = c.get("/no-such-path", headers=ok)
        assert missing.status_code == 404 and set(missing.json()) == {"error", "detail"}
        assert c.post("/get-online-features", content=LOOKUP, headers=ok).status_code == 200


CASES = [
    ("unknown view", "/get-online-features", b'{"features": ["nope:a"], "entities": {"user_id": [1]}}', 404,
     "unknown feature view 'nope'"),
    ("unknown feature", "/get-online-features",
     b'{"features": ["user_features:nope"], "entities": {"user_id": [1]}}', 404,
     "view 'user_features' has no feature 'nope'"),
    ("unknown model", "/predict/ghost", b'{"entities": {"user_id": [1]}}', 404, "unknown model 'ghost'"),
    ("no Production version", "/predict/secret_model", b'{"entities": {"user_id": [1]}}', 404,
     "model 'secret_model' has no version in Production"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "path", "body", "status", "detail"), CASES, ids=[c[0] for c in CASES])
def test_error_bodies_name_no_path_and_nothing_unasked(
    fl: featurelake.Featurelake, root: Path, case: str, path: str, body: bytes, status: int, detail: str
) -> None:
    with TestClient(create_app(fl.project)) as c:
        r = c.post(path, content=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(detail), r.json()
    if case != "no Production version":  # that one names the model the caller asked for, and only it
        assert_discloses_nothing(r.text, root)
    else:
        assert str(root) not in r.text and "merchant_secrets" not in r.text and "registry" not in r.text


def test_unavailable_store_answers_503_without_its_path(
    fl: featurelake.Featurelake, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = root.parent / "not-a-directory"
    blocker.write_text("a file where the online store's directory should be")
    fl.project.config.settings.online_store.path = str(blocker / "online.db")
    with TestClient(create_app(fl.project)) as c:
        health = c.get("/healthz")
        lookup = c.post("/get-online-features", content=LOOKUP)
    assert health.status_code == 503 and lookup.status_code == 503
    for r in (health, lookup):
        assert "the online store is unavailable" in r.json()["detail"]
        assert "not-a-directory" not in r.text and str(root.parent) not in r.text
    assert "not-a-directory" in caplog.text  # the operator still learns where


def test_any_local_path_in_an_error_body_is_masked(
    fl: featurelake.Featurelake, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: a 4xx message that happens to name a server file does not reach the caller."""
    app = create_app(fl.project)

    def leaky(*args: object, **kwargs: object) -> None:
        raise RequestError(f"cannot read {root}/data/transactions/part-0.parquet")

    monkeypatch.setattr(app.state.service, "get_online_features", leaky)
    with TestClient(app) as c:
        r = c.post("/get-online-features", content=LOOKUP)
    assert r.status_code == 422
    assert r.json()["detail"] == "cannot read <server path>/data/transactions/part-0.parquet"
    assert int(r.headers["content-length"]) == len(r.content)


def test_the_cli_still_lists_the_views_it_knows(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`featurelake get` is local: an unknown view's error names the defined ones."""
    from featurelake.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["-C", str(root), "get", "nope", "1"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "unknown feature view 'nope'" in err and "merchant_secrets, user_features" in err, err
