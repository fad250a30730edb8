"""Real ``redis-server`` processes for tests, on free loopback ports, stopped by PID.

Import a fixture's function into a test module (``from tests.redis_server import redis_url_fixture``) and
request it by its fixture name:

- ``redis_session``: one server for the whole session (no persistence);
- ``redis_url``: that server's database 0, flushed before the test (``fresh_db`` for other databases);
- ``own_redis``: a server of the test's own, for tests that kill or restart Redis (append-only file in
  the test's tmp dir, so a restart keeps the data like a production Redis would).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def need_redis_server() -> str:
    """The redis-server binary; a loud failure (never a skip) naming what installs it when it is missing."""
    if not Path(REDIS_SERVER).is_file():
        pytest.fail(
            "redis-server is not installed: `make test` installs it (as root; scripts/setup-system.sh), or run "
            "apt-get install redis-server; to leave these tests out: pytest -m 'not redis'"
        )
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process bound to 127.0.0.1 on its own port."""

    def __init__(self, workdir: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            need_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except redis.exceptions.RedisError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing is flushed beyond what the append-only file already holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()


_shared: list[RedisServer] = []


@pytest.fixture(scope="session", name="redis_session")
def redis_session_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # Each module importing this fixture gets its own session-scoped instance: share one process.
    if not _shared:
        _shared.append(RedisServer(tmp_path_factory.mktemp("redis")).start())
    try:
        yield _shared[0]
    finally:
        _shared[0].kill()  # every instance ends with the session; kill is idempotent


def fresh_db(server: RedisServer, db: int) -> str:
    """URL of database ``db`` of ``server``, emptied. Module-scoped fixtures use db 1, 2, ... so that the
    per-test ``redis_url`` (db 0) never wipes them."""
    with redis.Redis(host="127.0.0.1", port=server.port, db=db) as c:
        c.flushdb()
    return f"redis://127.0.0.1:{server.port}/{db}"


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_session: RedisServer) -> str:
    return fresh_db(redis_session, 0)


@pytest.fixture(name="own_redis")
def own_redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-own", appendonly=True).start()
    try:
        yield server
    finally:
        server.kill()
