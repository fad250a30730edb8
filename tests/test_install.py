"""A core-only install works: a fresh virtualenv, ``pip install <this repo>`` with no extras, then the core CLI
on a small project on the embedded default (SQLite catalog, local warehouse).

Catches a third-party import on a core path that the core dependencies do not declare (numpy was one), and a
core dependency that only the dev install brought in. pip resolves against its index (or its cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import START, day, transactions, write_source

pytestmark = [pytest.mark.install, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
# None of these may come with the core install: they belong to extras, or only to the dev install.
NOT_CORE = ["pandas", "torch", "pyspark", "onnxruntime", "redis", "psycopg", "fastapi", "uvicorn", "sklearn"]


def _run(args: list[str | Path], *, cwd: Path | None = None, timeout: int = 900) -> str:
    # Without the suite's virtualenv on PATH or in VIRTUAL_ENV: the new one stands on its own.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding featurelake without extras, built from a copy of this checkout's sources."""
    root = tmp_path_factory.mktemp("core-install")
    # A copy, so that the build writes nothing (build/, *.egg-info) into the checkout.
    tree = root / "featurelake"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", tree])
    return venv


def test_core_install_has_no_extras(core_venv: Path) -> None:
    code = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    found = _run([core_venv / "bin" / "python", "-c", code, *NOT_CORE])
    assert found.strip() == "[]", f"the core install brought in {found.strip()}"


def test_core_cli_end_to_end(core_venv: Path, tmp_path: Path) -> None:
    fl = core_venv / "bin" / "featurelake"
    assert "backfill" in _run([fl, "--help"])

    _run([fl, "init", "proj"], cwd=tmp_path)
    proj = tmp_path / "proj"
    assert (proj / "featurelake.yaml").is_file() and (proj / "features.py").is_file()
    # The scaffolded view reads data/transactions/*.parquet (user_id, ts, amount): this interpreter writes it.
    source = transactions(days=6, users=20, rows_per_day=100)
    write_source(proj, source)

    def cli(*args: str) -> str:
        return _run([fl, "-C", proj, *args], cwd=proj)  # relative paths: the same either way

    cli("apply")
    cli("backfill", "user_features", "--start", day(0), "--end", day(3), "--run-id", "first")
    cli("backfill", "user_features", "--start", day(3), "--end", day(6), "--run-id", "second")

    history = json.loads(cli("history", "user_features", "--json"))
    assert [h["run_id"] for h in history[:2]] == ["second", "first"]
    assert "user_id" in cli("read", "user_features", "--limit", "3")

    cli("read", "user_features", "--snapshot", str(history[1]["snapshot_id"]), "--output", "first.parquet")
    cli("read", "user_features", "--output", "now.parquet")
    first, now = pq.read_table(proj / "first.parquet"), pq.read_table(proj / "now.parquet")
    days_now = {ts.date() for ts in now["event_ts"].to_pylist()}
    assert len(days_now) == 6 and now.num_rows > first.num_rows > 0
    assert max(first["event_ts"].to_pylist()) < START + timedelta(days=3)

    users = sorted(set(source["user_id"].to_pylist()))[:5]
    entities = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(days=4)] * len(users), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(entities, proj / "entities.parquet")
    cli(
        "training-set",
        "--entities",
        "entities.parquet",
        "--features",
        "user_features:txn_count_1d,user_features:amount_avg_1d",
        "--output",
        "train.parquet",
    )
    train = pq.read_table(proj / "train.parquet")
    assert train.num_rows == len(users)
    assert train.column_names == ["user_id", "event_timestamp", "txn_count_1d", "amount_avg_1d"]
    assert all(n is not None and n > 0 for n in train["txn_count_1d"].to_pylist())

    cli("sync")
    got = json.loads(cli("get", "user_features", str(users[0]), "--json"))
    assert json.dumps(got).count(str(users[0])) >= 1
