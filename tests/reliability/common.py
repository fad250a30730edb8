"""Helpers shared by the reliability suites: run the real CLI, read main's state, wait for a phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import featurelake
from featurelake.lakehouse import wap
from tests.helpers import day, make_project

VIEW = "user_features"
REPO = Path(__file__).resolve().parents[2]
State = tuple[int | None, list[dict[str, Any]]]


def env(**extra: str) -> dict[str, str]:
    """The child's environment: this one (the test's FEATURELAKE_* cleanup included) plus ``extra``."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def cli(root: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m featurelake -C root ARGS`` to completion (a hang is a failure, not a wait)."""
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env(**extra_env),
        cwd=REPO,
    )


def state(root: Path, view: str = VIEW) -> State:
    """Main's snapshot id and its rows (sorted), read through a fresh handle."""
    with featurelake.open(root) as h:
        sid = wap.main_snapshot_id(h.project.load_table(view))
        rows = h.read(view).to_pylist()
    return sid, sorted(rows, key=lambda r: (r["user_id"], r["event_ts"]))


def published_project(root: Path, config: str | None = None) -> Path:
    """A project applied and with days 0..4 published by run ``base``."""
    make_project(root, config=config)
    with featurelake.open(root) as h:
        h.apply()
        h.backfill(VIEW, day(0), day(5), run_id="base")
    return root


def history_all(root: Path) -> list[dict[str, Any]]:
    r = cli(root, "history", VIEW, "--all", "--json")
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def wait_for_line(stream: IO[str], needle: str) -> list[str]:
    """Read ``stream`` until a line containing ``needle``; fail if the process ends first."""
    seen: list[str] = []
    while True:
        line = stream.readline()
        if not line:
            raise AssertionError(f"process ended before {needle!r}; its stderr:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return seen
