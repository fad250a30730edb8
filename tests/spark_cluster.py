"""A real Spark standalone cluster for tests: a master and N workers, each its own process on 127.0.0.1.

Each worker runs with its own ``SPARK_WORKER_DIR`` and working directory under ``workdir`` and, through
``unshare --mount``, in a mount namespace where every path in ``hidden`` is an empty tmpfs: the worker and the
executors it starts cannot see the project directory at all (a task reading it would fail, not succeed
quietly). Needs root (or CAP_SYS_ADMIN) for ``unshare``, as ``make test`` runs on these machines.

Stopped by process id (the workers' process groups), never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.spark_support import free_port

HIDE_SCRIPT = 'for d in "$@"; do mount -t tmpfs -o size=1m featurelake-hidden "$d" || exit 97; done; exec "$SPARK_CLASS" "$SPARK_MAIN" $SPARK_ARGS'


class Cluster:
    """``spark-class ...Master`` and ``workers`` ``...Worker`` processes (1 core, ``memory`` each)."""

    def __init__(
        self, workdir: Path, *, workers: int = 2, memory: str = "512m", hidden: tuple[Path, ...] = ()
    ) -> None:
        import pyspark

        self.home = Path(pyspark.__file__).parent
        self.workdir = workdir
        self.count = workers
        self.memory = memory
        self.hidden = hidden
        self.port, self.web = free_port(), free_port()
        self.worker_webs = [free_port() for _ in range(workers)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def worker_dir(self, i: int) -> Path:
        return self.workdir / f"worker{i}"

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "SPARK_HOME": str(self.home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_DAEMON_MEMORY": "256m",
            **(extra or {}),
        }

    def _spawn(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def start(self) -> Cluster:
        unshare = shutil.which("unshare") or ""
        if self.hidden and not unshare:
            raise RuntimeError(
                "the cluster test needs `unshare` (util-linux) to hide the project from the workers"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        spark_class = str(self.home / "bin" / "spark-class")
        master_log = self.workdir / "master.log"
        master = self._spawn(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port),
             "--webui-port", str(self.web)],
            self.workdir, self._env(), master_log,
        )  # fmt: skip
        self._wait(lambda: self.master_state() is not None, master, master_log, "Spark master")
        for i in range(self.count):
            wdir = self.worker_dir(i)
            (wdir / "work").mkdir(parents=True, exist_ok=True)
            args = ["--host", "127.0.0.1", "--cores", "1", "--memory", self.memory, "--webui-port",
                    str(self.worker_webs[i]), "--work-dir", str(wdir / "work"), self.master_url]  # fmt: skip
            env = self._env({"SPARK_WORKER_DIR": str(wdir / "work")})
            if self.hidden:
                env.update(
                    {
                        "SPARK_CLASS": spark_class,
                        "SPARK_MAIN": "org.apache.spark.deploy.worker.Worker",
                        "SPARK_ARGS": " ".join(args),
                    }
                )
                argv = [unshare, "--mount", "--propagation", "private", "sh", "-c", HIDE_SCRIPT, "hide",
                        *map(str, self.hidden)]  # fmt: skip
            else:
                argv = [spark_class, "org.apache.spark.deploy.worker.Worker", *args]
            self._spawn(argv, wdir, env, wdir / "worker.log")
        master_proc = master
        self._wait(
            lambda: len([w for w in (self.master_state() or {}).get("workers", []) if w["state"] == "ALIVE"]) == self.count,
            master_proc, master_log, f"{self.count} Spark workers",
        )  # fmt: skip
        return self

    def _wait(self, ready: Any, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
        deadline = time.monotonic() + 120
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in self.workdir.rglob("*.log"))
                self.stop()
                raise RuntimeError(f"{what} did not start: {logs}")
            time.sleep(0.2)

    def master_state(self) -> dict[str, Any] | None:
        """The master's JSON status (workers, applications), or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/json", timeout=2) as answer:
                state: dict[str, Any] = json.load(answer)
                return state
        except OSError:
            return None

    def worker_state(self, i: int) -> dict[str, Any]:
        """Worker ``i``'s JSON status: its running and finished executors."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.worker_webs[i]}/json", timeout=5) as answer:
            state: dict[str, Any] = json.load(answer)
            return state

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
