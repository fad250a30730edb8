"""Feature services: declared in features.py, checked when it loads, recorded and versioned by `apply`, and usable
wherever a feature list is (training sets, online lookups in Python and over HTTP, model registration, batch and
online prediction), with clear errors naming the service."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import featurelake
from featurelake import ConfigError, FeatureService, UsageError
from featurelake.cli.app import cli
from featurelake.features.apply import ApplyResult
from featurelake.features.service_log import ServiceApplyResult
from featurelake.serving.server import create_app
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions
from tests.online_helpers import LinearModel, append, config
from tests.redis_server import fresh_db, redis_session_fixture

_FIXTURES = (redis_session_fixture,)

SECOND_VIEW = '''
from featurelake import FeatureService

user_totals = FeatureView(
    name="user_totals",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts, max(amount) AS amount_max_1d
        FROM source GROUP BY ALL
    """,
    fields={"amount_max_1d": "double"},
    ttl=timedelta(days=7),
)
'''
SERVICES = """
fraud_inputs = FeatureService(
    "fraud_inputs",
    features=["user_features:amount_avg_1d", user_totals],
    description="what the fraud model reads",
    tags={"team": "risk"},
)
activity = FeatureService("activity", features=["user_features:txn_count_1d", "user_features:amount_sum_1d"])
"""


def features_py(services: str = SERVICES) -> str:
    return DEFAULT_FEATURES + SECOND_VIEW + services


def services_applied(results: list[ApplyResult]) -> dict[str, ServiceApplyResult]:
    """``apply``'s results for the services' log table, by service (those results are service results)."""
    return {r.view: cast(ServiceApplyResult, r) for r in results if r.table.endswith("._services")}


def entities(hours_before: float = 0.0) -> pa.Table:
    at = START + timedelta(days=5, hours=-hours_before)
    return pa.table(
        {
            "user_id": pa.array([1, 2, 3, 999], pa.int64()),
            "event_timestamp": pa.array([at] * 4, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both views applied and backfilled over days 0-6, the two services applied."""
    root = make_project(tmp_path_factory.mktemp("services") / "proj", features=features_py())
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(7), run_id="a")
        fl.backfill("user_totals", day(0), day(7), run_id="b")
    return root


# --- declaring -----------------------------------------------------------------------------------------------


def test_a_service_resolves_views_and_references_in_order(published: Path) -> None:
    with featurelake.open(published) as fl:
        assert fl.definitions.service("fraud_inputs") == [
            "user_features:amount_avg_1d",
            "user_totals:amount_max_1d",
        ]
        assert fl.definitions.services["fraud_inputs"].tags == {"team": "risk"}
        assert "FeatureService" in featurelake.__all__ and featurelake.FeatureService is FeatureService


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ('FeatureService("s", features=["nope:x"])', "feature service 's' names unknown feature view 'nope'"),
        (
            'FeatureService("s", features=["user_features:nope"])',
            "feature service 's' names feature 'nope' of view 'user_features', which has no such feature",
        ),
        (
            'FeatureService("s", features=["user_features", "user_features:txn_count_1d"])',
            "lists user_features:txn_count_1d twice",
        ),
        ('FeatureService("s", features=[])', "feature service 's' lists no features"),
        ('FeatureService("s", features="user_features")', "features must be a list"),
        ('FeatureService("s", features=["a:b:c"])', "must be written 'view:feature'"),
        ('FeatureService("s", features=[42])', "entry 42 must be 'view:feature'"),
        ('FeatureService("user_features", features=["user_features"])', "has the name of a feature view"),
        ('FeatureService("bad name", features=["user_features"])', "is not a valid name"),
    ],
)
def test_a_wrong_service_is_refused_when_features_py_loads(
    tmp_path: Path, service: str, message: str
) -> None:
    root = make_project(
        tmp_path / "proj", features=features_py(f"\nsvc = {service}\n"), data=transactions(days=1)
    )
    with featurelake.open(root) as fl, pytest.raises(ConfigError) as err:
        fl.definitions  # noqa: B018 - loading is what is tested
    assert message in str(err.value)
    assert "features.py" in str(err.value)  # where it was declared


def test_views_held_only_by_a_service_are_views_of_the_project(tmp_path: Path) -> None:
    inline = """
import dataclasses
from featurelake import OnDemandFeatureView, RequestSource

svc = FeatureService("s", features=[OnDemandFeatureView(
    "inline", sources=[RequestSource({"a": "double"})], fields={"b": "double"}, udf=lambda t: {"b": t["a"]}
)])
"""
    root = make_project(tmp_path / "proj", features=features_py(inline), data=transactions(days=1))
    with featurelake.open(root) as fl:
        assert fl.definitions.service("s") == ["inline:b"] and "inline" in fl.definitions.on_demand
        out = fl.online.get_online_features(entities={"a": [2.5, None]}, feature_service="s")
        assert out["metadata"]["feature_names"] == ["b"] and out["results"][0]["values"] == [2.5, None]
    twice = inline.replace(
        "features=[OnDemandFeatureView(",
        "features=[dataclasses.replace(user_features, ttl=None), OnDemandFeatureView(",
    )
    (root / "features.py").write_text(features_py(twice))
    with (
        featurelake.open(root) as fl,
        pytest.raises(ConfigError, match="lists a second view named 'user_features'"),
    ):
        fl.definitions  # noqa: B018 - loading is what is tested


# --- apply: recorded and versioned -------------------------------------------------------------------------


def test_apply_records_services_and_versions_them_when_their_features_change(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=features_py(), data=transactions(days=2))
    with featurelake.open(root) as fl:
        first = services_applied(fl.apply())
        assert {n: (r.action, r.version) for n, r in first.items()} == {
            "fraud_inputs": ("created", 1),
            "activity": ("created", 1),
        }
        assert [
            r.view for r in fl.apply() if r.table.endswith("._services") and r.action != "unchanged"
        ] == []

    # A feature more changes the list: version 2. New words in the description only: same version.
    changed = SERVICES.replace(
        '["user_features:txn_count_1d", "user_features:amount_sum_1d"]',
        '["user_features:txn_count_1d", "user_features:amount_sum_1d", "user_features:amount_avg_1d"]',
    ).replace("what the fraud model reads", "what fraud v2 reads")
    (root / "features.py").write_text(features_py(changed))
    with featurelake.open(root) as fl:
        dry = {r.view: r.action for r in fl.apply(dry_run=True) if r.table.endswith("._services")}
        assert dry == {"fraud_inputs": "planned (updated)", "activity": "planned (versioned)"}
        assert [s.version for s in fl.services()] == [1, 1]  # the dry run recorded nothing
        second = services_applied(fl.apply())
        assert (second["activity"].action, second["activity"].version) == ("versioned", 2)
        assert second["activity"].previous_version == 1
        assert "adds user_features:amount_avg_1d" in second["activity"].detail
        assert (second["fraud_inputs"].action, second["fraud_inputs"].version) == ("updated", 1)
        listed = {s.name: s for s in fl.services()}
        assert listed["activity"].version == 2 and listed["activity"].state == "as applied"
        assert listed["activity"].features[-1] == "user_features:amount_avg_1d"
        assert listed["fraud_inputs"].description == "what fraud v2 reads"

    # A view listed whole that gains a feature changes the service too; a service dropped is recorded removed.
    grown = features_py(SERVICES.replace("activity = FeatureService", "# activity = FeatureService")).replace(
        'fields={"amount_max_1d": "double"}', 'fields={"amount_max_1d": "double", "amount_min_1d": "double"}'
    )
    grown = grown.replace(
        "max(amount) AS amount_max_1d", "max(amount) AS amount_max_1d, min(amount) AS amount_min_1d"
    )
    (root / "features.py").write_text(grown)
    with featurelake.open(root) as fl:
        third = services_applied(fl.apply())
        assert (third["fraud_inputs"].action, third["fraud_inputs"].version) == ("versioned", 2)
        assert third["activity"].action == "removed"
        assert [s.name for s in fl.services()] == ["fraud_inputs"]
        history = fl.services(history=True)
        assert [(s.name, s.version, s.state) for s in history if s.name == "activity"] == [
            ("activity", 1, "superseded"),
            ("activity", 2, "superseded"),
            ("activity", 2, "removed"),
        ]
        # Any Iceberg reader sees the log, with lineage on its snapshots.
        log = fl.read("features._services")
        assert set(log.column_names) >= {"name", "version", "features", "status", "applied_at", "run_id"}


def test_services_command_lists_name_version_features_and_description(published: Path) -> None:
    out = CliRunner().invoke(cli, ["-C", str(published), "services"])
    assert out.exit_code == 0, out.output
    assert "fraud_inputs" in out.output and "what the fraud model reads" in out.output
    assert "user_features:amount_avg_1d" in out.output and "as applied" in out.output
    data = json.loads(CliRunner().invoke(cli, ["-C", str(published), "services", "--json"]).output)
    assert [(s["name"], s["version"]) for s in data] == [("activity", 1), ("fraud_inputs", 1)]
    assert data[1]["features"] == ["user_features:amount_avg_1d", "user_totals:amount_max_1d"]
    assert data[1]["tags"] == {"team": "risk"}


def test_services_command_says_what_to_run_before_anything_was_applied(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", features=features_py(), data=transactions(days=1))
    out = CliRunner().invoke(cli, ["-C", str(root), "services"])
    assert out.exit_code == 0 and "run `featurelake apply`" in out.output


# --- training sets -----------------------------------------------------------------------------------------


def test_training_set_with_a_service_equals_its_feature_list_and_records_the_service(published: Path) -> None:
    with featurelake.open(published) as fl:
        by_service = fl.training_set(entities(), service="fraud_inputs")
        by_list = fl.training_set(entities(), ["user_features:amount_avg_1d", "user_totals:amount_max_1d"])
    assert by_service.column_names == ["user_id", "event_timestamp", "amount_avg_1d", "amount_max_1d"]
    assert by_service.to_pydict() == by_list.to_pydict()
    prov = json.loads(by_service.schema.metadata[b"featurelake.provenance"])
    assert prov["service"] == {"name": "fraud_inputs", "version": 1}
    assert "service" not in json.loads(by_list.schema.metadata[b"featurelake.provenance"])
    # Rebuilt from its provenance: the same set, the service still recorded.
    with featurelake.open(published) as fl:
        again = fl.training_set(entities(), provenance=by_service)
    assert again.equals(by_service) and again.schema.metadata == by_service.schema.metadata


def test_training_set_command_takes_a_service(published: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ents = tmp_path / "entities.parquet"
    pq.write_table(entities(), ents)
    out = tmp_path / "train.parquet"
    args = ["-C", str(published), "training-set", "--entities", str(ents), "--service", "activity"]
    res = CliRunner().invoke(cli, [*args, "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["provenance"]["service"] == {"name": "activity", "version": 1}
    assert pq.read_table(out).column_names[-2:] == ["txn_count_1d", "amount_sum_1d"]
    both = CliRunner().invoke(cli, [*args, "--features", "user_features:txn_count_1d", "--output", str(out)])
    assert isinstance(both.exception, UsageError) and "not both" in str(both.exception)


def test_unknown_unapplied_and_changed_services_are_refused_with_what_to_do(
    published: Path, tmp_path: Path
) -> None:
    with featurelake.open(published) as fl:
        with pytest.raises(
            UsageError, match=r"unknown feature service 'nope': features.py defines activity, "
        ):
            fl.training_set(entities(), service="nope")
        with pytest.raises(UsageError, match="give either a feature service"):
            fl.training_set(entities(), ["user_features:txn_count_1d"], service="activity")
        with pytest.raises(
            UsageError, match="'activity' is a feature service, not a feature view: use it where"
        ):
            fl.backfill("activity", day(0), day(1))
    got = CliRunner().invoke(cli, ["-C", str(published), "get", "activity", "1"])
    assert isinstance(got.exception, UsageError) and "training-set --service activity" in str(got.exception)
    root = make_project(tmp_path / "proj", features=features_py(), data=transactions(days=1))
    with featurelake.open(root) as fl:
        for r in fl.apply():
            assert r.action == "created"
        fl.backfill("user_features", day(0), day(1))
    edited = SERVICES.replace(
        '"user_features:amount_sum_1d"]', '"user_features:amount_sum_1d", "user_totals"]'
    )
    (root / "features.py").write_text(features_py(edited))
    with featurelake.open(root) as fl:
        with pytest.raises(UsageError) as err:
            fl.training_set(entities(), service="activity")
        assert str(err.value) == (
            "feature service 'activity' changed in features.py since the last apply (version 1: features.py now "
            "adds user_totals:amount_max_1d): run `featurelake apply` to record it as a new version"
        )
    (root / "features.py").write_text(
        features_py(SERVICES + '\nnew = FeatureService("new", features=["user_totals"])\n')
    )
    with (
        featurelake.open(root) as fl,
        pytest.raises(
            UsageError, match=r"feature service 'new' has not been applied .* run `featurelake apply`"
        ),
    ):
        fl.training_set(entities(), service="new")


# --- online lookups ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[featurelake.Featurelake]:
    """A served project (SQLite, and a real redis-server): users 1 and 2 fresh in both views, user 3 only in
    user_features, 4 nowhere."""
    url = fresh_db(request.getfixturevalue("redis_session"), 5) if request.param == "redis" else None
    root = tmp_path_factory.mktemp("served") / "proj"
    make_project(root, features=features_py(), config=config(request.param, url), data=transactions(days=1))
    fl = featurelake.open(root)
    fl.apply()
    now = datetime.now(UTC)
    append(fl, [(1, now - timedelta(hours=1), 10.0), (2, now - timedelta(hours=2), 4.0), (3, now, 3.0)])
    totals = fl.project.load_table("user_totals")
    rows = {"user_id": [1, 2], "event_ts": [now - timedelta(hours=1)] * 2, "amount_max_1d": [30.0, 9.0]}
    totals.append(pa.table(rows).cast(totals.schema().as_arrow()))
    fl.sync()
    try:
        yield fl
    finally:
        fl.close()


def test_python_lookup_of_a_service_gives_every_feature_with_its_status(
    served: featurelake.Featurelake,
) -> None:
    rows = served.online.get("fraud_inputs", [1, 3, 4])
    assert [r.key for r in rows] == [1, 3, 4]
    assert rows[0].values == {"amount_avg_1d": 10.0, "amount_max_1d": 30.0} and rows[0].status == "PRESENT"
    assert rows[1].statuses == {"amount_avg_1d": "PRESENT", "amount_max_1d": "NOT_FOUND"}
    assert rows[1].status == "NOT_FOUND" and rows[1].values == {"amount_avg_1d": 3.0, "amount_max_1d": None}
    assert rows[2].status == "NOT_FOUND" and rows[2].event_ts is None
    assert rows[0].to_dict()["statuses"] == {"amount_avg_1d": "PRESENT", "amount_max_1d": "PRESENT"}
    with pytest.raises(UsageError, match="fixes its features"):
        served.online.get("fraud_inputs", [1], features=["amount_avg_1d"])


def test_feast_lookup_by_service_has_the_shape_of_the_same_features_listed(
    served: featurelake.Featurelake,
) -> None:
    refs = ["user_features:amount_avg_1d", "user_totals:amount_max_1d"]
    ents = {"user_id": [1, 2, 3, 4]}
    by_list = served.online.get_online_features(refs, ents)
    assert served.online.get_online_features(entities=ents, feature_service="fraud_inputs") == by_list
    with TestClient(create_app(served.project)) as client:
        r = client.post("/get-online-features", json={"feature_service": "fraud_inputs", "entities": ents})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["metadata"]["feature_names"] == ["user_id", "amount_avg_1d", "amount_max_1d"]
        listed = client.post("/get-online-features", json={"features": refs, "entities": ents}).json()
        for a, b in zip(body["results"], listed["results"], strict=True):
            assert a["values"] == b["values"] and a["statuses"] == b["statuses"]
        full = client.post(
            "/get-online-features",
            json={"feature_service": "fraud_inputs", "entities": ents, "full_feature_names": True},
        ).json()
        assert full["metadata"]["feature_names"][1:] == [
            "user_features__amount_avg_1d",
            "user_totals__amount_max_1d",
        ]
        for body_, status, detail in [
            ({"feature_service": "nope", "entities": ents}, 404, "unknown feature service 'nope'"),
            ({"feature_service": 3, "entities": ents}, 422, "must be the name of a feature service"),
            ({"feature_service": "fraud_inputs", "features": refs, "entities": ents}, 422, "not both"),
            ({"entities": ents}, 422, 'or give "feature_service"'),
        ]:
            bad = client.post("/get-online-features", json=body_)
            assert bad.status_code == status and detail in bad.json()["detail"], bad.text
            assert "activity" not in bad.text  # no other service is named to a remote caller


# --- models ------------------------------------------------------------------------------------------------


def test_models_register_with_a_service_takes_its_features_as_the_signature(
    served: featurelake.Featurelake, tmp_path: Path
) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(LinearModel([1.0, 0.5], bias=100.0)))
    mv = served.models.register("fraud", path, "pickle", service="fraud_inputs")
    assert [(f.name, f.type, f.feature) for f in mv.signature] == [
        ("amount_avg_1d", "double", "user_features:amount_avg_1d"),
        ("amount_max_1d", "double", "user_totals:amount_max_1d"),
    ]
    assert mv.params["featurelake.service"] == {"name": "fraud_inputs", "version": 1}
    served.models.promote("fraud", mv.version, "Staging")
    served.models.promote("fraud", mv.version, "Production")
    with TestClient(create_app(served.project)) as client:
        body = client.post("/predict/fraud", json={"entities": {"user_id": [1, 2, 3]}}).json()
    assert body["predictions"] == [10.0 + 15.0 + 100.0, 4.0 + 4.5 + 100.0, None]
    assert body["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    assert body["features"] == ["user_features:amount_avg_1d", "user_totals:amount_max_1d"]
    # Batch prediction scores one view's rows: a service over two views is refused, naming it.
    with pytest.raises(UsageError) as err:
        served.predict("fraud")
    assert (
        "reads feature service fraud_inputs (version 1), whose features come from views user_features, "
        in str(err.value)
    )
    assert "POST /predict/fraud" in str(err.value)


def test_models_register_service_errors(served: featurelake.Featurelake, tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(LinearModel([1.0, 0.5], bias=0.0)))
    with pytest.raises(UsageError, match="unknown feature service 'nope'"):
        served.models.register("m1", path, "pickle", service="nope")
    with pytest.raises(UsageError, match="give either a feature service or a signature"):
        served.models.register("m1", path, "pickle", service="activity", signature={"a": "double"})
    out = CliRunner().invoke(
        cli,
        ["-C", str(served.project.root), "models", "register", "m1", "--artifact", str(path), "--flavor", "pickle",
         "--service", "nope"],
    )  # fmt: skip
    assert isinstance(out.exception, UsageError) and "unknown feature service 'nope'" in str(out.exception)


def test_a_service_model_from_its_training_set_predicts_in_batch(published: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    with featurelake.open(published) as fl:
        ts = fl.training_set(entities(), service="activity")
        x = [
            [float(a or 0), float(b or 0)]
            for a, b in zip(ts["txn_count_1d"].to_pylist(), ts["amount_sum_1d"].to_pylist(), strict=True)
        ]
        model = LogisticRegression().fit(x, [0, 1, 0, 1])
        path = tmp_path / "activity.pkl"
        path.write_bytes(pickle.dumps(model))
        mv = fl.models.register(
            "act", path, "pickle", training_set=ts, defaults={"txn_count_1d": 0, "amount_sum_1d": 0}
        )
        assert mv.params["featurelake.service"] == {
            "name": "activity",
            "version": 1,
        }  # read from the provenance
        same = fl.models.register("act", path, "pickle", training_set=ts, service="activity")
        assert [f.feature for f in same.signature] == [
            "user_features:txn_count_1d",
            "user_features:amount_sum_1d",
        ]
        other = fl.training_set(entities(), ["user_features:txn_count_1d"])
        with pytest.raises(UsageError) as err:
            fl.models.register("act", path, "pickle", training_set=other, service="activity")
        assert (
            "its training set has features user_features:txn_count_1d, but feature service activity (version 1)"
            in str(err.value)
        )
        assert "featurelake training-set --service activity" in str(err.value)
        result = fl.predict(f"act@{mv.version}")  # the view comes from the service's features
        assert result.view == "user_features" and result.rows == 40
