"""Bad input of every kind: the right error class, a message that names the culprit and the fix, no change.

"No change" means main's snapshot id and the rows read from main are exactly what they were before.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import (
    AuditFailed,
    CatalogUnavailableError,
    ConfigError,
    DataError,
    SchemaError,
    UsageError,
)
from featurelake.lakehouse import wap
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions

VIEW = "user_features"
BASE_CONFIG = "project: test\nnamespace: features\n"
State = tuple[int | None, list[dict[str, Any]]]


# --- helpers -------------------------------------------------------------------------------------------
def state(project_dir: Path) -> State:
    """Main's snapshot id and its rows (sorted), read through a fresh handle."""
    with featurelake.open(project_dir) as h:
        sid = wap.main_snapshot_id(h.project.load_table(VIEW))
        rows = h.read(VIEW).to_pylist()
    return sid, sorted(rows, key=lambda r: (r["user_id"], r["event_ts"]))


def features_with(old: str, new: str) -> str:
    assert old in DEFAULT_FEATURES, old
    return DEFAULT_FEATURES.replace(old, new)


def rewrite_features(project_dir: Path, old: str, new: str) -> None:
    # A rewrite within the same second could otherwise be shadowed by the cached bytecode of the old file.
    shutil.rmtree(project_dir / "__pycache__", ignore_errors=True)
    (project_dir / "features.py").write_text(textwrap.dedent(features_with(old, new)))


def published_project(root: Path, *, config: str = BASE_CONFIG, data: pa.Table | None = None) -> Path:
    """A project applied and with days 0..4 published by run ``base``."""
    make_project(root, config=config, data=data)
    with featurelake.open(root) as h:
        h.apply()
        h.backfill(VIEW, day(0), day(5), run_id="base")
    return root


