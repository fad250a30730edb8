"""Model registry contract, run against SQLite and a real PostgreSQL: versions, artifacts, stages, aliases,
resolution, history, and races between processes."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from featurelake.errors import ArtifactIntegrityError, ConflictError, NotFoundError, UsageError
from featurelake.registry import ModelRegistry, Stage
from featurelake.registry.artifacts import ArtifactStore
from featurelake.registry.schema import versions
from tests import registry_workers


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def reg(uri: str, tmp_path: Path) -> Iterator[ModelRegistry]:
    with ModelRegistry(uri, str(tmp_path / "artifacts")) as r:
        yield r


def artifact(tmp_path: Path, content: bytes = b"model-bytes", name: str = "model.pkl") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def snapshot(reg: ModelRegistry, name: str = "fraud") -> list[tuple[str, str]]:
    """(version, stage) of every version plus the number of history events: what bad input must not change."""
    try:
        vs = [(v.version, v.stage.value) for v in reg.versions(name)]
    except NotFoundError:
        return []
    return [*vs, ("events", str(len(reg.history(name))))]


# --- versions -------------------------------------------------------------------------------------------
def test_semantic_versions_bump_automatically(reg: ModelRegistry, tmp_path: Path) -> None:
    a = artifact(tmp_path)
    assert reg.register("fraud", a, "pickle", bump="major").version == "1.0.0"  # the first is always 1.0.0
    assert reg.register("fraud", a, "pickle").version == "1.0.1"
    assert reg.register("fraud", a, "pickle", bump="minor").version == "1.1.0"
    assert reg.register("fraud", a, "pickle", bump="major").version == "2.0.0"
    assert reg.register("fraud", a, "pickle", version="2.10.0").version == "2.10.0"
    assert reg.register("fraud", a, "pickle").version == "2.10.1"  # numeric order, not string order
    assert [v.version for v in reg.versions("fraud")] == [
        "2.10.1",
        "2.10.0",
        "2.0.0",
        "1.1.0",
        "1.0.1",
        "1.0.0",
    ]
    assert reg.register("churn", a, "onnx", version="0.1.0").version == "0.1.0"


def test_lineage_is_recorded(reg: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELAKE_PIPELINE_USER", "alice")
    mv = reg.register(
        "fraud",
        artifact(tmp_path),
        "onnx",
        metrics={"auc": 0.91},
        params={"depth": 4, "obj": object()},
        run_id="run-7",
        code_version="abc123",
        description="first cut",
        signature={"amount_avg_1d": "double"},
    )
    assert (mv.created_by, mv.run_id, mv.code_version, mv.flavor) == ("alice", "run-7", "abc123", "onnx")
    assert mv.metrics == {"auc": 0.91} and mv.params["depth"] == 4 and isinstance(mv.params["obj"], str)
    assert [(f.name, f.type, f.default) for f in mv.signature] == [("amount_avg_1d", "double", None)]
    filled = reg.register(
        "fraud", artifact(tmp_path), "onnx", signature={"a": "double", "b": "long"}, defaults={"b": 0}
    )
    assert [(f.name, f.default) for f in reg.resolve(filled.ref).signature] == [("a", None), ("b", 0)]
    with pytest.raises(
        UsageError, match=r"defaults for c: model fraud has no such input \(its inputs: a, b\)"
    ):
        reg.register(
            "fraud", artifact(tmp_path), "onnx", signature={"a": "double", "b": "long"}, defaults={"c": 1}
        )
    assert mv.created_at.tzinfo is not None
    assert reg.resolve("fraud@1.0.0").to_dict() == mv.to_dict()
    assert [v.version for v in reg.versions("fraud")] == ["1.0.1", "1.0.0"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "1.0.0"}, "already has version 1.0.0"),
        ({"version": "0.9.0"}, "must be higher than its latest version 1.0.0"),
        ({"version": "1.0"}, "not a semantic version"),
        ({"flavor": "sklearn"}, "unknown flavor 'sklearn'"),
        ({"bump": "huge"}, "bump 'huge' is not one of"),
        ({"metrics": {"auc": "good"}}, "metric 'auc' of model fraud must be a number"),
        ({"metrics": {"auc": float("nan")}}, "only finite numbers"),
        ({"name": "bad-name"}, "model name 'bad-name' is not valid"),
    ],
)
def test_bad_registrations_change_nothing(
    reg: ModelRegistry, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    reg.register("fraud", artifact(tmp_path), "pickle")
    before = snapshot(reg)
    args: dict[str, Any] = {"name": "fraud", "artifact": artifact(tmp_path, b"other"), "flavor": "pickle"}
    args.update(kwargs)
    with pytest.raises(UsageError, match=message):
        reg.register(**args)
    assert snapshot(reg) == before


# --- artifacts ------------------------------------------------------------------------------------------
def test_artifacts_are_content_addressed_and_verified(reg: ModelRegistry, tmp_path: Path) -> None:
    a = reg.register("fraud", artifact(tmp_path, b"same"), "pickle")
    b = reg.register("fraud", artifact(tmp_path, b"same", "copy.pkl"), "pickle")
    c = reg.register("fraud", artifact(tmp_path, b"different"), "pickle")
    assert a.artifact_key == b.artifact_key == f"sha256/{a.artifact_sha256}" != c.artifact_key
    import hashlib

    assert a.artifact_sha256 == hashlib.sha256(b"same").hexdigest()
    blobs = sorted(p.name for p in (tmp_path / "artifacts" / "sha256").iterdir())
    assert blobs == sorted({a.artifact_sha256, c.artifact_sha256})
    assert not list((tmp_path / "artifacts" / "tmp").iterdir())
    assert reg.artifact_bytes("fraud@1.0.0") == b"same"
    assert reg.artifact_path(c).read_bytes() == b"different"
    assert reg.artifact_path(c) == tmp_path / "artifacts" / c.artifact_key


def test_tampered_or_missing_artifact_is_refused(reg: ModelRegistry, tmp_path: Path) -> None:
    mv = reg.register("fraud", artifact(tmp_path, b"genuine"), "pickle")
    blob = tmp_path / "artifacts" / mv.artifact_key
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil")
    for load in (reg.artifact_bytes, reg.artifact_path):
        with pytest.raises(ArtifactIntegrityError, match="does not match its recorded digest") as exc:
            load("fraud@1.0.0")
        assert "model fraud 1.0.0" in str(exc.value)
    # Registering the genuine bytes again heals the store.
    reg.register("fraud", artifact(tmp_path, b"genuine"), "pickle")
    assert reg.artifact_bytes("fraud@1.0.0") == b"genuine"
    blob.unlink()
    with pytest.raises(ArtifactIntegrityError, match="is missing from"):
        reg.artifact_bytes("fraud@1.0.0")


def test_artifact_paths_that_escape_the_root_are_refused(
    reg: ModelRegistry, tmp_path: Path, uri: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not read")
    reg.register("fraud", artifact(tmp_path), "pickle")
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(versions.update().values(artifact_key="sha256/../../secret.txt"))
    engine.dispose()
    with pytest.raises(ArtifactIntegrityError, match="record was altered"):
        reg.artifact_bytes("fraud@1.0.0")
    store = ArtifactStore(str(tmp_path / "artifacts"))
    for key in ("sha256/../../secret.txt", "../secret.txt", "/etc/passwd", ".."):
        with pytest.raises(UsageError, match="escapes the artifact root"):
            store.location(key)
    with pytest.raises(UsageError, match="not a content address"):
        store.location("sha256/abc")


def test_missing_or_directory_artifact_registers_nothing(reg: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        reg.register("fraud", tmp_path / "nope.pkl", "pickle")
    with pytest.raises(UsageError, match="is a directory"):
        reg.register("fraud", tmp_path, "pickle")
    assert reg.list_models() == []


def test_fsspec_artifact_root(uri: str, tmp_path: Path) -> None:
    with ModelRegistry(uri, "memory://fl-test-artifacts", cache_dir=tmp_path / "cache") as reg:
        try:
            mv = reg.register("fraud", artifact(tmp_path, b"remote"), "pickle")
            assert reg.artifact_bytes(mv) == b"remote"
            path = reg.artifact_path(mv)
            assert path == tmp_path / "cache" / mv.artifact_key and path.read_bytes() == b"remote"
            reg.artifacts.fs.pipe(reg.artifacts.location(mv.artifact_key), b"tampered")
            with pytest.raises(ArtifactIntegrityError, match="does not match its recorded digest"):
                reg.artifact_bytes(mv)
            # The local copy was verified when it was made and is checked again on every call: still genuine.
            assert reg.artifact_path(mv).read_bytes() == b"remote"
            path.write_bytes(b"tampered cache")
            with pytest.raises(ArtifactIntegrityError, match="does not match its recorded digest"):
                reg.artifact_path(mv)  # the damaged copy is refetched from a store that is damaged too
        finally:
            reg.artifacts.fs.rm(reg.artifacts.base, recursive=True)


# --- stages ---------------------------------------------------------------------------------------------
def three_versions(reg: ModelRegistry, tmp_path: Path) -> None:
    for i in range(3):
        reg.register("fraud", artifact(tmp_path, f"v{i}".encode()), "pickle")


def test_lifecycle_and_production_handover(reg: ModelRegistry, tmp_path: Path) -> None:
    three_versions(reg, tmp_path)
    reg.promote("fraud", "1.0.0", "Staging", user="bob", reason="validated offline")
    r = reg.promote("fraud", "1.0.0", "production", user="bob", reason="go")
    assert r.version.stage == Stage.PRODUCTION and r.archived == []
    reg.promote("fraud", "1.0.1", "staging")
    r = reg.promote("fraud", "1.0.1", "Production", reason="better")
    assert r.archived == ["1.0.0"]
    assert {v.version: v.stage for v in reg.versions("fraud")} == {
        "1.0.2": Stage.NONE,
        "1.0.1": Stage.PRODUCTION,
        "1.0.0": Stage.ARCHIVED,
    }
    h = [
        (e.version, e.from_stage, e.to_stage, e.outcome, e.reason)
        for e in reg.history("fraud")
        if e.kind == "stage"
    ]
    assert h == [
        ("1.0.0", "None", "Staging", "applied", "validated offline"),
        ("1.0.0", "Staging", "Production", "applied", "go"),
        ("1.0.1", "None", "Staging", "applied", ""),
        ("1.0.1", "Staging", "Production", "applied", "better"),
        ("1.0.0", "Production", "Archived", "applied", "better"),
    ]
    first = reg.history("fraud", "1.0.0")
    assert first[0].kind == "register" and first[1].user == "bob" and first[1].at.tzinfo is not None


def test_illegal_transitions_need_force_and_are_recorded(reg: ModelRegistry, tmp_path: Path) -> None:
    three_versions(reg, tmp_path)
    reg.promote("fraud", "1.0.0", "Archived")
    before = [(v.version, v.stage) for v in reg.versions("fraud")]
    with pytest.raises(UsageError, match=r"cannot go from Archived to Production .*--force"):
        reg.promote("fraud", "1.0.0", "Production")
    with pytest.raises(UsageError, match="cannot go from None to Production"):
        reg.promote("fraud", "1.0.1", "Production")
    with pytest.raises(UsageError, match="already in None"):
        reg.promote("fraud", "1.0.2", "None")
    with pytest.raises(UsageError, match="unknown stage 'Live'"):
        reg.promote("fraud", "1.0.2", "Live")
    with pytest.raises(NotFoundError, match=r"has no version 9\.9\.9; its versions: 1\.0\.2 \(None\)"):
        reg.promote("fraud", "9.9.9", "Staging")
    with pytest.raises(NotFoundError, match="no model 'ghost'"):
        reg.promote("ghost", "1.0.0", "Staging")
    assert [(v.version, v.stage) for v in reg.versions("fraud")] == before
    rejected = [e for e in reg.history("fraud") if e.outcome == "rejected"]
    assert [(e.version, e.to_stage) for e in rejected] == [("1.0.0", "Production"), ("1.0.1", "Production")]
    r = reg.promote("fraud", "1.0.0", "Production", force=True, reason="rollback")
    assert r.version.stage == Stage.PRODUCTION
    assert reg.history("fraud")[-1].detail == "forced"


def test_the_database_itself_allows_one_production(reg: ModelRegistry, tmp_path: Path, uri: str) -> None:
    three_versions(reg, tmp_path)
    reg.promote("fraud", "1.0.0", "Staging")
    reg.promote("fraud", "1.0.0", "Production")
    engine = sa.create_engine(uri)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(versions.update().where(versions.c.version == "1.0.1").values(stage="Production"))
    engine.dispose()
    assert reg.resolve("fraud").version == "1.0.0"


@pytest.mark.parametrize("existing_production", [False, True])
def test_promotions_planned_on_the_same_state_exactly_one_wins(
    reg: ModelRegistry, tmp_path: Path, existing_production: bool
) -> None:
    three_versions(reg, tmp_path)
    if existing_production:
        reg.promote("fraud", "1.0.0", "Staging")
        reg.promote("fraud", "1.0.0", "Production")
    for v in ("1.0.1", "1.0.2"):
        reg.promote("fraud", v, "Staging")
    a = reg.plan_transition("fraud", "1.0.1", "Production", user="a")
    b = reg.plan_transition("fraud", "1.0.2", "Production", user="b")
    reg.apply_transition(a)
    with pytest.raises(ConflictError, match=r"lost a race.*changed nothing \(Production is now 1\.0\.1\)"):
        reg.apply_transition(b)
    assert reg.resolve("fraud@production").version == "1.0.1"
    assert reg.resolve("fraud@1.0.2").stage == Stage.STAGING
    attempts = [(e.version, e.user, e.outcome) for e in reg.history("fraud") if e.to_stage == "Production"]
    assert attempts[-2:] == [("1.0.1", "a", "applied"), ("1.0.2", "b", "conflict")]


def test_concurrent_promotions_in_separate_processes(uri: str, tmp_path: Path) -> None:
    arts = str(tmp_path / "artifacts")
    with ModelRegistry(uri, arts) as reg:
        for i in range(3):
            reg.register("fraud", artifact(tmp_path, f"v{i}".encode()), "pickle")
            reg.promote("fraud", f"1.0.{i}", "Staging")
    ctx = mp.get_context("fork")  # the children build their own engines; nothing is shared
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(
            target=registry_workers.promote_after_barrier,
            args=(uri, arts, "fraud", f"1.0.{i}", barrier, results),
        )
        for i in range(3)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners = [v for v, o, _ in outcomes if o == "won"]
    assert len(winners) == 1, outcomes
    assert all("lost a race" in msg for _, o, msg in outcomes if o == "lost")
    with ModelRegistry(uri, arts) as reg:
        assert [v.version for v in reg.versions("fraud") if v.stage == Stage.PRODUCTION] == winners
        attempts = sorted((e.version, e.outcome) for e in reg.history("fraud") if e.to_stage == "Production")
    assert attempts == sorted((v, "applied" if o == "won" else "conflict") for v, o, _ in outcomes)


def test_concurrent_registrations_get_distinct_versions(uri: str, tmp_path: Path) -> None:
    arts = str(tmp_path / "artifacts")
    with ModelRegistry(uri, arts) as reg:
        reg.register("fraud", artifact(tmp_path), "pickle")
    ctx = mp.get_context("fork")  # the children build their own engines; nothing is shared
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(
            target=registry_workers.register_after_barrier,
            args=(
                uri,
                arts,
                "fraud",
                str(artifact(tmp_path, f"m{i}".encode(), f"m{i}.pkl")),
                barrier,
                results,
            ),
        )
        for i in range(3)
    ]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == ["1.0.1", "1.0.2", "1.0.3"]


# --- aliases and resolution ----------------------------------------------------------------------------
def test_aliases_beside_stages(reg: ModelRegistry, tmp_path: Path) -> None:
    three_versions(reg, tmp_path)
    assert reg.set_alias("fraud", "champion", "1.0.0").aliases == ["champion"]
    reg.set_alias("fraud", "challenger", "1.0.2", reason="A/B test")
    assert reg.resolve("fraud@champion").version == "1.0.0"
    reg.set_alias("fraud", "champion", "1.0.1")
    assert reg.resolve("fraud@champion").version == "1.0.1"
    assert reg.list_models()[0].aliases == {"challenger": "1.0.2", "champion": "1.0.1"}
    assert reg.delete_alias("fraud", "challenger") == "1.0.2"
    with pytest.raises(NotFoundError, match="has no alias 'challenger'"):
        reg.resolve("fraud@challenger")
    details = [e.detail for e in reg.history("fraud") if e.kind == "alias"]
    assert details == [
        "champion -> 1.0.0",
        "challenger -> 1.0.2",
        "champion -> 1.0.1 (was 1.0.0)",
        "challenger removed (was 1.0.2)",
    ]
    for bad in ("production", "Latest", "1x", "has space"):
        with pytest.raises(UsageError, match="alias"):
            reg.set_alias("fraud", bad, "1.0.0")
    with pytest.raises(NotFoundError, match=r"has no version 4\.0\.0"):
        reg.set_alias("fraud", "champion", "4.0.0")
    with pytest.raises(NotFoundError, match="nothing to remove"):
        reg.delete_alias("fraud", "nobody")
    assert reg.resolve("fraud@champion").version == "1.0.1"


def test_resolution_of_every_reference_form(reg: ModelRegistry, tmp_path: Path) -> None:
    three_versions(reg, tmp_path)
    with pytest.raises(NotFoundError, match=r"no version in Production.*bare model name"):
        reg.resolve("fraud")
    with pytest.raises(NotFoundError, match="no version in Staging"):
        reg.resolve("fraud@staging")
    reg.promote("fraud", "1.0.0", "Staging")
    reg.promote("fraud", "1.0.1", "Staging")
    reg.promote("fraud", "1.0.0", "Production")
    assert reg.resolve("fraud").version == "1.0.0"
    assert reg.resolve("fraud@Production").version == "1.0.0"
    assert reg.resolve("fraud@staging").version == "1.0.1"
    assert reg.resolve("fraud@latest").version == "1.0.2"
    assert reg.resolve("fraud@1.0.2").stage == Stage.NONE
    for bad, message in [
        ("fraud@", "ends in '@'"),
        ("fraud@1.0", "not a semantic version"),
        ("fr aud", "is not valid"),
        ("fraud@9.0.0", r"has no version 9\.0\.0"),
        ("ghost@latest", "no model 'ghost'.*registered models: fraud"),
    ]:
        with pytest.raises(UsageError, match=message):
            reg.resolve(bad)


def test_newer_schema_revision_is_refused(uri: str, tmp_path: Path) -> None:
    with ModelRegistry(uri, str(tmp_path / "a")) as reg:
        reg.list_models()
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE registry_alembic_version SET version_num = '9999'"))
    engine.dispose()
    from featurelake.errors import ConfigError

    with (
        ModelRegistry(uri, str(tmp_path / "a")) as reg,
        pytest.raises(ConfigError, match="upgraded by a newer featurelake"),
    ):
        reg.list_models()


def test_unreachable_or_locked_registry_database(tmp_path: Path) -> None:
    from featurelake.errors import CatalogUnavailableError, ConfigError

    down = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with (
        ModelRegistry(down, str(tmp_path / "a"), lock_timeout=1) as reg,
        pytest.raises(
            CatalogUnavailableError,
            match=r"model registry postgresql\+psycopg://postgres@127\.0\.0\.1:1/nowhere is unavailable",
        ),
    ):
        reg.list_models()
    with (
        ModelRegistry("not a url", str(tmp_path / "a")) as reg,
        pytest.raises(ConfigError, match="not a database URL"),
    ):
        reg.list_models()
    uri = f"sqlite:///{tmp_path}/locked.db"
    with ModelRegistry(uri, str(tmp_path / "a"), lock_timeout=0.2) as reg:
        reg.register("fraud", artifact(tmp_path), "pickle")
        holder = sa.create_engine(uri, connect_args={"isolation_level": None})
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
            with pytest.raises(CatalogUnavailableError, match="is locked while trying to write"):
                reg.register("fraud", artifact(tmp_path, b"x"), "pickle")
            conn.exec_driver_sql("ROLLBACK")
        holder.dispose()
        assert [v.version for v in reg.versions("fraud")] == ["1.0.0"]
