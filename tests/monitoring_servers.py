"""Real servers for the monitoring tests: Debian's Pushgateway and Prometheus on free loopback ports, and a
local HTTP server standing in for a Slack incoming webhook. Each is stopped by its own PID / handle."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The Debian package and the pytest marker of each program the monitoring tests run.
PACKAGES = {
    "promtool": ("prometheus", "promtool"),
    "prometheus": ("prometheus", "prometheus"),
    "prometheus-pushgateway": ("prometheus-pushgateway", "pushgateway"),
}


def need(binary: str) -> str:
    """The program's path; a loud failure (never a skip) naming what installs it when it is missing."""
    path = shutil.which(binary)
    if path is None:
        package, marker = PACKAGES[binary]
        pytest.fail(
            f"{binary} is not installed: `make test` installs it (as root; scripts/setup-system.sh), or run "
            f"apt-get install {package}; to leave these tests out: pytest -m 'not {marker}'"
        )
    return path


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, attempts: int = 300) -> None:
    for _ in range(attempts):
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            exc.close()  # not ready yet (Prometheus answers 503 while it starts)
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} did not come up: {log.read_text()[-2000:]}")


@contextmanager
def _process(args: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def pushgateway(tmp: Path) -> Iterator[str]:
    """A real ``prometheus-pushgateway`` on a free loopback port; yields its URL."""
    port = free_port()
    args = [need("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"]
    with _process(args, f"http://127.0.0.1:{port}/-/ready", tmp / "pushgateway.log"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def prometheus(tmp: Path, config: dict[str, Any]) -> Iterator[str]:
    """A real Prometheus server with ``config`` (a prometheus.yml document); yields its URL."""
    import yaml

    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    args = [
        need("prometheus"),
        f"--config.file={cfg}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with _process(args, f"http://127.0.0.1:{port}/-/ready", tmp / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def wait_for(predicate: Any, what: str, attempts: int = 400, delay: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded by attempts, not wall time)."""
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        time.sleep(delay)
    pytest.fail(f"gave up waiting for {what}")


@dataclass
class Webhook:
    """What the fake Slack received, and how it answers."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    attempts: int = 0
    #: statuses to answer with, in order; when exhausted, 200
    script: list[int] = field(default_factory=list)
    #: seconds to stall before answering each request (to provoke client timeouts)
    stall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def webhook_server() -> Iterator[Webhook]:
    """A local HTTP server recording JSON POSTs, as a Slack incoming webhook would receive them."""
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                hook.attempts += 1
                status = hook.script.pop(0) if hook.script else 200
                if status == 200:
                    hook.raw.append(body)
                    hook.bodies.append(json.loads(body))
            if hook.stall:
                time.sleep(hook.stall)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"error")
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXXSECRETXXXX"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
