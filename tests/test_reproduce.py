"""``models reproduce`` / ``models verify``: a registered version's training set rebuilt from the registry alone.

The story: register a model on a training set, then keep working on the tables (later backfills, one of them
recomputing the bound days; a partitioning change; compaction, expiry and orphan removal as if weeks had
passed): the rebuild still gives the same bytes and digest. Then everything that can go wrong, each with its
own message: a tampered or missing stored entity frame, a bound snapshot whose tag was removed, a data file
deleted behind maintenance's back, rebuilt data that differs, ``--no-store-entities`` with right and wrong
entity files. On local disk and on (moto) S3 with the local engine, and on local disk with Spark.
"""

from __future__ import annotations

import json
import os
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.errors import ArtifactIntegrityError, ReproductionError, UsageError
from featurelake.training import Provenance, write_training_set
from featurelake.training.digest import cell_hashes, compare, table_digest
from tests.helpers import START, day, make_project, transactions, write_source
from tests.s3_project import s3_project
from tests.s3_servers import S3Bucket, moto_s3, s3
from tests.spark_support import engine_config
from tests.training_helpers import FEATURES, TWO_VIEWS, entities, run_cli

_FIXTURES = (moto_s3, s3)
LATER = timedelta(days=30)
VIEW = "user_features"


def features(partition: str) -> str:
    return TWO_VIEWS.replace(
        "ttl=timedelta(days=7),", f"ttl=timedelta(days=7),\n    partition={partition!r},"
    )


def project(root: Path, engine: str = "local") -> Path:
    return make_project(root, features=features("day"), config=engine_config(engine))


def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0, 3.0]}))
    return path


def correct_days(root: Path, first: int, days: int, seed: int) -> None:
    """Late upstream rows for some days: recomputing those days changes their features."""
    extra = transactions(days=days, start=START + timedelta(days=first), seed=seed, rows_per_day=60)
    write_source(root, extra, name=f"late-{seed}.parquet")


def record(fl: featurelake.Featurelake, ref: str) -> Any:
    rec = fl.models.training_record(ref)
    assert rec is not None
    return rec


def blob(root: Path, key: str) -> Path:
    return root / ".featurelake" / "artifacts" / key


@pytest.fixture
def registered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """fraud 1.0.0 registered (CLI) on a training set over days 0-4 of both views; nothing else changed yet."""
    root = project(tmp_path / "proj")
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(80, days=5), ents)
    with featurelake.open(root) as fl:
        fl.apply()
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(5), run_id=f"{v}_first")
        train = Path(write_training_set(fl.training_set(ents, FEATURES), tmp_path / "train.parquet"))
    code, out, err = run_cli(
        capsys, root, "models", "register", "fraud", "--artifact", str(model_file(tmp_path)),
        "--flavor", "pickle", "--training-set", str(train),
    )  # fmt: skip
    assert code == 0, err
    assert "training set sha256" in out and "entity frame stored as sha256/" in out
    return {"root": root, "ents": ents, "train": train, "bound": Provenance.load(train).views}


def later_work(root: Path) -> None:
    """Everything that happens to the tables after the registration, weeks of it."""
    correct_days(root, 1, 3, seed=11)
    with featurelake.open(root) as fl:
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(1), day(4), run_id=f"{v}_fix")  # recomputes days the model trained on
            fl.backfill(v, day(5), day(8), run_id=f"{v}_more")
    (root / "features.py").write_text(features("month"))  # user_features: partitioned by month from now on
    with featurelake.open(root) as fl:
        (evolved, _) = fl.apply()
        assert evolved.action == "evolved"
        fl.backfill(VIEW, day(8), day(10), run_id="by_month")