def says(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    return msg


def cli(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


@pytest.fixture
def published(tmp_path: Path) -> Path:
    return published_project(tmp_path / "proj")


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Days 0..4 clean (published as run ``base``), days 5..9 with a null rate far above the 10% limit."""
    bad = transactions(days=5, start=START + timedelta(days=5), null_share=0.6)
    return published_project(tmp_path / "mixed", data=pa.concat_tables([transactions(days=5), bad]))


# --- 1. configuration ----------------------------------------------------------------------------------
def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        featurelake.open(tmp_path)
    says(ei.value, "featurelake.yaml", str(tmp_path), "featurelake init")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    make_project(tmp_path / "p", config="project: test\nnamespace: [features\ncatalog: {}\n")
    with pytest.raises(ConfigError) as ei:
        featurelake.open(tmp_path / "p")
    says(ei.value, "featurelake.yaml", "not valid YAML", "line", "fix the syntax")


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        (BASE_CONFIG + "colour: blue\n", ["unknown key 'colour'"]),
        (BASE_CONFIG + "catalog:\n  retrys: 3\n", ["unknown key 'catalog.retrys'"]),
        (BASE_CONFIG + "catalog:\n  retries: lots\n", ["'catalog.retries'", "integer"]),
        (BASE_CONFIG + "engine:\n  type: nope\n", ["'engine.type'", "'local'", "'spark'"]),
    ],
    ids=["unknown-key", "unknown-nested-key", "wrong-type", "bad-choice"],
)
def test_bad_config_key_changes_nothing(published: Path, config: str, needles: list[str]) -> None:
    before = state(published)
    good = (published / "featurelake.yaml").read_text()
    (published / "featurelake.yaml").write_text(config)
    with pytest.raises(ConfigError) as ei:
        featurelake.open(published)
    says(ei.value, "featurelake.yaml", *needles)
    (published / "featurelake.yaml").write_text(good)
    assert state(published) == before


def test_bad_env_override(published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = state(published)
    monkeypatch.setenv("FEATURELAKE_ENGINE__TYPE", "nope")
    with pytest.raises(ConfigError) as ei:
        featurelake.open(published)
    says(ei.value, "engine.type", "'local'")
    monkeypatch.delenv("FEATURELAKE_ENGINE__TYPE")
    assert state(published) == before


def test_bad_env_override_names_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path / "p")
    monkeypatch.setenv("FEATURELAKE_ENGINE__TYPE", "nope")
    with pytest.raises(ConfigError) as ei:
        featurelake.open(root)
    says(ei.value, "FEATURELAKE_ENGINE__TYPE")


# --- 2./3. arguments -----------------------------------------------------------------------------------
def test_unknown_view_lists_known_views(published: Path) -> None:
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(UsageError) as ei:
        h.backfill("user_featurez", day(5), day(7))
    says(ei.value, "user_featurez", "user_features")
    assert state(published) == before


@pytest.mark.parametrize(
    ("start", "end", "needles"),
    [
        (day(6), day(6), ["--start", day(6), "before", "--end"]),
        (day(7), day(6), ["--start", day(7), "before", "--end"]),
        (day(5) + "T10:00:00Z", day(7), ["--start", "10:00", "midnight", "give dates"]),
        (day(5), day(7) + "T00:30:00+00:00", ["--end", "00:30", "midnight"]),
        ("yesterday", day(7), ["--start", "'yesterday'", "2024-01-31"]),
        (day(5), "2024-13-45", ["--end", "'2024-13-45'", "ISO"]),
    ],
    ids=["empty", "reversed", "start-not-midnight", "end-not-midnight", "unparsable-start", "bad-end"],
)
def test_bad_window(published: Path, start: str, end: str, needles: list[str]) -> None:
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(UsageError) as ei:
        h.backfill(VIEW, start, end, run_id="win")
    says(ei.value, *needles)
    assert state(published) == before


def test_backfill_before_apply(project_dir: Path) -> None:
    with featurelake.open(project_dir) as h:
        with pytest.raises(UsageError) as ei:
            h.backfill(VIEW, day(0), day(2), run_id="early")
        says(ei.value, f"features.{VIEW}", "does not exist", "featurelake apply")
        assert not h.project.catalog.table_exists(f"features.{VIEW}")


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"snapshot_id": 12345}, ["snapshot 12345", "does not exist", "featurelake history"]),
        ({"as_of": "last tuesday"}, ["--as-of", "'last tuesday'", "ISO"]),
        ({"as_of": "2001-01-01"}, ["had no data at 2001-01-01", "first snapshot"]),
        ({"as_of": "2024-01-01", "snapshot_id": 1}, ["either --as-of or --snapshot"]),
    ],
    ids=["unknown-snapshot", "bad-as-of", "as-of-before-table", "both"],
)
def test_bad_read(published: Path, kwargs: dict[str, Any], needles: list[str]) -> None:
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(UsageError) as ei:
        h.read(VIEW, **kwargs)
    says(ei.value, *needles)
    assert state(published) == before


# --- 4. query output vs schema -------------------------------------------------------------------------
AVG = "avg(amount) AS amount_avg_1d"
EVENT_TS = "date_trunc('day', ts) AS event_ts"


def test_missing_field_is_refused_by_apply(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", features=features_with(", " + AVG, ""))
    with featurelake.open(root) as h:
        with pytest.raises(SchemaError) as ei:
            h.apply()
        says(ei.value, "user_features", "amount_avg_1d", "SELECT")
        assert not h.project.catalog.table_exists(f"features.{VIEW}")


@pytest.mark.parametrize(
    ("old", "new", "error", "needles"),
    [
        (", " + AVG, "", SchemaError, ["user_features", "amount_avg_1d", "does not produce", "SELECT"]),
        (
            AVG,
            f"CAST({AVG.split(' AS ')[0]} AS VARCHAR) AS amount_avg_1d",
            SchemaError,
            ["amount_avg_1d", "string", "double", "cast it"],
        ),
        (AVG, AVG + ", max(amount) AS amount_max_1d", SchemaError, ["amount_max_1d", "undeclared", "fields"]),
        (
            "SELECT user_id,",
            "SELECT CASE WHEN user_id % 3 = 0 THEN NULL ELSE user_id END AS user_id,",
            DataError,
            ["user_features", "null user_id", "join key", "filter them out"],
        ),
        (
            EVENT_TS,
            "CAST(date_trunc('day', ts) AS TIMESTAMP) AS event_ts",
            SchemaError,
            ["event_ts", "timezone", "TIMESTAMPTZ"],
        ),
        (
            EVENT_TS,
            "date_trunc('day', ts) + INTERVAL 40 DAY AS event_ts",
            DataError,
            ["event_ts", "window", day(5), day(7)],
        ),
    ],
    ids=[
        "missing-field",
        "string-for-double",
        "extra-column",
        "null-keys",
        "naive-timestamp",
        "out-of-window",
    ],
)
def test_bad_query_output_after_apply(
    published: Path, old: str, new: str, error: type[Exception], needles: list[str]
) -> None:
    before = state(published)
    rewrite_features(published, old, new)
    with featurelake.open(published) as h:
        with pytest.raises(error) as ei:
            h.backfill(VIEW, day(5), day(7), run_id="q")
        says(ei.value, *needles)
        tbl = h.project.load_table(VIEW)
        assert wap.branch_name("q") not in tbl.metadata.refs, "a refused computation must not leave a branch"
    assert state(published) == before


# --- 6. sources ----------------------------------------------------------------------------------------
def test_source_glob_matches_nothing(published: Path) -> None:
    before = state(published)
    for f in (published / "data" / "transactions").glob("*.parquet"):
        f.rename(f.with_suffix(".bak"))
    with featurelake.open(published) as h, pytest.raises(ConfigError) as ei:
        h.backfill(VIEW, day(5), day(7), run_id="glob")
    says(ei.value, "user_features", "data/transactions/*.parquet", "matches no files", "features.py")
    assert state(published) == before


def test_source_glob_matches_nothing_at_apply(tmp_path: Path) -> None:
    feats = features_with("data/transactions/*.parquet", "data/nowhere/*.parquet")
    root = make_project(tmp_path / "p", features=feats)
    with featurelake.open(root) as h:
        with pytest.raises(ConfigError) as ei:
            h.apply()
        says(ei.value, "data/nowhere/*.parquet", "matches no files")
        assert not h.project.catalog.table_exists(f"features.{VIEW}")


# --- 7. run ids ----------------------------------------------------------------------------------------
def test_failed_audit_keeps_branch_and_its_run_id_cannot_be_reused(mixed: Path) -> None:
    before = state(mixed)
    with featurelake.open(mixed) as h:
        with pytest.raises(AuditFailed) as failed:
            h.backfill(VIEW, day(5), day(10), run_id="r-bad")
        says(failed.value, "amount_avg_1d", "main is unchanged", "audit_r-bad")
        assert wap.branch_name("r-bad") in h.project.load_table(VIEW).metadata.refs
        assert state(mixed) == before
        with pytest.raises(UsageError) as ei:
            h.backfill(VIEW, day(5), day(10), run_id="r-bad")
        says(ei.value, "r-bad", "already exists", "audit_r-bad", "--run-id")
    assert state(mixed) == before


def test_published_run_id_cannot_be_reused(published: Path) -> None:
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(UsageError) as ei:
        h.backfill(VIEW, day(5), day(7), run_id="base")
    says(ei.value, "base", "already exists", "user_features", "--run-id")
    assert state(published) == before


@pytest.mark.parametrize("run_id", ["../x", "a b", "x" * 65, "-lead", "a/b"])
def test_invalid_run_id(published: Path, run_id: str) -> None:
    before = state(published)
    with featurelake.open(published) as h, pytest.raises(UsageError) as ei:
        h.backfill(VIEW, day(5), day(7), run_id=run_id)
    says(ei.value, "run id", repr(run_id), "letters, digits")
    assert state(published) == before
    reports = {p.name for p in (published / ".featurelake" / "audits").rglob("*.json")}
    assert reports == {"base.json"}, "no audit report may be written for a refused run id"


# --- 8. catalog ----------------------------------------------------------------------------------------
LOCKY = BASE_CONFIG + "catalog:\n  lock_timeout_seconds: 0.2\n  retries: 1\n"


def test_locked_catalog_changes_nothing_and_retry_succeeds(tmp_path: Path) -> None:
    root = published_project(tmp_path / "p", config=LOCKY)
    before = state(root)
    lock = sqlite3.connect(root / ".featurelake" / "catalog.db", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        with featurelake.open(root) as h:
            assert h.read(VIEW).num_rows == len(before[1]), (
                "readers must still work while a writer holds the lock"
            )
            with pytest.raises(CatalogUnavailableError) as ei:
                h.backfill(VIEW, day(5), day(7), run_id="locked")
            says(ei.value, "locked", "catalog.db", "retry")
            assert ei.value.transient
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert state(root) == before
    with featurelake.open(root) as h:
        result = h.backfill(VIEW, day(5), day(7), run_id="locked")
        assert result.previous_snapshot_id == before[0]
        assert result.rows > 0
    after = state(root)
    assert after[0] == result.snapshot_id
    assert len(after[1]) == len(before[1]) + result.rows


def _lock_at_publish(root: Path, run_id: str) -> tuple[State, CatalogUnavailableError]:
    """Run a backfill whose publish step finds the catalog locked; return main before and the error."""
    before = state(root)
    lock = sqlite3.connect(root / ".featurelake" / "catalog.db", isolation_level=None)

    def progress(msg: str) -> None:
        if msg.startswith("audit passed"):
            lock.execute("BEGIN EXCLUSIVE")

    try:
        with featurelake.open(root) as h, pytest.raises(CatalogUnavailableError) as ei:
            h.backfill(VIEW, day(5), day(7), run_id=run_id, progress=progress)
        assert lock.in_transaction, "the backfill never reached its publish step"
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    return before, ei.value


def test_catalog_locked_at_publish_keeps_main_and_branch(tmp_path: Path) -> None:
    root = published_project(tmp_path / "p", config=LOCKY)
    before, err = _lock_at_publish(root, "mid")
    says(err, "locked", "publish audit_mid")
    assert state(root) == before
    with featurelake.open(root) as h:
        assert wap.branch_name("mid") in h.project.load_table(VIEW).metadata.refs
        result = h.publish(VIEW, "mid")
        assert result.previous_snapshot_id == before[0] and result.rows > 0
    assert len(state(root)[1]) == len(before[1]) + result.rows


def test_catalog_locked_at_publish_says_how_to_finish(tmp_path: Path) -> None:
    root = published_project(tmp_path / "p", config=LOCKY)
    _, err = _lock_at_publish(root, "mid")
    says(err, "featurelake publish", "--run-id mid")


def test_unreachable_catalog_hides_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Credentials come from env only (a password in featurelake.yaml is refused, see test_config_cli).
    root = make_project(tmp_path / "p", config=BASE_CONFIG + "catalog:\n  retries: 0\n")
    monkeypatch.setenv("FEATURELAKE_CATALOG__URI", "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/nodb")
    with featurelake.open(root) as h, pytest.raises(CatalogUnavailableError) as ei:
        h.backfill(VIEW, day(0), day(2), run_id="pg")
    msg = says(ei.value, "unavailable", "127.0.0.1", "nobody", "catalog.uri")
    assert "hunter2" not in msg
    assert ei.value.transient


# --- 9. command line -----------------------------------------------------------------------------------


def test_cli_usage_error_is_one_line(published: Path) -> None:
    before = state(published)
    proc = cli(published, "backfill", VIEW, "--start", day(6), "--end", day(6))
    assert proc.returncode == 2, proc.stderr
    line = assert_one_line_error(proc.stderr)
    assert "--start" in line and "before" in line
    assert proc.stdout == ""
    assert state(published) == before


def test_cli_failed_audit_exits_1_and_changes_nothing(mixed: Path) -> None:
    before = state(mixed)
    proc = cli(mixed, "backfill", VIEW, "--start", day(5), "--end", day(10), "--run-id", "cli-bad")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: audit failed" in proc.stderr and "amount_avg_1d" in proc.stderr
    assert "published" not in proc.stdout
    assert state(mixed) == before


def test_cli_failed_audit_error_line_is_one_line(mixed: Path) -> None:
    proc = cli(mixed, "backfill", VIEW, "--start", day(5), "--end", day(10), "--run-id", "cli-bad")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), proc.stderr
    assert "audit failed" in last and "audit_cli-bad" in last and "--snapshot" in last, proc.stderr


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    proc = cli(tmp_path, "backfill", VIEW, "--start", day(0), "--end", day(1))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no featurelake.yaml")
    assert "featurelake init" in proc.stderr


def test_cli_missing_config_error_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "a-project-directory-with-a-rather-long-name-as-ci-workspaces-have"
    empty.mkdir()
    proc = cli(empty, "backfill", VIEW, "--start", day(0), "--end", day(1))
    assert proc.returncode == 2, proc.stderr
    line = assert_one_line_error(proc.stderr)
    assert f"featurelake init {empty}`" in line
