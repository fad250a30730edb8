"""`featurelake read` / `fl.read` / `history` read every table featurelake writes, with the same time travel.

Feature views by their bare name (as before), and as ``namespace.table``: ``predictions.<model>``,
``<namespace>._audits``, ``<namespace>._stats``. An unknown table is a usage error that names what can be
read and lists nothing from the catalog.
"""

from __future__ import annotations

import json
import pickle
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import featurelake
from featurelake.cli.main import cli
from featurelake.errors import AuditFailed, UsageError
from tests.helpers import START, day, make_project, transactions
from tests.online_helpers import LinearModel

SIGNATURE = [
    {"name": "amount_avg_1d", "type": "double", "feature": "user_features:amount_avg_1d"},
    {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two published backfills, one refused one, and two prediction runs of `churn`."""
    root = tmp_path_factory.mktemp("read") / "p"
    make_project(root, data=transactions(days=10))
    broken = transactions(days=2, start=START + timedelta(days=10), null_share=0.9, seed=3)
    pq.write_table(broken, root / "data" / "transactions" / "part-broken.parquet")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(5), run_id="first")
        fl.backfill("user_features", day(5), day(10), run_id="second")
        with pytest.raises(AuditFailed):
            fl.backfill("user_features", day(10), day(12), run_id="broken")
        art = root / "model.pkl"
        art.write_bytes(pickle.dumps(LinearModel([1.0, 0.5])))
        mv = fl.models.register("churn", art, "pickle", signature=SIGNATURE)
        fl.models.promote("churn", mv.version, "Staging")
        fl.models.promote("churn", mv.version, "Production")
        fl.predict("churn", "user_features", run_id="p1", start=day(0), end=day(5))
        fl.predict("churn", "user_features", run_id="p2", start=day(5), end=day(10))
    return root


def test_read_predictions_with_time_travel(project: Path) -> None:
    with featurelake.open(project) as fl:
        now = fl.read("predictions.churn")
        assert set(now["run_id"].to_pylist()) == {"p1", "p2"}
        history = fl.history("predictions.churn")
        assert history[0].run_id == "p2" and {"p1", "p2"} <= {h.run_id for h in history}
        first = next(h for h in history if h.run_id == "p1")
        at_first = fl.read("predictions.churn", snapshot_id=first.snapshot_id)
        assert set(at_first["run_id"].to_pylist()) == {"p1"}
        assert at_first.num_rows == now.num_rows - now.filter(pa.compute.equal(now["run_id"], "p2")).num_rows
        as_of = fl.read("predictions.churn", as_of=first.published_at or first.committed_at)
        assert as_of.equals(at_first)


def test_read_audit_and_stats_logs(project: Path) -> None:
    with featurelake.open(project) as fl:
        audits = fl.read("features._audits").to_pylist()
        runs = {r["run_id"] for r in audits}
        assert {"first", "second", "broken"} <= runs  # the refused run is in the log too
        stats = fl.read("features._stats")
        assert stats.num_rows > 0
        assert fl.history("features._audits")  # its snapshots, like any table's
        # The feature view still reads by its bare name, and by its full name.
        assert fl.read("user_features").equals(fl.read("features.user_features"))


def test_cli_read_and_history_of_a_prediction_table(project: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    hist = runner.invoke(cli, ["-C", str(project), "history", "predictions.churn", "--json"])
    assert hist.exit_code == 0, hist.output
    snapshots = json.loads(hist.output)
    p1 = next(s for s in snapshots if s["run_id"] == "p1")
    snap = runner.invoke(
        cli, ["-C", str(project), "read", "predictions.churn", "--snapshot", str(p1["snapshot_id"]), "--json"]
    )
    assert snap.exit_code == 0, snap.output
    assert {r["run_id"] for r in json.loads(snap.output)} == {"p1"}
    out = tmp_path / "preds.parquet"
    wrote = runner.invoke(cli, ["-C", str(project), "read", "predictions.churn", "--output", str(out)])
    assert wrote.exit_code == 0, wrote.output
    assert set(pq.read_table(out)["run_id"].to_pylist()) == {"p1", "p2"}


def test_unknown_tables_are_clear_and_list_nothing_from_the_catalog(project: Path) -> None:
    with featurelake.open(project) as fl:
        # Some table the project did not write, e.g. another team's, in the same catalog.
        fl.project.catalog.create_namespace_if_not_exists("payroll")
        fl.project.catalog.create_table_if_not_exists(
            "payroll.salaries", schema=pa.schema([("employee", pa.string())])
        )
        before = fl.history("user_features")
        for name in ("predictions.nope", "payroll.nope", "nope.nope"):
            with pytest.raises(UsageError) as ei:
                fl.read(name)
            msg = str(ei.value)
            assert f"there is no table {name}" in msg
            assert "predictions.<model>" in msg and "features._audits" in msg
            assert "salaries" not in msg and "churn" not in msg and "catalog.db" not in msg
        for bad in ("predictions.churn; DROP TABLE x", "a.b.c", "predictions.", ".x", "p.\x00"):
            with pytest.raises(UsageError, match="is not a table name"):
                fl.read(bad)
        with pytest.raises(
            UsageError, match=r"unknown feature view 'nope': features\.py defines user_features"
        ):
            fl.read("nope")
        assert fl.history("user_features") == before
