"""The registry bound to Iceberg: snapshot tags that survive expiry, lineage from the training set, the
``models`` CLI with ``--json``, PostgreSQL as the registry database, and schema migrations."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import featurelake
from featurelake.errors import UsageError
from featurelake.registry import ModelRegistry, Stage, db
from featurelake.registry.schema import VERSION_TABLE, metadata
from featurelake.registry.snapshots import tag_name
from featurelake.training import Provenance, write_training_set
from tests.helpers import day
from tests.training_helpers import FEATURES, entities, run_cli, two_view_project

VIEWS = ("user_features", "user_max")


def training_file(fl: featurelake.Featurelake, path: Path, seed: int = 3) -> Path:
    return Path(write_training_set(fl.training_set(entities(80, seed=seed), FEATURES), path))


def tags(fl: featurelake.Featurelake, view: str) -> dict[str, int]:
    tbl = fl.project.load_table(view)
    return {name: ref.snapshot_id for name, ref in tbl.metadata.refs.items() if name.startswith("model-")}


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return two_view_project(tmp_path / "proj")


def test_register_binds_and_tags_the_training_snapshots(proj: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")
        prov = Provenance.load(ts)
        mv = fl.models.register("fraud", model, "pickle", training_set=ts, metrics={"auc": 0.8})
        assert mv.snapshots == prov.views and mv.training_set == prov.to_dict()
        assert [(f.name, f.type, f.feature) for f in mv.signature] == [
            ("amount_avg_1d", "double", "user_features:amount_avg_1d"),
            ("txn_count_1d", "long", "user_features:txn_count_1d"),
            ("amount_max_1d", "double", "user_max:amount_max_1d"),
        ]
        assert mv.created_by == "test-user" and mv.run_id and mv.code_version
        for view in VIEWS:
            assert tags(fl, view) == {"model-fraud-1.0.0": prov.views[view]}
        assert {r["tag"] for r in mv.snapshot_tags} == {tag_name("fraud", "1.0.0")}
        # An in-memory training set carries the same provenance.
        mv2 = fl.models.register(
            "fraud", model, "pickle", training_set=fl.training_set(entities(80), FEATURES)
        )
        assert (
            mv2.snapshots == prov.views
            and tags(fl, "user_max")["model-fraud-1.0.1"] == prov.views["user_max"]
        )


def test_tagged_snapshots_survive_expiry_and_still_rebuild(proj: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    ents_file = tmp_path / "ents.parquet"
    pq.write_table(entities(80), ents_file)
    with featurelake.open(proj) as fl:
        first = Path(write_training_set(fl.training_set(ents_file, FEATURES), tmp_path / "first.parquet"))
        bound = Provenance.load(first).views
        fl.models.register("fraud", model, "pickle", training_set=first)
        for view in VIEWS:
            fl.backfill(view, day(5), day(8), run_id=f"{view}_more")
        later = datetime.now(UTC) + timedelta(seconds=1)
        for view in VIEWS:
            tbl = fl.project.load_table(view)
            tbl.maintenance.expire_snapshots().older_than(later).commit()
            tbl = fl.project.load_table(view)
            alive = {s.snapshot_id for s in tbl.metadata.snapshots}
            assert bound[view] in alive  # kept by the tag
            assert len(alive) == 2  # main's head and the tagged one; the rest expired
        rebuilt = Path(
            write_training_set(fl.training_set(ents_file, provenance=first), tmp_path / "again.parquet")
        )
    assert rebuilt.read_bytes() == first.read_bytes()


def test_training_set_whose_snapshot_expired_cannot_be_registered(proj: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")
        old = Provenance.load(ts).views["user_features"]
        assert old is not None
        fl.backfill("user_features", day(5), day(7), run_id="newer")
        fl.project.load_table("user_features").maintenance.expire_snapshots().by_id(old).commit()
        with pytest.raises(
            UsageError, match=rf"snapshot {old} of features\.user_features, which has been expired"
        ):
            fl.models.register("fraud", model, "pickle", training_set=ts)
        assert fl.models.list_models() == []
        assert tags(fl, "user_features") == {} and tags(fl, "user_max") == {}


def test_a_snapshot_expired_between_check_and_tag_rolls_the_registration_back(
    proj: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")
        old = Provenance.load(ts).views["user_max"]
        assert old is not None
        fl.backfill("user_max", day(5), day(7), run_id="newer")
        reg = fl.models
        assert reg.pins is not None
        real_check = reg.pins.check

        def check_then_expire(views: Mapping[str, int | None], model: str) -> None:
            real_check(views, model)  # passes, then maintenance expires the snapshot before the tag is made
            fl.project.load_table("user_max").maintenance.expire_snapshots().by_id(old).commit()

        reg.pins.check = check_then_expire  # type: ignore[method-assign]
        with pytest.raises(UsageError, match="it was expired"):
            reg.register("fraud", model, "pickle", training_set=ts)
        with pytest.raises(UsageError, match="has no versions yet"):
            reg.resolve("fraud@latest")
        assert tags(fl, "user_features") == {} and tags(fl, "user_max") == {}
        assert [e.outcome for e in reg.history("fraud")] == ["applied", "rejected"]


def test_archiving_may_release_the_tags(tmp_path: Path) -> None:
    proj = two_view_project(tmp_path / "proj")
    (proj / "featurelake.yaml").write_text(
        "project: test\nnamespace: features\nregistry:\n  release_tags_on_archive: true\n"
    )
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")
        reg = fl.models
        for _ in range(2):
            reg.register("fraud", model, "pickle", training_set=ts)
        reg.promote("fraud", "1.0.0", "Staging")
        reg.promote("fraud", "1.0.0", "Production")
        reg.promote("fraud", "1.0.1", "Staging")
        r = reg.promote("fraud", "1.0.1", "Production")
        assert r.archived == ["1.0.0"] and any("released tag model-fraud-1.0.0" in n for n in r.notes)
        assert set(tags(fl, "user_features")) == {"model-fraud-1.0.1"}
        assert reg.get("fraud", "1.0.0").tags_released
        r = reg.promote("fraud", "1.0.0", "Staging", reason="second look")
        assert set(tags(fl, "user_features")) == {"model-fraud-1.0.0", "model-fraud-1.0.1"}
        assert not r.version.tags_released
        reg.promote("fraud", "1.0.0", "Archived")
        # Released again, and this time the snapshot expires: the version can no longer come back.
        bound = Provenance.load(ts).views["user_features"]
        assert bound is not None
        fl.backfill("user_features", day(5), day(7), run_id="newer")
        reg.promote("fraud", "1.0.1", "Archived")  # frees the shared snapshot's other tag too
        fl.project.load_table("user_features").maintenance.expire_snapshots().by_id(bound).commit()
        with pytest.raises(
            UsageError, match="cannot leave Archived: its training snapshots are no longer kept"
        ):
            reg.promote("fraud", "1.0.0", "Staging")
        assert reg.get("fraud", "1.0.0").stage == Stage.ARCHIVED
        assert reg.history("fraud")[-1].outcome == "rejected"
        assert tags(fl, "user_features") == {} and tags(fl, "user_max") == {}


def test_archiving_keeps_the_tags_by_default(proj: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")
        fl.models.register("fraud", model, "pickle", training_set=ts)
        r = fl.models.promote("fraud", "1.0.0", "Archived")
        assert r.notes == [] and not r.version.tags_released
        assert set(tags(fl, "user_features")) == {"model-fraud-1.0.0"}


def test_models_cli_with_json(proj: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    with featurelake.open(proj) as fl:
        ts = training_file(fl, tmp_path / "train.parquet")

    def ok(*args: str) -> object:
        code, out, err = run_cli(capsys, proj, "models", *args, "--json")
        assert code == 0, err
        return json.loads(out)

    reg1 = ok("register", "fraud", "--artifact", str(model), "--flavor", "pickle", "--training-set", str(ts),
              "--metric", "auc=0.81", "--param", "depth=3", "--param", "name=gbm", "--default", "txn_count_1d=0")  # fmt: skip
    assert (
        isinstance(reg1, dict)
        and reg1["version"] == "1.0.0"
        and {k: v for k, v in reg1["params"].items() if k != "featurelake.artifact"}
        == {"depth": 3, "name": "gbm"}
        and reg1["params"]["featurelake.artifact"]["format"] == "pickle"
        and [f["default"] for f in reg1["signature"]] == [None, 0, None]
    )
    reg2 = ok("register", "fraud", "--artifact", str(model), "--flavor", "pickle", "--bump", "minor")
    assert isinstance(reg2, dict) and reg2["version"] == "1.1.0" and reg2["training_set"] is None
    ok("promote", "fraud", "1.0.0", "staging")
    promoted = ok("promote", "fraud", "1.0.0", "Production", "--reason", "launch")
    assert isinstance(promoted, dict) and promoted["version"]["stage"] == "Production"
    assert ok("alias", "fraud", "champion", "1.0.0") == {
        "name": "fraud",
        "alias": "champion",
        "version": "1.0.0",
    }
    listed = ok("list")
    assert isinstance(listed, list) and listed[0]["production"] == "1.0.0" and listed[0]["versions"] == 2
    shown = ok("show", "fraud@champion")
    assert isinstance(shown, dict) and shown["snapshot_tags_present"] == {
        "features.user_features:model-fraud-1.0.0": True,
        "features.user_max:model-fraud-1.0.0": True,
    }
    overview = ok("show", "fraud")
    assert isinstance(overview, dict) and [v["version"] for v in overview["versions"]] == ["1.1.0", "1.0.0"]
    hist = ok("history", "fraud")
    assert isinstance(hist, list) and [h["kind"] for h in hist] == [
        "register",
        "register",
        "stage",
        "stage",
        "alias",
    ]
    assert ok("alias", "fraud", "champion", "--delete") == {
        "name": "fraud",
        "alias": "champion",
        "deleted": True,
        "was": "1.0.0",
    }
    # Human output and errors: one line, exit code 2, nothing changed.
    code, out, _ = run_cli(capsys, proj, "models", "history", "fraud")
    assert code == 0 and "Staging -> Production" in out
    for args, message in [
        (["promote", "fraud", "1.0.0", "Staging"], "cannot go from Production to Staging"),
        (
            ["promote", "fraud", "1.0.0", "Live"],
            "unknown stage 'Live': use one of None, Staging, Production, Archived",
        ),
        (["show", "fraud@9.9.9"], "has no version 9.9.9"),
        (["alias", "fraud", "champion"], "give the version champion should point at"),
        (
            ["register", "fraud", "--artifact", str(tmp_path / "none.pkl"), "--flavor", "pickle"],
            "does not exist",
        ),
        (
            ["register", "fraud", "--artifact", str(model), "--flavor", "pickle", "--version", "1.1.0"],
            "already has version 1.1.0",
        ),
        (
            ["register", "fraud", "--artifact", str(model), "--flavor", "pickle", "--metric", "auc"],
            "must be KEY=VALUE",
        ),
    ]:
        before = ok("show", "fraud")
        code, _, err = run_cli(capsys, proj, "models", *args)
        assert code == 2 and message in err, (args, err)
        assert ok("show", "fraud") == before


@pytest.mark.postgres
def test_training_set_and_registry_on_postgres(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iceberg catalog and model registry both in one real PostgreSQL database."""
    monkeypatch.setenv("FEATURELAKE_CATALOG__URI", pg_url)
    monkeypatch.setenv("FEATURELAKE_REGISTRY__URI", pg_url)
    proj = two_view_project(tmp_path / "proj")
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps("weights"))
    ents_file = tmp_path / "ents.parquet"
    pq.write_table(entities(60), ents_file)
    with featurelake.open(proj) as fl:
        ts = Path(write_training_set(fl.training_set(ents_file, FEATURES), tmp_path / "train.parquet"))
        fl.models.register("fraud", model, "pickle", training_set=ts)
        fl.models.promote("fraud", "1.0.0", "Staging")
        fl.models.promote("fraud", "1.0.0", "Production")
        assert fl.models.resolve("fraud").snapshots == Provenance.load(ts).views
        assert fl.models.artifact_bytes("fraud@production") == pickle.dumps("weights")
        assert set(tags(fl, "user_features")) == {"model-fraud-1.0.0"}
        fl.backfill("user_features", day(5), day(7), run_id="pg_more")
        again = Path(
            write_training_set(fl.training_set(ents_file, provenance=ts), tmp_path / "again.parquet")
        )
    assert again.read_bytes() == ts.read_bytes()
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model_name, version, stage FROM registry_versions")).fetchall()
        tables = conn.execute(sa.text("SELECT table_name FROM iceberg_tables ORDER BY 1")).fetchall()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("fraud", "1.0.0", "Production")]
    assert {"user_features", "user_max"} <= {r[0] for r in tables}
    assert not (proj / ".featurelake" / "registry.db").exists()
    assert not (proj / ".featurelake" / "catalog.db").exists()


