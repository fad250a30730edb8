"""Faults during ``featurelake sync``: redis-server SIGKILLed and restarted empty, the sync process SIGKILLed.

Every sync here is a real ``python -m featurelake sync`` process. A small wrapper (``RUNNER``) runs the real
CLI and, after the N-th chunk write to the online store, prints ``PAUSED`` and waits for a line on stdin, so
each fault lands mid-write: some keys of the batch are in the store, the watermark is not. After the fault
the next sync runs, and the store must equal a **fresh full sync into a second, clean store**: every key,
every value, every event time (compared record by record, read straight from both stores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import featurelake
from tests.online_helpers import VIEW, append, d, project
from tests.redis_server import RedisServer
from tests.reliability.common import REPO, cli, env, wait_for_line

pytestmark = [pytest.mark.reliability]

CHUNK = "40"  # keys per store write: the 600-key batches below take 15 writes
USERS = 600

RUNNER = """
import sys
from featurelake.serving.redis import RedisStore
from featurelake.serving.sqlite import SqliteStore

pause_after, args = int(sys.argv[1]), sys.argv[2:]
writes = 0
for cls in (RedisStore, SqliteStore):
    def wrapped(self, view, records, *, force=False, _orig=cls.write):
        global writes
        out = _orig(self, view, records, force=force)
        writes += 1
        if writes == pause_after:
            sys.stderr.write("PAUSED after write %d\\n" % writes)
            sys.stderr.flush()
            sys.stdin.readline()  # the test injects its fault, then says go (or SIGKILLs us)
        return out
    cls.write = wrapped

from featurelake.cli.main import main
sys.argv = ["featurelake", *args]
main()
"""

Dump = tuple[dict[str, tuple[int, Any]], int | None]


def dump(root: Path, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Dump:
    """Every record of the view in the store (``overrides`` pick another store): key -> (event µs, values),
    and the watermark's snapshot."""
    with monkeypatch.context() as m:
        for k, v in overrides.items():
            m.setenv(k, v)
        with featurelake.open(root) as h:
            store = h.online.store
            keys = sorted(store.keys(VIEW))
            got = store.read([(VIEW, keys)])[0]
            wm = store.get_watermark(VIEW)
    out: dict[str, tuple[int, Any]] = {}
    for k, hit in zip(keys, got, strict=True):
        assert hit is not None, f"key {k} listed but not readable"
        out[k] = (hit[0], json.loads(hit[1]))
    return out, wm.snapshot_id if wm else None


def reference(root: Path, monkeypatch: pytest.MonkeyPatch, **store: str) -> Dump:
    """A fresh full sync of main into the clean store ``store`` (env overrides), read back."""
    r = cli(root, "sync", "--json", **store)
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    assert (res["mode"], res["reason"]) == ("full", "first sync")
    return dump(root, monkeypatch, **store)


def start_paused_sync(root: Path, pause_after: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(pause_after), "-C", str(root), "sync", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(FEATURELAKE_ONLINE_STORE__WRITE_CHUNK=CHUNK),
        cwd=REPO,
    )
    assert proc.stderr is not None
    wait_for_line(proc.stderr, "PAUSED")
    return proc


def seed(root: Path) -> None:
    """Two snapshots on main: day 1 for every user (synced first), then day 2 for every user plus new
    users and an older day arriving late, so the second sync is a 600+-key incremental batch."""
    with featurelake.open(root) as h:
        append(h, [(u, d(1), u) for u in range(1, USERS + 1)])
    r = cli(root, "sync", "--json")
    assert r.returncode == 0, r.stderr
    with featurelake.open(root) as h:
        append(h, [(u, d(2, u % 24), 1000 + u) for u in range(1, USERS + 1)])
        append(h, [(u, d(1, 12), 5 + u) for u in range(USERS - 50, USERS + 60)])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own with no persistence at all: a restart comes back empty."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.kill()


def redis_project(tmp_path: Path, server: RedisServer) -> Path:
    root = tmp_path / "proj"
    project(root, "redis", server.url).close()
    return root


@pytest.mark.redis
def test_redis_killed_mid_sync_and_restarted_empty_then_next_sync_resyncs_fully(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = redis_project(tmp_path, redis_server)
    seed(root)
    proc = start_paused_sync(root, pause_after=5)
    redis_server.kill()  # SIGKILL while the sync holds a half-written batch
    _, err = proc.communicate("go\n", timeout=120)
    # The sync finds Redis gone on its next write: a clear failure, not a hang or a traceback.
    assert proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.strip() and "PAUSED" not in ln]
    assert lines and lines[-1].startswith("error:") and redis_server.url.split("//")[1] in err, err
    assert "Traceback" not in err

    redis_server.start()  # same port, nothing on disk: the store is empty
    assert dump(root, monkeypatch) == ({}, None)
    r = cli(root, "sync", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    assert (res["mode"], res["reason"]) == ("full", "first sync")  # the lost watermark was detected

    ref = reference(root, monkeypatch, FEATURELAKE_ONLINE_STORE__URL=redis_server.url[:-1] + "1")
    got = dump(root, monkeypatch)
    assert len(got[0]) == USERS + 59
    assert got == ref


@pytest.mark.redis
def test_redis_bounced_mid_sync_while_the_sync_keeps_going_loses_nothing(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies and is back (empty) before the sync's next write: the sync must not record a watermark
    over a store that lost the first half of the batch, or the next sync must notice and resync."""
    root = redis_project(tmp_path, redis_server)
    seed(root)
    proc = start_paused_sync(root, pause_after=5)
    redis_server.restart()  # SIGKILL and start again on the same port, empty
    _, err = proc.communicate("go\n", timeout=120)
    # The interrupted sync notices the restart and refuses to record a watermark over a store that lost keys.
    assert proc.returncode == 1 and "restarted while" in err, err

    r = cli(root, "sync", "--json")
    assert r.returncode == 0, r.stderr
    ref = reference(root, monkeypatch, FEATURELAKE_ONLINE_STORE__URL=redis_server.url[:-1] + "1")
    got = dump(root, monkeypatch)
    missing = sorted(set(ref[0]) - set(got[0]), key=int)
    assert not missing, f"{len(missing)} keys lost after a Redis restart mid-sync, e.g. {missing[:5]}"
    assert got == ref


@pytest.mark.redis  # both cases start the redis_server fixture
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sync_process_sigkilled_mid_write_then_next_sync_equals_a_fresh_full_sync(
    backend: str, tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "proj"
    project(root, backend, redis_server.url if backend == "redis" else None).close()
    seed(root)
    _, first_wm = dump(root, monkeypatch)
    proc = start_paused_sync(root, pause_after=7)
    proc.kill()  # SIGKILL mid-write
    proc.communicate(timeout=60)
    assert proc.returncode == -9

    partial, wm = dump(root, monkeypatch)
    assert wm == first_wm  # the watermark did not move past a batch that was not complete
    assert any(v[1]["amount_avg_1d"] >= 1000 for v in partial.values())  # part of the batch was written

    r = cli(root, "sync", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    assert res["mode"] == "incremental" and res["from_snapshot"] == first_wm  # redone from the watermark

    other = (
        {"FEATURELAKE_ONLINE_STORE__URL": redis_server.url[:-1] + "1"}
        if backend == "redis"
        else {"FEATURELAKE_ONLINE_STORE__PATH": str(tmp_path / "reference-online.db")}
    )
    ref = reference(root, monkeypatch, **other)
    got = dump(root, monkeypatch)
    assert len(got[0]) == USERS + 59
    assert got == ref
