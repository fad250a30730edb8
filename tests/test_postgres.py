"""The same WAP guarantees with the catalog on a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import featurelake
from featurelake.errors import AuditFailed
from featurelake.lakehouse import wap
from tests.helpers import START, day, make_project, transactions, write_source

pytestmark = pytest.mark.postgres


def pg_project(root: Path, url: str) -> Path:
    return make_project(root, config=f"project: pg\nnamespace: features\ncatalog:\n  uri: {url}\n")


def test_wap_cycle_on_postgres(tmp_path: Path, pg_url: str) -> None:
    proj = pg_project(tmp_path / "pg", pg_url)
    with featurelake.open(proj) as fl:
        fl.apply()
        first = fl.backfill("user_features", day(0), day(5), run_id="pg1")
        rows = fl.read("user_features").num_rows
        write_source(
            proj, transactions(days=2, start=START + timedelta(days=20), null_share=0.6), name="bad.parquet"
        )
        with pytest.raises(AuditFailed):
            fl.backfill("user_features", day(20), day(22), run_id="pg2")
        tbl = fl.project.load_table("user_features")
        assert wap.main_snapshot_id(tbl) == first.snapshot_id
        assert fl.read("user_features").num_rows == rows == first.rows
        assert fl.read("user_features", snapshot_id=first.snapshot_id).num_rows == rows
        assert next(h.run_id for h in fl.history("user_features")) == "pg1"
    # The catalog really lives in PostgreSQL: its iceberg_tables row points at the table's metadata.
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        names = conn.execute(text("SELECT table_namespace, table_name FROM iceberg_tables")).fetchall()
    engine.dispose()
    assert ("features", "user_features") in [tuple(r) for r in names]


@pytest.mark.slow
def test_concurrent_backfills_on_postgres(tmp_path: Path, pg_url: str) -> None:
    proj = pg_project(tmp_path / "pgc", pg_url)
    with featurelake.open(proj) as fl:
        fl.apply()
    windows = [(day(0), day(5)), (day(5), day(10))]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "featurelake",
                "-C",
                str(proj),
                "backfill",
                "user_features",
                "--start",
                s,
                "--end",
                e,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s, e in windows
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    total = sum(json.loads(out)["rows"] for out, _ in outs)
    with featurelake.open(proj) as fl:
        data = fl.read("user_features")
    assert data.num_rows == total
    assert {d.date().isoformat() for d in data.column("event_ts").to_pylist()} == {day(i) for i in range(10)}
