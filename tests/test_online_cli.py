"""`featurelake sync` and `featurelake get` as a user runs them, after real WAP backfills."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import featurelake
from tests.helpers import day, make_project


def cli(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_sync_and_get_from_the_command_line(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(6))

    first = cli(root, "sync")
    assert first.returncode == 0, first.stderr
    assert "full resync because first sync" in first.stdout
    assert "user_features: full sync (first sync)" in first.stdout and "-> 40 keys" in first.stdout

    with featurelake.open(root) as fl:
        fl.backfill("user_features", day(4), day(10))  # a re-run of days 4-5 plus new days
    second = cli(root, "sync", "user_features", "--json")
    assert second.returncode == 0, second.stderr
    (result,) = json.loads(second.stdout)
    assert result["mode"] == "incremental" and result["keys"] == 40 and result["reason"] is None
    assert result["from_snapshot"] != result["to_snapshot"]

    got = cli(root, "get", "user_features", "1", "7", "404", "--json")
    assert got.returncode == 0, got.stderr
    rows = json.loads(got.stdout)
    assert [r["key"] for r in rows] == [1, 7, 404]
    assert [r["status"] for r in rows] == ["OUTSIDE_MAX_AGE", "OUTSIDE_MAX_AGE", "NOT_FOUND"]  # 2024 data
    assert rows[0]["event_ts"].startswith("2024-01-10")

    table = cli(root, "get", "user_features", "1", "--features", "amount_avg_1d")
    assert table.returncode == 0 and "OUTSIDE_MAX_AGE" in table.stdout and "amount_avg_1d" in table.stdout


@pytest.mark.slow
def test_cli_bad_input_exit_2_with_one_line(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
    bad_key = cli(root, "get", "user_features", "abc")
    assert bad_key.returncode == 2
    assert (
        bad_key.stderr.strip() == "error: key 'abc' is not an integer, but user_id of view user_features is"
    )
    unknown = cli(root, "sync", "nope")
    assert unknown.returncode == 2 and "unknown feature view 'nope'" in unknown.stderr
    with featurelake.open(root) as fl:
        assert fl.online.store.get_watermark("user_features") is None  # nothing was synced