def test_reproduce_gives_the_same_bytes_after_backfills_evolution_compaction_expiry_and_orphans(
    registered: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, train, bound = registered["root"], registered["train"], registered["bound"]
    later_work(root)
    with featurelake.open(root) as fl:
        assert not fl.training_set(registered["ents"], FEATURES).equals(pq.read_table(train))  # data moved on
        location = fl.project.load_table(VIEW).metadata.location
        orphan = Path(location.removeprefix("file://")) / "data" / "orphan-from-a-crash.parquet"
        orphan.write_bytes(b"left behind")
        reports = {
            v: fl.maintain(v, compact=True, expire=True, remove_orphans=True, now=datetime.now(UTC) + LATER)[
                0
            ]
            for v in ("user_features", "user_max")
        }
        uf = reports[VIEW]
        assert uf.compaction is not None and uf.compaction.snapshot_id is not None  # files were rewritten
        assert any("older partition spec" in n for n in uf.compaction.notes)
        assert uf.expiry is not None and len(uf.expiry.expired) >= 3 and uf.expiry.deleted
        assert uf.expiry.kept[bound[VIEW]] == "tag model-fraud-1.0.0"
        assert uf.orphans is not None and any(
            o.endswith("orphan-from-a-crash.parquet") for o in uf.orphans.orphans
        )
        for v, rep in reports.items():
            assert rep.tags == {"model-fraud-1.0.0": bound[v]}
            assert rep.to_dict()["tags"] == [{"tag": "model-fraud-1.0.0", "snapshot_id": bound[v]}]
        alive = {s.snapshot_id for s in fl.project.load_table(VIEW).metadata.snapshots}
        assert bound[VIEW] in alive and len(alive) == 2  # the tagged snapshot and main's head

    again = tmp_path / "again.parquet"
    code, out, err = run_cli(capsys, root, "models", "reproduce", "fraud@1.0.0", "--output", str(again))
    assert code == 0, err
    assert "identical" in out and f"user_features@{bound[VIEW]}" in out
    assert again.read_bytes() == train.read_bytes()

    code, out, err = run_cli(capsys, root, "models", "reproduce", "fraud@latest", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["identical"] and doc["rebuilt_sha256"] == table_digest(pq.read_table(train)).sha256
    assert doc["entities"].startswith("registry sha256/") and doc["output"] is None

    code, out, err = run_cli(capsys, root, "models", "verify", "--all")
    assert code == 0, err
    assert "fraud" in out and "identical" in out
    code, out, _ = run_cli(capsys, root, "models", "show", "fraud@1.0.0")
    assert "last verified" in out and "identical" in out and "entity frame stored as sha256/" in out
    code, out, _ = run_cli(capsys, root, "models", "show", "fraud@1.0.0", "--json")
    shown = json.loads(out)
    assert shown["last_verification"]["outcome"] == "identical"
    assert shown["training_record"]["sha256"] == doc["recorded_sha256"]
    code, out, _ = run_cli(capsys, root, "models", "history", "fraud")
    assert "verified" in out
    code, out, _ = run_cli(capsys, root, "models", "show", "fraud", "--json")
    assert json.loads(out)["versions"][0]["last_verification"]["outcome"] == "identical"


def test_maintain_reports_which_tags_keep_which_snapshots(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root, bound = registered["root"], registered["bound"]
    code, out, err = run_cli(capsys, root, "maintain", VIEW, "--compact", "--json")
    assert code == 0, err
    (doc,) = json.loads(out)
    assert doc["tags"] == [{"tag": "model-fraud-1.0.0", "snapshot_id": bound[VIEW]}]
    code, out, err = run_cli(capsys, root, "maintain", VIEW, "--expire", "--dry-run")
    assert code == 0, err
    assert "tags keep 1 snapshot(s)" in out and f"model-fraud-1.0.0 -> snapshot {bound[VIEW]}" in out


def test_a_tampered_stored_entity_frame_is_refused(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = registered["root"]
    with featurelake.open(root) as fl:
        rec = record(fl, "fraud@1.0.0")
        path = blob(root, rec.entities_key)
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[-40] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(
            ArtifactIntegrityError, match=rf"model fraud 1\.0\.0 entity frame: artifact {rec.entities_key}"
        ):
            fl.models.reproduce("fraud@1.0.0")
    code, out, err = run_cli(capsys, root, "models", "reproduce", "fraud@1.0.0")
    assert code == 1 and rec.entities_key in err and "does not match its recorded digest" in err
    code, out, err = run_cli(capsys, root, "models", "verify", "fraud")
    assert code == 1 and "error" in out
    with featurelake.open(root) as fl:
        last = fl.models.last_verification("fraud@1.0.0")
        assert last is not None and last.outcome == "error" and rec.entities_key in last.detail
        path.unlink()
        with pytest.raises(ArtifactIntegrityError, match=rf"artifact {rec.entities_key} is missing"):
            fl.models.reproduce("fraud@1.0.0")


def test_a_snapshot_whose_tag_was_removed_is_reported_with_that_tag(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root, bound = registered["root"], registered["bound"]
    with featurelake.open(root) as fl:
        fl.backfill(VIEW, day(1), day(3), run_id="newer")
        tbl = fl.project.load_table(VIEW)
        tbl.manage_snapshots().remove_tag("model-fraud-1.0.0").commit()  # someone's clean-up script
        fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + LATER)
        message = (
            rf"model fraud 1\.0\.0 cannot be rebuilt: snapshot {bound[VIEW]} of features\.user_features no longer "
            r"exists; the tag model-fraud-1\.0\.0 that should have kept it is gone"
        )
        with pytest.raises(ReproductionError, match=message):
            fl.models.reproduce("fraud@1.0.0")
    code, out, err = run_cli(capsys, root, "models", "reproduce", "fraud@1.0.0")
    assert code == 1 and "model-fraud-1.0.0" in err and str(bound[VIEW]) in err
    code, out, err = run_cli(capsys, root, "models", "verify", "--all", "--json")
    assert code == 1
    (result,) = json.loads(out)
    assert result["outcome"] == "error" and "model-fraud-1.0.0" in result["detail"]
    code, out, _ = run_cli(capsys, root, "models", "show", "fraud@1.0.0")
    assert "last verified" in out and "error" in out and "MISSING" in out


def test_released_tags_are_named_when_their_snapshot_expired(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "p", features=TWO_VIEWS, config="project: t\nregistry:\n  release_tags_on_archive: true\n"
    )
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        ts = fl.training_set(entities(40, days=5), ["user_features:amount_avg_1d"])
        fl.models.register("churn", model_file(tmp_path), "pickle", training_set=ts)
        fl.models.promote("churn", "1.0.0", "Archived")
        fl.backfill(VIEW, day(1), day(3), run_id="newer")
        fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + LATER)
        with pytest.raises(
            ReproductionError, match=r"its tag model-churn-1\.0\.0 was released when the version"
        ):
            fl.models.reproduce("churn@1.0.0")


def test_a_data_file_deleted_behind_maintenance_is_reported(registered: dict[str, Any]) -> None:
    root, bound = registered["root"], registered["bound"]
    with featurelake.open(root) as fl:
        fl.backfill(VIEW, day(0), day(5), run_id="again")  # main no longer reads the bound snapshot's files
        tbl = fl.project.load_table(VIEW)
        old = {t.file.file_path for t in tbl.scan(snapshot_id=bound[VIEW]).plan_files()}
        current = {t.file.file_path for t in tbl.scan().plan_files()}
        victim = sorted(old - current)[0]
        Path(victim.removeprefix("file://")).unlink()
        with pytest.raises(
            ReproductionError, match=r"a data file of its bound snapshots .* kept by model-fraud-1\.0\.0"
        ):
            fl.models.reproduce("fraud@1.0.0")


def test_rebuilt_data_that_differs_names_the_first_row_and_column(
    registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root, train, bound = registered["root"], registered["train"], registered["bound"]
    with featurelake.open(root) as fl:
        tbl = fl.project.load_table(VIEW)
        files = sorted(t.file.file_path for t in tbl.scan(snapshot_id=bound[VIEW]).plan_files())
        # Corrupt one data file in place (same rows and schema, other values): what a bad disk or a rogue
        # rewrite would do.
        target = Path(files[2].removeprefix("file://"))
        data = pq.read_table(target)
        i = data.schema.get_field_index("amount_avg_1d")
        data = data.set_column(i, data.schema.field(i), pc.multiply(data.column(i), 2.0))
        target.chmod(0o644)
        pq.write_table(data, target)
        rebuilt = fl.models.reproduce("fraud@1.0.0")
    original = pq.read_table(train)
    col = "amount_avg_1d"
    assert rebuilt.table is not None
    pairs = zip(original.column(col).to_pylist(), rebuilt.table.column(col).to_pylist(), strict=True)
    first = next(r for r, (a, b) in enumerate(pairs) if a != b)
    assert not rebuilt.identical and rebuilt.first_row == first and rebuilt.first_column == col
    uid = original.column("user_id")[first].as_py()
    assert any(
        f"first difference at row {first} (user_id={uid}, event_timestamp=" in d for d in rebuilt.differences
    )
    code, out, err = run_cli(capsys, root, "models", "reproduce", "fraud@1.0.0")
    assert code == 1
    assert "different" in out and f"first difference at row {first}" in out and f"column {col}" in out
    assert "error: model fraud 1.0.0: different:" in err
    code, out, err = run_cli(capsys, root, "models", "verify", "fraud@1.0.0")
    assert code == 1 and "different" in err
    with featurelake.open(root) as fl:
        last = fl.models.last_verification("fraud@1.0.0")
        assert last is not None and last.outcome == "different" and f"row {first}" in last.detail


def test_no_store_entities_asks_for_the_entity_file_and_checks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(tmp_path / "p", features=TWO_VIEWS)
    ents, wrong = tmp_path / "ents.parquet", tmp_path / "other.parquet"
    pq.write_table(entities(60, days=5), ents)
    pq.write_table(entities(60, seed=4, days=5), wrong)
    with featurelake.open(root) as fl:
        fl.apply()
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(5), run_id=f"{v}_first")
        train = Path(write_training_set(fl.training_set(ents, FEATURES), tmp_path / "train.parquet"))
    code, out, err = run_cli(
        capsys, root, "models", "register", "private", "--artifact", str(model_file(tmp_path)),
        "--flavor", "pickle", "--training-set", str(train), "--no-store-entities",
    )  # fmt: skip
    assert code == 0, err
    assert "entity frame not stored" in out
    sha = Provenance.load(train).entities_sha256
    with featurelake.open(root) as fl:
        rec = record(fl, "private@1.0.0")
        assert not rec.entities_stored and rec.entities_key is None
        with pytest.raises(UsageError, match=rf"registered with --no-store-entities.*--entities FILE.*{sha}"):
            fl.models.reproduce("private@1.0.0")
    code, out, err = run_cli(capsys, root, "models", "reproduce", "private@1.0.0")
    assert code == 2 and "--no-store-entities" in err and sha in err
    code, out, err = run_cli(capsys, root, "models", "reproduce", "private@1.0.0", "--entities", str(wrong))
    assert code == 2 and "is not the one its training set was built from" in err and sha in err
    again = tmp_path / "again.parquet"
    code, out, err = run_cli(
        capsys, root, "models", "reproduce", "private@1.0.0", "--entities", str(ents), "--output", str(again)
    )
    assert code == 0 and "identical" in out, err
    assert again.read_bytes() == train.read_bytes()
    # verify --all cannot check it without the file: reported as skipped, not a failure.
    code, out, err = run_cli(capsys, root, "models", "verify", "--all", "--json")
    assert code == 0 and json.loads(out)[0]["outcome"] == "skipped"
    code, out, err = run_cli(capsys, root, "models", "verify", "private@1.0.0", "--entities", str(ents))
    assert code == 0 and "identical" in out, err


def test_a_changed_training_set_is_refused_unless_the_entities_stay_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_project(tmp_path / "p", features=TWO_VIEWS)
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(60, days=5), ents)
    with featurelake.open(root) as fl:
        fl.apply()
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(5), run_id=f"{v}_first")
        ts = fl.training_set(ents, FEATURES)
        flipped = ts.set_column(2, "label", pc.subtract(1, ts.column("label")))  # relabelled after the build
        with pytest.raises(UsageError, match=r"cannot register fraud: the entity columns .* do not hash"):
            fl.models.register("fraud", model_file(tmp_path), "pickle", training_set=flipped)
        assert fl.models.list_models() == []
        with pytest.raises(UsageError, match="lacks the feature columns amount_max_1d"):
            fl.models.register(
                "fraud", model_file(tmp_path), "pickle", training_set=ts.drop_columns(["amount_max_1d"])
            )
        fl.models.register(
            "fraud", model_file(tmp_path), "pickle", training_set=flipped, store_entities=False
        )
        result = fl.models.reproduce("fraud@1.0.0", entities=ents)
    assert not result.identical
    assert "column label: its values differ (no per-row record to locate them)" in result.differences


def test_columns_added_after_the_build_are_stored_with_the_entity_frame(tmp_path: Path) -> None:
    """A label computed after the join (a common pattern) is part of what the model learned from."""
    root = make_project(tmp_path / "p", features=TWO_VIEWS)
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(60, days=5).drop_columns(["label"]), ents)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        ts = fl.training_set(ents, ["user_features:amount_avg_1d", "user_features:txn_count_1d"])
        label = pc.greater(pc.fill_null(ts.column("amount_avg_1d"), 0.0), 20.0)
        train = Path(write_training_set(ts.append_column("label", label), tmp_path / "train.parquet"))
        fl.models.register("later", model_file(tmp_path), "pickle", training_set=train)
        rec = record(fl, "later@1.0.0")
        assert rec.entity_columns == ["user_id", "event_timestamp"] and rec.extra_columns == ["label"]
        rebuilt = fl.models.reproduce("later@1.0.0")
        assert rebuilt.identical and rebuilt.table is not None
        assert (
            Path(write_training_set(rebuilt.table, tmp_path / "again.parquet")).read_bytes()
            == train.read_bytes()
        )

        copy = fl.models.register("copy", model_file(tmp_path), "pickle", training_set=train)
        same = record(fl, copy.ref)  # the same rows are stored once: content addresses
        assert (same.entities_key, same.cells_key) == (rec.entities_key, rec.cells_key)
        assert blob(root, rec.entities_key).stat().st_mode & 0o222 == 0  # read-only, like model artifacts

        fl.models.register("later", model_file(tmp_path), "pickle", training_set=train, store_entities=False)
        without = fl.models.reproduce("later@1.0.1", entities=ents)  # the label is nowhere to be found
        assert without.differences == ["columns missing from the rebuild: label"]
        assert fl.models.reproduce("later@1.0.1", entities=train).identical  # the training set carries it


