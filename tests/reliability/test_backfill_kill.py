"""SIGKILL a real ``featurelake backfill`` process in each phase: main is never partial, nothing is lost.

Each kill lands exactly in its phase (tests/reliability/crash_runner.py freezes the real CLI there); a
second test kills at random moments of an unmodified run. After every kill: main is the old snapshot with
the old rows, or (only once main was moved) the fully published one; the orphan is visible and cleanable
with ``featurelake discard``; a re-run of the same window succeeds and gives the rows a run without any
crash gives.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featurelake
from featurelake.errors import UsageError
from tests.helpers import day
from tests.reliability.common import (
    REPO,
    VIEW,
    State,
    cli,
    env,
    published_project,
    state,
    wait_for_line,
)

pytestmark = [pytest.mark.reliability]

WINDOW = ("--start", day(3), "--end", day(8))
# Points before main moves, and the one point after it (main published and the branch removed in that one
# commit; the run's statistics not yet recorded).
BEFORE_MAIN_MOVES = ["writing", "written", "audit", "publish"]
POINTS = [*BEFORE_MAIN_MOVES, "published"]
KILLS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> State:
    """Main's rows after the same two backfills with no crash."""
    root = published_project(tmp_path_factory.mktemp("ref") / "p")
    r = cli(root, "backfill", VIEW, *WINDOW, "--run-id", "again", "--json")
    assert r.returncode == 0, r.stderr
    return state(root)


def _kill_at(root: Path, point: str, run_id: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.crash_runner",
            point,
            "--",
            "-C",
            str(root),
            "backfill",
            VIEW,
            *WINDOW,
            "--run-id",
            run_id,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        wait_for_line(proc.stderr, f"PAUSED {point}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_in_phase_leaves_main_whole_and_rerun_succeeds(
    tmp_path: Path, point: str, reference: State
) -> None:
    root = published_project(tmp_path / "p")
    before = state(root)
    _kill_at(root, point, "crash")
    killed = state(root)
    if point in BEFORE_MAIN_MOVES:
        assert killed == before, f"main changed though the run was killed before publishing ({point})"
    else:
        assert killed[0] != before[0]
        assert killed[1] == reference[1], "main moved but does not hold the fully published window"

    if point == "writing":
        # Killed before its first commit, which would have created the branch: nothing names the run, so
        # there is nothing to discard and its run id can be used again at once (the files it wrote are
        # orphans for `maintain --remove-orphans`).
        with featurelake.open(root) as h:
            assert "audit_crash" not in h.project.load_table(VIEW).metadata.refs
            assert [s for s in h.history(VIEW, all_snapshots=True) if s.run_id == "crash"] == []
            with pytest.raises(UsageError, match="nothing to discard"):
                h.discard(VIEW, "crash")
        assert state(root) == killed
        rerun = cli(root, "backfill", VIEW, *WINDOW, "--run-id", "crash", "--json")
        assert rerun.returncode == 0, rerun.stderr
        assert state(root)[1] == reference[1]
        return

    with featurelake.open(root) as h:
        # The orphan is reported: its run id cannot be reused and the message names the kept branch (once
        # published, the snapshot the run committed)...
        with pytest.raises(UsageError) as ei:
            h.backfill(VIEW, day(3), day(8), run_id="crash")
        named = "audit_crash" if point in BEFORE_MAIN_MOVES else "was committed by it"
        assert named in str(ei.value) and "--run-id" in str(ei.value)
        # ...its written snapshots are listed by `history --all` (an overwrite is a delete + an append)...
        crash_snaps = [s for s in h.history(VIEW, all_snapshots=True) if s.run_id == "crash"]
        assert crash_snaps
        assert any(s.on_main for s in crash_snaps) is (point == "published")
        # ...and `discard` removes the branch without touching main (a published run has none left).
        if point in BEFORE_MAIN_MOVES:
            h.discard(VIEW, "crash")
        with pytest.raises(UsageError, match="nothing to discard"):
            h.discard(VIEW, "crash")
    assert state(root) == killed

    rerun = cli(root, "backfill", VIEW, *WINDOW, "--run-id", "again", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert state(root)[1] == reference[1]


def test_sigkill_at_random_moments(tmp_path: Path, reference: State) -> None:
    """Unmodified CLI, killed at random delays across a whole run: never a partial main."""
    rng = random.Random(10)
    root = published_project(tmp_path / "p")
    base = state(root)
    t0 = time.perf_counter()
    probe = cli(root, "backfill", VIEW, *WINDOW, "--run-id", "probe")
    full = time.perf_counter() - t0
    assert probe.returncode == 0, probe.stderr
    published_state = state(root)
    assert published_state[1] == reference[1]
    outcomes = {"unchanged": 0, "published": 0}
    for i in range(KILLS):
        run_id = f"rnd{i}"
        before = state(root)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "featurelake",
                "-C",
                str(root),
                "backfill",
                VIEW,
                *WINDOW,
                "--run-id",
                run_id,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
            cwd=REPO,
        )
        time.sleep(rng.uniform(0.3, 1.0) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = state(root)
        # Rewriting an already-published window gives the same rows: the id tells the outcomes apart.
        assert after[1] == reference[1], f"kill #{i} left main partial"
        outcomes["unchanged" if after[0] == before[0] else "published"] += 1
        with featurelake.open(root) as h:
            if any(ref == f"audit_{run_id}" for ref in h.project.load_table(VIEW).metadata.refs):
                h.discard(VIEW, run_id)
    assert sum(outcomes.values()) == KILLS
    assert base[0] != published_state[0]
    rerun = cli(root, "backfill", VIEW, *WINDOW, "--run-id", "final")
    assert rerun.returncode == 0, rerun.stderr
    assert state(root)[1] == reference[1]
