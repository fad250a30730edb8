"""Config loading and env overrides, the CLI surface, init scaffolding and the public API."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.config import ProjectConfig, reveal
from tests.helpers import day, transactions, write_source


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurelake", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_defaults_resolve_against_the_project_dir(tmp_path: Path) -> None:
    (tmp_path / "featurelake.yaml").write_text("")
    cfg = ProjectConfig.load(tmp_path)
    assert cfg.settings.namespace == "features"
    assert cfg.catalog_uri == f"sqlite:///{tmp_path.resolve()}/.featurelake/catalog.db"
    assert cfg.warehouse == f"file://{tmp_path.resolve()}/.featurelake/warehouse"
    assert cfg.settings.online_store.type == "sqlite"
    assert cfg.path(cfg.settings.registry.artifacts) == tmp_path.resolve() / ".featurelake/artifacts"
    assert cfg.settings.maintenance.expire_older_than == timedelta(days=7)


def test_env_overrides_win_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "featurelake.yaml").write_text(
        "namespace: fromfile\nonline_store:\n  type: sqlite\ncatalog:\n  retries: 2\n"
    )
    monkeypatch.setenv("FEATURELAKE_NAMESPACE", "fromenv")
    monkeypatch.setenv("FEATURELAKE_ONLINE_STORE__URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FEATURELAKE_ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("FEATURELAKE_CATALOG__URI", "sqlite:////tmp/elsewhere.db")
    s = ProjectConfig.load(tmp_path).settings
    assert s.namespace == "fromenv"
    assert s.online_store.type == "redis" and reveal(s.online_store.url) == "redis://127.0.0.1:6379/0"
    assert reveal(s.catalog.uri) == "sqlite:////tmp/elsewhere.db" and s.catalog.retries == 2


def test_init_scaffolds_a_working_project(tmp_path: Path) -> None:
    proj = tmp_path / "newproj"
    out = cli("init", str(proj))
    assert out.returncode == 0, out.stderr
    assert {p.name for p in proj.iterdir()} >= {"featurelake.yaml", "features.py", ".gitignore", "data"}
    assert ProjectConfig.load(proj).settings.project == "newproj"
    again = cli("init", str(proj))
    assert again.returncode == 2 and "already" in again.stderr
    write_source(proj, transactions())
    assert cli("-C", str(proj), "apply").returncode == 0
    done = cli("-C", str(proj), "backfill", "user_features", "--start", day(0), "--end", day(3), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "published"


def test_cli_read_commands(tmp_path: Path, fl: featurelake.Featurelake, project_dir: Path) -> None:
    result = fl.backfill("user_features", day(0), day(3), run_id="cli1")
    hist = cli("-C", str(project_dir), "history", "user_features", "--json")
    assert hist.returncode == 0, hist.stderr
    rows = json.loads(hist.stdout)
    assert rows[0]["run_id"] == "cli1" and rows[0]["snapshot_id"] == result.snapshot_id
    assert rows[0]["pipeline_user"] == "test-user" and rows[0]["window_start"].startswith(day(0))
    human = cli("-C", str(project_dir), "history", "user_features")
    assert "cli1" in human.stdout and "code-version" in human.stdout

    pq_out, csv_out = tmp_path / "o.parquet", tmp_path / "o.csv"
    assert cli("-C", str(project_dir), "read", "user_features", "--output", str(pq_out)).returncode == 0
    assert cli("-C", str(project_dir), "read", "user_features", "--output", str(csv_out)).returncode == 0
    assert pq.read_table(pq_out).num_rows == pacsv.read_csv(csv_out).num_rows == result.rows
    js = cli("-C", str(project_dir), "read", "user_features", "--json", "--limit", "3")
    assert len(json.loads(js.stdout)) == 3
    bad = cli("-C", str(project_dir), "read", "user_features", "--output", str(tmp_path / "o.xlsx"))
    assert bad.returncode == 2 and ".parquet or .csv" in bad.stderr

    # A published run has no branch any more: `audit` shows the audit recorded when it was published.
    audit = cli("-C", str(project_dir), "audit", "user_features", "--run-id", "cli1")
    assert audit.returncode == 0, audit.stderr
    assert "recorded audit" in audit.stderr and "cli1.json" in audit.stderr
    missing = cli("-C", str(project_dir), "audit", "user_features", "--run-id", "never")
    assert missing.returncode == 2, missing.stderr


def test_public_api_surface() -> None:
    assert set(featurelake.__all__) >= {
        "Entity",
        "FeatureView",
        "Source",
        "checks",
        "open",
        "FeaturelakeError",
        "AuditFailed",
        "ConfigError",
    }
    for name in featurelake.__all__:
        assert getattr(featurelake, name) is not None
    assert {"null_rate", "not_null", "between", "row_count"} <= set(featurelake.checks.__all__)
    for exc in (
        "ConfigError",
        "UsageError",
        "SchemaError",
        "DataError",
        "AuditFailed",
        "RequestError",
        "NotFoundError",
        "ArtifactIntegrityError",
        "OnlineStoreUnavailableError",
        "ConflictError",
        "CatalogUnavailableError",
    ):
        assert issubclass(getattr(featurelake, exc), featurelake.FeaturelakeError)


@pytest.mark.parametrize(
    ("yaml_text", "env"),
    [
        ("catalog:\n  uri: postgresql+psycopg://me:s3cret@127.0.0.1/db\n", "FEATURELAKE_CATALOG__URI"),
        (
            "online_store:\n  type: redis\n  url: redis://:s3cret@127.0.0.1:6379/0\n",
            "FEATURELAKE_ONLINE_STORE__URL",
        ),
        ("registry:\n  uri: postgresql+psycopg://me:s3cret@127.0.0.1/reg\n", "FEATURELAKE_REGISTRY__URI"),
    ],
)
def test_secrets_in_the_file_are_refused(tmp_path: Path, yaml_text: str, env: str) -> None:
    (tmp_path / "featurelake.yaml").write_text(yaml_text)
    with pytest.raises(featurelake.ConfigError) as info:
        ProjectConfig.load(tmp_path)
    msg = str(info.value)
    assert env in msg and "environment only" in msg
    assert "s3cret" not in msg


def test_secret_from_env_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "featurelake.yaml").write_text("")
    monkeypatch.setenv("FEATURELAKE_CATALOG__URI", "postgresql+psycopg://me:s3cret@127.0.0.1/db")
    assert (reveal(ProjectConfig.load(tmp_path).settings.catalog.uri) or "").endswith("@127.0.0.1/db")


def test_definition_errors_point_at_the_line_in_features_py(tmp_path: Path) -> None:
    from tests.helpers import DEFAULT_FEATURES, make_project

    broken = DEFAULT_FEATURES.replace(
        'checks.null_rate("amount_avg_1d", max=0.10)', 'checks.null_rate("amount_avg_1d", max=3)'
    )
    proj = make_project(tmp_path / "p", features=broken)
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "max=3" in text)
    with pytest.raises(featurelake.ConfigError) as info:
        featurelake.open(proj).definitions  # noqa: B018 - loading is the point
    # The line of features.py that failed, not a line inside featurelake.validation.checks.
    assert "features.py" in str(info.value) and "checks.py" not in str(info.value)
    assert "between 0 and 1" in str(info.value) and "got 3" in str(info.value)
    assert str(info.value).startswith(f"{proj.resolve() / 'features.py'}:{line}: ")  # file:line


def test_discard_removes_a_kept_branch_only(fl: featurelake.Featurelake, project_dir: Path) -> None:
    from datetime import timedelta

    from featurelake.lakehouse import wap
    from tests.helpers import START

    fl.backfill("user_features", day(0), day(2), run_id="ok")
    write_source(
        project_dir, transactions(days=2, start=START + timedelta(days=30), null_share=0.6), name="b.parquet"
    )
    with pytest.raises(featurelake.AuditFailed):
        fl.backfill("user_features", day(30), day(32), run_id="bad")
    head = wap.main_snapshot_id(fl.project.load_table("user_features"))
    out = cli("-C", str(project_dir), "discard", "user_features", "--run-id", "bad")
    assert out.returncode == 0, out.stderr
    tbl = fl.project.load_table("user_features")
    assert "audit_bad" not in tbl.metadata.refs and wap.main_snapshot_id(tbl) == head
    again = cli("-C", str(project_dir), "discard", "user_features", "--run-id", "bad")
    assert again.returncode == 2 and "nothing to discard" in again.stderr


def test_cli_conveniences(fl: featurelake.Featurelake, project_dir: Path) -> None:
    fl.backfill("user_features", day(0), day(2), run_id="c1")
    # --debug is accepted after the command too.
    assert cli("-C", str(project_dir), "history", "user_features", "--debug").returncode == 0
    assert cli("-C", str(project_dir), "read", "user_features", "--limit", "-1").returncode == 2
    unknown = cli("-C", str(project_dir), "history", "nope")
    assert unknown.returncode == 2 and "unknown feature view 'nope'" in unknown.stderr
    assert "user_features" in unknown.stderr