def test_a_csv_entity_frame_with_second_timestamps_is_stored_as_it_was(tmp_path: Path) -> None:
    """Parquet turns timestamp[s] into [ms]: the stored frame gets its original type back."""
    root = make_project(tmp_path / "p", features=TWO_VIEWS)
    csv = tmp_path / "ents.csv"
    ents = entities(50, days=5)
    lines = [
        f"{r['user_id']},{r['event_timestamp']:%Y-%m-%dT%H:%M:%S}Z,{r['label']}" for r in ents.to_pylist()
    ]
    csv.write_text("user_id,event_timestamp,label\n" + "\n".join(lines) + "\n")
    assert pacsv.read_csv(csv).schema.field("event_timestamp").type == pa.timestamp("s", tz="UTC")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        ts = fl.training_set(csv, ["user_features:txn_count_1d"])
        train = Path(write_training_set(ts, tmp_path / "t.parquet"))
        assert pq.read_table(train).schema.field("event_timestamp").type == pa.timestamp("ms", tz="UTC")
        fl.models.register("csvy", model_file(tmp_path), "pickle", training_set=train)
        rebuilt = fl.models.reproduce("csvy@1.0.0")
        assert rebuilt.identical, rebuilt.differences
        assert rebuilt.table is not None
        assert rebuilt.table.schema.field("event_timestamp").type == pa.timestamp("s", tz="UTC")
        assert (
            Path(write_training_set(rebuilt.table, tmp_path / "again.parquet")).read_bytes()
            == train.read_bytes()
        )


