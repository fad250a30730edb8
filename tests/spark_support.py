"""Spark for tests: one local[2] SparkContext per test session, engine-parametrized projects, a real
standalone master + worker on 127.0.0.1 for the cluster test.

Registered as a pytest plugin from conftest.py, so every module can ask for the ``spark`` fixture.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.helpers import START, make_project

ENGINES = ["local", pytest.param("spark", marks=pytest.mark.spark)]
# Tests run many tiny jobs: the C1 JIT and the serial GC warm up in a third of the time (peak speed is
# irrelevant here) and two shuffle partitions match local[2].
TEST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
TEST_CONF = {"spark.driver.extraJavaOptions": TEST_JVM, "spark.sql.shuffle.partitions": "2"}


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The process's SparkContext in local[2], started once and stopped at the end of the session."""
    from featurelake.config import SparkConfig
    from featurelake.engines.spark import spark_session, stop_spark

    session = spark_session(SparkConfig(master="local[2]", conf=TEST_CONF))
    yield session
    stop_spark()


def engine_config(engine: str, *, namespace: str = "features", extra: str = "") -> str:
    """featurelake.yaml text for a test project on ``engine`` (Spark in local[2])."""
    text = f"project: test\nnamespace: {namespace}\nengine:\n  type: {engine}\n"
    if engine == "spark":
        text += '  spark:\n    master: "local[2]"\n'
    return text + extra


def engine_project(root: Path, engine: str, **kwargs: Any) -> Path:
    """``make_project`` with ``engine.type`` set."""
    return make_project(root, config=engine_config(engine), **kwargs)


def expected_features(source: pa.Table, start: int, end: int) -> list[dict[str, Any]]:
    """The default user_features for days [start, end) after helpers.START, computed without any engine."""
    lo, hi = START + timedelta(days=start), START + timedelta(days=end)
    groups: dict[tuple[Any, datetime], list[float | None]] = defaultdict(list)
    for r in source.to_pylist():
        if lo <= r["ts"] < hi:
            day_start = r["ts"].replace(hour=0, minute=0, second=0, microsecond=0)
            groups[(r["user_id"], day_start)].append(r["amount"])
    rows = []
    for (uid, ts), amounts in groups.items():
        present = [a for a in amounts if a is not None]
        rows.append(
            {
                "amount_avg_1d": sum(present) / len(present) if present else None,
                "amount_sum_1d": sum(present) if present else None,
                "event_ts": ts.astimezone(UTC),
                "txn_count_1d": len(amounts),
                "user_id": uid,
            }
        )
    return sorted(rows, key=lambda r: (r["user_id"], r["event_ts"]))


def sorted_rows(table: pa.Table, keys: tuple[str, ...] = ("user_id", "event_ts")) -> list[dict[str, Any]]:
    return table.select(sorted(table.column_names)).sort_by([(k, "ascending") for k in keys]).to_pylist()


def assert_rows_close(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Row lists equal, floats within 1e-9 relative (engines may sum in a different order)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float) and isinstance(g[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-9), (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


# --- a real standalone cluster --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port}: {log.read_text()[-2000:]}")


class StandaloneCluster:
    """``spark-class ...Master`` and one ``...Worker`` (1 core, 1 GiB) on 127.0.0.1, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        import pyspark

        self.home = Path(pyspark.__file__).parent
        self.workdir = workdir
        self.port, self.web, self.worker_web = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, cls: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "SPARK_HOME": str(self.home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_WORKER_DIR": str(self.workdir / "work"),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(self.home / "bin" / "spark-class"), cls, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self) -> StandaloneCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        master_log = self.workdir / "master.log"
        master = self._start(
            "org.apache.spark.deploy.master.Master",
            ["--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.web)],
            master_log,
        )
        _wait_for(self.port, master, master_log, "Spark master")
        worker_log = self.workdir / "worker.log"
        worker = self._start(
            "org.apache.spark.deploy.worker.Worker",
            [
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(self.worker_web),
                self.master_url,
            ],
            worker_log,
        )
        for _ in range(600):
            if "Successfully registered with master" in worker_log.read_text(errors="replace"):
                return self
            if worker.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Spark worker did not register: {worker_log.read_text()[-2000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