# --- migrations -----------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, str]]:
    uri = f"sqlite:///{tmp_path}/reg.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = db.make_engine(uri)
    yield engine, uri
    engine.dispose()


def test_migrations_build_exactly_the_declared_schema(engine_uri: tuple[sa.Engine, str]) -> None:
    engine, uri = engine_uri
    db.upgrade(engine, uri)
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata
        )
    assert diffs == []


def test_a_registry_created_by_an_older_schema_opens_after_upgrade(
    engine_uri: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, uri = engine_uri
    db.upgrade(engine, uri, "0001")
    assert db.current_revision(engine) == "0001"
    now = datetime(2025, 1, 1, tzinfo=UTC)
    blob = tmp_path / "artifacts" / "sha256"
    blob.mkdir(parents=True)
    import hashlib

    digest = hashlib.sha256(b"old model").hexdigest()
    (blob / digest).write_bytes(b"old model")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO registry_models (name, description, created_at, created_by) VALUES ('fraud', '', :t, 'old')"
            ),
            {"t": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO registry_versions (model_name, version, major, minor, patch, stage, flavor, artifact_key, "
                "artifact_sha256, artifact_size, artifact_name, created_at, created_by, run_id, code_version, description, "
                "metrics, params, training_set, signature, snapshot_tags, tags_released) VALUES ('fraud', '1.0.0', 1, 0, 0, "
                "'Production', 'pickle', :k, :d, 9, 'm.pkl', :t, 'old', 'r1', 'abc', '', '{}', '{}', NULL, '[]', '[]', false)"
            ),
            {"k": f"sha256/{digest}", "d": digest, "t": now},
        )
        conn.execute(
            sa.text("INSERT INTO registry_events (model_name, version, kind, from_stage, to_stage, \"user\", at, reason, outcome, detail) "
                    "VALUES ('fraud', '1.0.0', 'register', NULL, 'None', 'old', :t, '', 'applied', '')"),
            {"t": now},
        )  # fmt: skip
    with ModelRegistry(uri, str(tmp_path / "artifacts")) as reg:
        mv = reg.resolve("fraud")
        assert (mv.version, mv.created_by, mv.created_at) == ("1.0.0", "old", now)
        assert reg.artifact_bytes(mv) == b"old model"
        reg.set_alias("fraud", "champion", "1.0.0")
        assert reg.resolve("fraud@champion").version == "1.0.0"
        assert [e.alias for e in reg.history("fraud")] == [None, "champion"]
        assert db.current_revision(reg.engine) == db.head_revision()


def test_migrations_downgrade_and_upgrade_again(engine_uri: tuple[sa.Engine, str]) -> None:
    engine, uri = engine_uri
    db.upgrade(engine, uri)
    cfg = db._config()
    with db.write(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert db.current_revision(engine) is None
    assert not set(sa.inspect(engine).get_table_names()) & {"registry_versions", "registry_aliases"}
    db.upgrade(engine, uri)
    assert db.current_revision(engine) == db.head_revision()
