"""``featurelake serve --workers 2`` as a real process: both workers answer from the same data, ``/metrics``
sums them (also across a worker that died and was replaced), the local metrics state gets every worker's
counts, and a SIGTERM shuts everything down cleanly.

Which worker answered a connection is read from /proc: the worker process holding the server side of the
client's socket (Linux only, like the rest of these tests' process handling).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest

import featurelake
from featurelake.monitoring.recorder import state_of
from tests.online_helpers import append, project
from tests.server_process import ServeProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the process table from /proc"),
]

LOOKUP = {
    "features": ["user_features:amount_avg_1d", "user_features:txn_count_1d"],
    "entities": {"user_id": [1, 2, 3]},
}
HANG_GUARD = 120.0


def workers_of(parent: int) -> set[int]:
    """The uvicorn worker processes of ``parent`` (not multiprocessing's resource tracker)."""
    out = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                out.add(int(child))
    return out


def serving_pid(server_port: int, client_port: int, pids: set[int]) -> int:
    """The process among ``pids`` that holds the server end of the connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
        if local == server_port and remote == client_port:
            inode = fields[9]
    assert inode is not None, f"no server socket for client port {client_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def lookup_on_new_connection(port: int, pids: set[int] | None = None) -> tuple[int | None, dict[str, object]]:
    """One lookup on a fresh connection: (the worker among ``pids`` that answered it, the response body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/get-online-features", json.dumps(LOOKUP), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        assert conn.sock is not None
        pid = serving_pid(port, conn.sock.getsockname()[1], pids) if pids else None  # still connected
        return pid, json.loads(body)
    finally:
        conn.close()


def requests_counted(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    m = re.search(
        r'^featurelake_http_requests_total\{endpoint="/get-online-features",status="200"\} (\S+)$', text, re.M
    )
    h = re.search(
        r'^featurelake_prediction_latency_seconds_count\{endpoint="/get-online-features"\} (\S+)$', text, re.M
    )
    assert m and h, text
    assert float(m.group(1)) == float(h.group(1)), text  # counter and histogram agree
    return float(m.group(1))


def flushed(root: Path) -> float:
    """Lookups the workers have flushed into the project's local metrics state (summed by the state)."""
    with featurelake.open(root) as fl:
        for row in state_of(fl.project).latest():
            if row.sample == "featurelake_prediction_latency_seconds_count" and dict(row.labels) == {
                "endpoint": "/get-online-features"
            }:
                return row.value
    return 0.0


def wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.2)


def test_two_workers_share_the_data_sum_their_metrics_and_stop_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    fl = project(root, "sqlite")
    try:
        now = datetime.now(UTC)
        append(fl, [(1, now - timedelta(hours=1), 10.5), (2, now - timedelta(hours=2), 20.0)])
        fl.sync()
        expected = fl.online.get_online_features(LOOKUP["features"], LOOKUP["entities"])  # type: ignore[arg-type]
    finally:
        fl.close()
    tmpdir = tmp_path / "tmpdir"  # where the server keeps the workers' metric files
    tmpdir.mkdir()
    srv = ServeProcess(
        root, tmp_path / "server.log", "--workers", "2",
        TMPDIR=str(tmpdir), FEATURELAKE_MONITORING__FLUSH_INTERVAL_SECONDS="0.2",
    )  # fmt: skip
    try:
        srv.wait_healthy()
        wait_for("two workers", lambda: len(workers_of(srv.proc.pid)) == 2)
        pids = workers_of(srv.proc.pid)

        # Both workers answer, with the same data: new connections until each has served at least one.
        answered: dict[int, list[dict[str, object]]] = {pid: [] for pid in pids}
        sent = 0
        while not all(answered.values()):
            assert sent < 500, f"one worker never answered: {[(p, len(b)) for p, b in answered.items()]}"
            pid, body = lookup_on_new_connection(srv.port, pids)
            sent += 1
            answered[pid or 0].append(body)
        bodies = [b for served in answered.values() for b in served]
        assert all(b == expected for b in bodies), (expected, bodies[:2])

        # /metrics, whichever worker answers it, counts every worker's requests.
        counts = {requests_counted(srv.base) for _ in range(6)}
        assert counts == {float(sent)}, counts
        wait_for("the workers' periodic flushes", lambda: flushed(root) == sent)

        # A worker that dies is replaced; what it counted stays in the sums.
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        wait_for("a replacement worker", lambda: len(workers_of(srv.proc.pid) - {victim}) == 2)
        (new,) = workers_of(srv.proc.pid) - pids
        wait_for(
            "the replacement to start serving",
            lambda: (
                f"Started server process [{new}]" in srv.output()
                and srv.output().count("Application startup complete.") == 3
            ),
        )
        every = pids | {new}
        more = 20
        for _ in range(more):
            lookup_on_new_connection(srv.port)
        assert requests_counted(srv.base) == sent + more

        assert srv.stop() == 0
        assert not [p for p in every if Path(f"/proc/{p}").exists()]  # no worker outlives the server
        out = srv.output()
        assert out.count("Finished server process") == 2, out  # the surviving worker's and the replacement's
        assert "Traceback" not in out, out
        assert list(tmpdir.iterdir()) == []  # the metric files went with the server
        assert (
            flushed(root) == sent + more
        )  # each worker's last flush on its way out (the dead one's earlier)
    finally:
        srv.stop()