def test_versions_that_cannot_be_rebuilt_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_project(tmp_path / "p", features=TWO_VIEWS)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        ts = fl.training_set(entities(30, days=5), ["user_features:amount_avg_1d"])
        fl.models.register("bare", model_file(tmp_path), "pickle", signature={"amount_avg_1d": "double"})
        fl.models.register(
            "provonly", model_file(tmp_path), "pickle", training_set=Provenance.load(ts).to_dict()
        )
        with pytest.raises(UsageError, match=r"model bare 1\.0\.0 was registered without a training set"):
            fl.models.reproduce("bare@1.0.0")
        with pytest.raises(
            UsageError, match=r"model provonly 1\.0\.0 has a provenance but no recorded training set"
        ):
            fl.models.reproduce("provonly@1.0.0")
        with pytest.raises(UsageError, match="--no-store-entities needs a --training-set"):
            fl.models.register("bare", model_file(tmp_path), "pickle", store_entities=False)
        skipped = fl.models.verify(all_versions=True)
        assert [(v.model, v.outcome) for v in skipped] == [("bare", "skipped"), ("provonly", "skipped")]
        assert fl.models.last_verification("bare@1.0.0") is None  # skipped versions are not recorded
    cases = [
        (("models", "reproduce", "bare@1.0.0", "--output", "x.csv"), "use a .parquet file"),
        (("models", "reproduce", "nope@1.0.0"), "no model 'nope'"),
        (("models", "verify"), "say what to verify"),
        (("models", "verify", "bare", "--all"), "not both"),
        (("models", "verify", "--all", "--entities", "e.parquet"), "name it as NAME@VERSION"),
        (("models", "verify", "bare@1.0.0"), "registered without a training set"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, root, *args)
        assert code == 2 and message in err, (args, err)
    code, out, _ = run_cli(capsys, root, "models", "verify", "--all")
    assert code == 0 and "skipped" in out


def test_table_digest_ignores_storage_details_and_compare_names_differences() -> None:
    base = pa.table(
        {
            "k": pa.array(["a", None, "c", "d"]),
            "t": pa.array([1, 2, 3, 4], pa.timestamp("s", tz="UTC")),
            "x": pa.array([1.5, None, float("nan"), -0.0]),
            "n": pa.array([1, 2, None, 4], pa.int32()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(base, sink)
    reread = pq.read_table(pa.BufferReader(sink.getvalue()))
    assert reread.schema.field("t").type.unit == "ms"
    chunked = pa.concat_tables([base.slice(0, 1), base.slice(1)])
    with_meta = base.replace_schema_metadata({b"featurelake.provenance": b"{}"})
    # Whatever lies under a null slot does not count.
    raw = np.array([1.5, 123.0, np.nan, -0.0])
    garbage = pa.Array.from_buffers(
        pa.float64(), 4, [base.column("x").chunk(0).buffers()[0], pa.py_buffer(raw.tobytes())]
    )
    dirty = base.set_column(2, "x", garbage)
    digests = {table_digest(t).sha256 for t in (base, reread, chunked, with_meta, dirty)}
    assert len(digests) == 1
    assert table_digest(base.select(["t", "k", "x", "n"])).sha256 not in digests  # column order counts
    assert table_digest(base.set_column(3, "n", pc.cast(base.column("n"), pa.int64()))).sha256 not in digests

    recorded, cells = table_digest(base), cell_hashes(base, ["x", "n"])
    changed = base.set_column(3, "n", pa.array([1, 2, 3, 5], pa.int32()))
    cmp = compare(recorded, changed, recorded_cells=cells, row_label=["k"])
    assert (cmp.identical, cmp.first_row, cmp.first_column) == (False, 2, "n")
    assert cmp.differences[0] == "first difference at row 2 (k='c'), column n: rebuilt value 3"
    assert "column n: 2 value(s) differ, the first at row 2" in cmp.differences
    assert compare(recorded, base).identical
    assert compare(recorded, base.slice(0, 3)).differences[0] == "rows: recorded 4, rebuilt 3"
    assert compare(recorded, base.drop_columns(["n"])).differences == ["columns missing from the rebuild: n"]
    assert (
        "columns the rebuild added: y"
        in compare(recorded, base.append_column("y", base.column("n"))).differences
    )
    retyped = base.set_column(3, "n", pc.cast(base.column("n"), pa.float64()))
    assert compare(recorded, retyped).differences == ["column n: recorded type int32, rebuilt double"]


@pytest.mark.s3
def test_reproduce_on_s3(s3: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Warehouse, artifacts (entity frame included) and the output on S3; maintenance deletes objects there."""
    root = s3_project(tmp_path / "proj", s3)
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(60, days=5), ents)
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(5), run_id="first")
        ts = fl.training_set(ents, ["user_features:amount_avg_1d", "user_features:txn_count_1d"])
        mv = fl.models.register("scorer", model_file(tmp_path), "pickle", training_set=ts)
        rec = record(fl, "scorer@1.0.0")
        assert s3.objects(f"artifacts/{rec.entities_key}") == [f"artifacts/{rec.entities_key}"]
        fl.backfill(VIEW, day(1), day(4), run_id="fix")
        fl.backfill(VIEW, day(5), day(9), run_id="more")
        (report,) = fl.maintain(VIEW, now=datetime.now(UTC) + LATER)
        assert report.expiry is not None and report.expiry.deleted
        assert report.tags == {"model-scorer-1.0.0": mv.snapshots[VIEW]}
    code, out, err = run_cli(
        capsys, root, "models", "reproduce", "scorer@1.0.0", "--output", s3.url("out/again.parquet")
    )
    assert code == 0 and "identical" in out, err
    assert pq.read_table(pa.BufferReader(s3.get("out/again.parquet"))).equals(ts)
    s3.put(f"artifacts/{rec.entities_key}", b"not the entity frame")
    with featurelake.open(root) as fl, pytest.raises(ArtifactIntegrityError, match=rec.entities_key):
        fl.models.reproduce("scorer@1.0.0")


@pytest.mark.spark
def test_reproduce_when_spark_published_and_maintained_the_features(spark: object, tmp_path: Path) -> None:
    root = project(tmp_path / "proj", engine="spark")
    ents = tmp_path / "ents.parquet"
    pq.write_table(entities(60, days=5), ents)
    with featurelake.open(root) as fl:
        fl.apply()
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(5), run_id=f"{v}_first")
        train = Path(write_training_set(fl.training_set(ents, FEATURES), tmp_path / "train.parquet"))
        fl.models.register("sparky", model_file(tmp_path), "pickle", training_set=train)
    later_work(root)
    with featurelake.open(root) as fl:
        for v in ("user_features", "user_max"):
            (rep,) = fl.maintain(
                v, compact=True, expire=True, remove_orphans=True, now=datetime.now(UTC) + LATER
            )
            assert rep.expiry is not None and rep.expiry.expired
            assert list(rep.tags) == ["model-sparky-1.0.0"]
        result = fl.models.reproduce("sparky@1.0.0")
        assert result.identical, result.differences
        assert result.table is not None
        again = Path(write_training_set(result.table, tmp_path / "again.parquet"))
    assert again.read_bytes() == train.read_bytes()
