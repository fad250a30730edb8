"""The whole flow on object storage: moto's S3 server on loopback holds the warehouse, the source, the model
artifacts and the outputs; the catalog is the SQL catalog, or a REST catalog (tests/rest_catalog.py).

init -> apply -> backfill (one refused by its audit) -> history / read / time travel -> training set -> models
register (artifact in S3) -> predict -> sync -> serve -> maintain (compaction, expiry and orphan removal on S3).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import featurelake
from featurelake.serving.server import create_app
from tests.helpers import START, day
from tests.online_helpers import LinearModel
from tests.rest_catalog import RestCatalogProcess
from tests.s3_project import cli_here, corrupt_days, s3_project, upload_hive_source
from tests.s3_servers import S3Bucket, moto_s3, s3

_FIXTURES = (moto_s3, s3)
pytestmark = pytest.mark.s3
VIEW = "user_features"
TOKEN = "rest-token-9f8e7d"


@pytest.fixture(params=["sql", "rest"])
def catalog(request: pytest.FixtureRequest, s3: S3Bucket, tmp_path: Path) -> Iterator[str]:
    """The ``catalog:`` keys of the project: the SQL catalog, or the REST adapter with a bearer token."""
    if request.param == "sql":
        yield ""
        return
    server = RestCatalogProcess(
        f"sqlite:///{tmp_path}/rest-backend.db",
        s3.url("warehouse"),
        s3_endpoint=s3.endpoint,
        token=TOKEN,
    ).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("FL_TEST_CATALOG_TOKEN", TOKEN)
    try:
        yield f"  type: rest\n  uri: {server.url}\n  properties:\n    token: '${{FL_TEST_CATALOG_TOKEN}}'\n"
    finally:
        mp.undo()
        server.stop()


def test_whole_flow_on_s3(
    catalog: str, s3: S3Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "proj"
    # init scaffolds the project; its config and definitions are then pointed at the bucket.
    assert cli_here(capsys, tmp_path, "init", str(root)).returncode == 0
    s3_project(root, s3, catalog=catalog)
    data_keys = s3.objects("raw/")
    assert len(data_keys) == 10 and all("/dt=2024-01-" in k for k in data_keys)

    # --- apply, backfills (one refused), history, time travel ---------------------------------------------
    r = cli_here(capsys, root, "apply")
    assert r.returncode == 0, r.stderr
    with featurelake.open(root) as fl:
        first = fl.backfill(VIEW, day(0), day(5), run_id="first")
        second = fl.backfill(VIEW, day(5), day(10), run_id="second")
        assert first.rows > 0 and second.rows > 0
        upload_hive_source(s3, corrupt_days(10))
        main_before = fl.project.load_table(VIEW).metadata.current_snapshot_id
        with pytest.raises(featurelake.AuditFailed, match="null rate of amount_avg_1d"):
            fl.backfill(VIEW, day(10), day(12), run_id="broken")
        assert fl.project.load_table(VIEW).metadata.current_snapshot_id == main_before
        hist = fl.history(VIEW)
        assert [h.run_id for h in hist[:2]] == ["second", "first"]
        now = fl.read(VIEW)
        assert now.num_rows == first.rows + second.rows
        old = fl.read(VIEW, snapshot_id=first.snapshot_id)
        assert old.num_rows == first.rows
    # the warehouse is in the bucket (the s3a:// in the file is the same bucket), nothing local
    assert any(k.startswith("warehouse/features/user_features/data/") for k in s3.objects())
    assert not (root / ".featurelake" / "warehouse").exists()

    out = s3.url("out/august.parquet")
    r = cli_here(capsys, root, "read", VIEW, "--snapshot", str(first.snapshot_id), "--output", out)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(io.BytesIO(s3.get("out/august.parquet"))).num_rows == first.rows
    r = cli_here(capsys, root, "audit", VIEW, "--run-id", "broken", "--html", s3.url("reports/broken.html"))
    assert r.returncode == 1 and b"null_rate" in s3.get("reports/broken.html")

    # --- training set with entities and output on S3; model registered with its artifact in S3 -------------
    rng = np.random.default_rng(3)
    entities = pa.table(
        {
            "user_id": pa.array(rng.integers(1, 41, 200), pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(days=9, hours=int(h)) for h in rng.integers(0, 24, 200)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    buf = io.BytesIO()
    pq.write_table(entities, buf)
    s3.put("inputs/entities.parquet", buf.getvalue())
    train_url = s3.url("train/ts.parquet")
    r = cli_here(
        capsys, root, "training-set", "--entities", s3.url("inputs/entities.parquet"),
        "--features", "user_features:amount_avg_1d,user_features:txn_count_1d", "--output", train_url, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    train = pq.read_table(io.BytesIO(s3.get("train/ts.parquet")))
    assert train.num_rows == 200 and train["amount_avg_1d"].null_count < 200
    provenance = json.loads(train.schema.metadata[b"featurelake.provenance"])
    assert provenance["views"] == {VIEW: second.snapshot_id}

    s3.put("models/scorer.pkl", pickle.dumps(LinearModel([2.0, 0.0], bias=1.0)))
    r = cli_here(
        capsys, root, "models", "register", "scorer", "--artifact", s3.url("models/scorer.pkl"),
        "--flavor", "pickle", "--training-set", train_url, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    registered = json.loads(r.stdout)
    assert s3.objects("artifacts/" + registered["artifact_key"]) == [
        "artifacts/" + registered["artifact_key"]
    ]
    # the upload's temporary object is gone (a directory marker may stay)
    assert [k for k in s3.objects("artifacts/tmp/") if not k.endswith("/")] == []

    # --- predict, sync, serve ---------------------------------------------------------------------------------
    with featurelake.open(root) as fl:
        fl.models.promote("scorer", registered["version"], "Staging")
        fl.models.promote("scorer", registered["version"], "Production")
        scored = fl.predict("scorer", VIEW)
        assert scored.rows > 0
        predictions = fl.read("predictions.scorer")
        assert predictions.num_rows == scored.rows
        synced = fl.sync()
        assert sum(s.rows for s in synced) > 0
        with TestClient(create_app(fl.project)) as http:
            got = http.post(
                "/get-online-features",
                json={"features": ["user_features:amount_avg_1d"], "entities": {"user_id": [1, 999]}},
            ).json()
            assert got["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]
            answer = http.post("/predict/scorer", json={"entities": {"user_id": [1]}}).json()
            assert answer["model_version"] == registered["version"] and answer["predictions"][0] is not None

        # --- maintenance on S3: compaction writes objects, expiry and orphan removal delete them ----------------
        table_prefix = "warehouse/features/user_features/"
        s3.put(table_prefix + "data/orphan-old.parquet", b"left by a crashed writer")
        later = datetime.now(UTC) + timedelta(days=10)
        fl.backfill(VIEW, day(0), day(2), run_id="again")  # a newer snapshot: the older ones can expire
        before = set(s3.objects(table_prefix))
        done = fl.maintain(VIEW, expire_older_than="7d", orphan_min_age="3d", now=later)
        assert not any(t.error for t in done), [t.error for t in done]
        result = done[0]
        assert result.expiry is not None and result.expiry.expired and result.expiry.deleted
        assert result.orphans is not None and any(
            u.endswith("orphan-old.parquet") for u in result.orphans.orphans
        )
        after = set(s3.objects(table_prefix))
        gone = {u.split(f"{s3.bucket}/", 1)[1] for u in [*result.expiry.deleted, *result.orphans.orphans]}
        assert gone and gone <= before and not (gone & after)
        # the refused run's branch is a ref: its files were kept and it still reads
        kept = fl.project.load_table(VIEW)
        tip = kept.metadata.refs["audit_broken"].snapshot_id
        assert fl.read(VIEW, snapshot_id=tip).num_rows > 0
        assert fl.read(VIEW).num_rows == first.rows + second.rows

        # a file younger than the safety age (an in-flight write's) is never deleted
        s3.put(table_prefix + "data/in-flight.parquet", b"a running backfill's file")
        young = fl.maintain(VIEW, remove_orphans=True, orphan_min_age="3d")[0]
        assert young.orphans is not None
        assert any(u.endswith("in-flight.parquet") for u in young.orphans.too_young)
        assert table_prefix + "data/in-flight.parquet" in s3.objects(table_prefix)

        # compaction writes its output to S3: each scoring run appends a file to predictions.scorer
        for i in range(2):
            fl.predict("scorer", VIEW, run_id=f"extra{i}")
        files_before = _live_files(fl, "predictions.scorer")
        compaction = fl.maintain("predictions.scorer", compact=True)[0]
        assert compaction.error is None and compaction.compaction is not None
        assert compaction.compaction.snapshot_id is not None, compaction.compaction.notes
        files_after = _live_files(fl, "predictions.scorer")
        assert len(files_after) < len(files_before)
        assert all(p.startswith(f"s3://{s3.bucket}/warehouse/predictions/scorer/") for p in files_after)
        assert {p.split(f"{s3.bucket}/", 1)[1] for p in files_after} <= set(
            s3.objects("warehouse/predictions/")
        )
        assert fl.read("predictions.scorer").num_rows == 3 * scored.rows


def _live_files(fl: featurelake.Featurelake, table: str) -> list[str]:
    return [t.file.file_path for t in fl.project.catalog.load_table(table).scan().plan_files()]
