"""Stream test helpers: a real ``nats-server -js`` on a free loopback port, producers for Redis Streams and
JetStream, the ``featurelake ingest`` CLI as a child process, and the exactly-once check."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import featurelake
from tests.redis_server import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
VIEW = "user_features"
BASE = datetime(2024, 1, 5, tzinfo=UTC)


def need_nats_server() -> str:
    """The nats-server binary; a loud failure (never a skip) naming what installs it when it is missing."""
    if not Path(NATS_SERVER).is_file():
        pytest.fail(
            "nats-server is not installed: `make test` installs it (as root; scripts/setup-system.sh), or run "
            "apt-get install nats-server; to leave these tests out: pytest -m 'not nats'"
        )
    return NATS_SERVER


class NatsServer:
    """One ``nats-server -js`` bound to 127.0.0.1 on its own port, its JetStream store in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [need_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not answer on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session", name="nats_server")
def nats_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


def event(i: int, users: int = 40, **extra: Any) -> dict[str, Any]:
    """Message ``i``: user ``i % users`` at BASE + i seconds, amount i (so each message is its own event)."""
    return {
        "user_id": i % users,
        "event_ts": (BASE + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "txn_count_1d": i % 100,
        "amount_sum_1d": float(i),
        "amount_avg_1d": float(i) / 2,
        **extra,
    }


def xadd(url: str, stream: str, payloads: Sequence[dict[str, Any] | bytes]) -> list[str]:
    """Append each payload (a JSON object, or raw bytes) as the ``data`` field of one entry; returns ids."""
    with redis.Redis.from_url(url) as r:
        pipe = r.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(stream, {"data": p if isinstance(p, bytes) else json.dumps(p)})
        return [i.decode() for i in pipe.execute()]


def js_publish(
    server_url: str, stream: str, subject: str, payloads: Sequence[dict[str, Any] | bytes]
) -> None:
    """Create the JetStream stream ``stream`` (capturing ``<stream>.>``) if needed and publish to ``subject``."""
    import nats
    from nats.js.api import StreamConfig

    async def run() -> None:
        nc = await nats.connect(server_url)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
            for p in payloads:
                await js.publish(subject, p if isinstance(p, bytes) else json.dumps(p).encode())
        finally:
            await nc.close()

    asyncio.run(run())


class IngestProcess:
    """``featurelake ingest`` as a child process; its stderr lines collected as they come."""

    def __init__(self, project: Path, url: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "featurelake", "-C", str(project), "ingest", VIEW, "--from", url, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def batches(self) -> int:
        return sum(1 for line in self.lines if line.startswith("- ") and " messages " in line)

    def wait_for_batches(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.batches() < n:
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)  # the lines it wrote before exiting, all of them
                if self.batches() >= n:
                    return
                raise AssertionError(f"ingest exited with {self.proc.returncode}: {self.lines}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {n} batches within {timeout}s: {self.lines}")
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def wait(self, timeout: float = 180) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)  # stdout holds one summary line; stderr is the reader thread's
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out


def assert_exactly_once(fl: featurelake.Featurelake, produced: Sequence[dict[str, Any]]) -> None:
    """Main holds every produced event exactly once, with its values (first value of a repeated event)."""
    table = fl.read(VIEW).select(["user_id", "event_ts", "amount_sum_1d"]).to_pylist()
    got = Counter((r["user_id"], r["event_ts"]) for r in table)
    repeated = {k: n for k, n in got.items() if n > 1}
    assert not repeated, f"events written more than once: {sorted(repeated)[:5]}"
    want: dict[tuple[int, datetime], float] = {}
    for p in produced:
        key = (p["user_id"], datetime.fromisoformat(p["event_ts"]))
        want.setdefault(key, p["amount_sum_1d"])
    assert {(r["user_id"], r["event_ts"]): r["amount_sum_1d"] for r in table} == want
