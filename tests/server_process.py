"""A real ``featurelake serve`` process on a free loopback port, for tests of socket-level behaviour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]


def server_env(**extra: str) -> dict[str, str]:
    """This environment without any FEATURELAKE_* setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURELAKE_")}
    env["FEATURELAKE_PIPELINE_USER"] = "test-user"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class ServeProcess:
    """``featurelake -C root serve --port <free> ARGS`` with its output in ``log``; a context manager."""

    def __init__(self, root: Path, log: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "featurelake",
                    "-C",
                    str(root),
                    "serve",
                    "--port",
                    str(self.port),
                    *args,
                ],
                env=server_env(**env),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Until ``/healthz`` answers 200 (a hang guard: starting is slow on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"featurelake serve exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"featurelake serve did not become healthy:\n{self.output()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after 60 s); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
