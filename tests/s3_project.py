"""Projects whose warehouse, sources, artifacts and outputs live in a moto S3 bucket (tests/s3_servers.py),
on the SQL catalog or on the REST catalog adapter (tests/rest_catalog.py)."""

from __future__ import annotations

import io
import subprocess
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers import DEFAULT_FEATURES, START, make_project, transactions
from tests.s3_servers import S3Bucket


def upload_hive_source(s3: S3Bucket, table: pa.Table, prefix: str = "raw/transactions") -> None:
    """``table`` as one Parquet object per day under ``<prefix>/dt=YYYY-MM-DD/`` (hive-style)."""
    days = pc.strftime(table["ts"], format="%Y-%m-%d")
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pc.equal(days, day))
        buf = io.BytesIO()
        pq.write_table(part, buf)
        s3.put(f"{prefix}/dt={day}/part-0.parquet", buf.getvalue())


def corrupt_days(first_day: int, days: int = 2) -> pa.Table:
    """Transactions of ``days`` days from day ``first_day`` where most users' amounts are null."""
    return transactions(days=days, start=START + timedelta(days=first_day), seed=9, null_share=0.8)


def s3_project(
    root: Path,
    s3: S3Bucket,
    *,
    endpoint: str | None = None,
    catalog: str = "",
    extra: str = "",
    data: pa.Table | None = None,
) -> Path:
    """A project on ``s3``'s bucket: the source a hive-style directory of Parquet objects, the warehouse under
    ``warehouse/``, artifacts under ``artifacts/``. ``endpoint`` overrides moto's (a proxy in front of it);
    ``catalog`` holds extra ``catalog:`` keys (indented two spaces)."""
    endpoint = endpoint or s3.endpoint
    features = DEFAULT_FEATURES.replace(
        '"data/transactions/*.parquet"', f'"s3://{s3.bucket}/raw/transactions/"'
    ).replace("ttl=timedelta(days=7)", "ttl=None")  # the data is from 2024: served rows must not be stale
    config = (
        "project: s3test\nnamespace: features\n"
        f"catalog:\n  warehouse: s3a://{s3.bucket}/warehouse\n  retries: 1\n{catalog}"
        f"storage:\n  s3: {{endpoint: '{endpoint}', region: us-east-1, path_style: true}}\n"
        f"registry:\n  artifacts: s3://{s3.bucket}/artifacts\n{extra}"
    )
    make_project(root, features=features, config=config, data=transactions().slice(0, 0))
    upload_hive_source(s3, data if data is not None else transactions())
    return root


def cli_here(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``featurelake -C root ARGS`` in this process: exit code, stdout, stderr."""
    from featurelake.cli.main import main

    capsys.readouterr()
    try:
        main(["-C", str(root), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def sorted_rows(table: pa.Table) -> list[dict[str, object]]:
    keys = [(c, "ascending") for c in ("event_ts", "user_id")]
    return table.select(sorted(table.column_names)).sort_by(keys).to_pylist()
