"""PredictRequest and MaintenanceRequest: built once (by ``fl.predict``/``fl.maintain`` or the CLI), checked
when built, and the same request whichever door it came through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.config import MaintenanceConfig
from featurelake.errors import UsageError
from featurelake.maintenance.request import MaintenanceRequest
from featurelake.prediction.request import PredictRequest


def test_maintenance_request_parses_durations_and_sizes() -> None:
    req = MaintenanceRequest(
        "v", expire=True, expire_older_than="1h30m", orphan_min_age=7200, target_file_size="64MiB"
    )
    assert req.older_than == timedelta(minutes=90) and req.min_age == timedelta(hours=2)
    assert req.target_bytes == 64 * 1024**2
    assert (req.compact, req.expire, req.remove_orphans) == (False, True, False)
    same = MaintenanceRequest("v", expire=True, expire_older_than=timedelta(minutes=90), orphan_min_age="2h")
    assert same.older_than == req.older_than and same.min_age == req.min_age


def test_maintenance_request_with_no_operation_runs_all_three() -> None:
    req = MaintenanceRequest(all_tables=True)
    assert (req.compact, req.expire, req.remove_orphans) == (True, True, True)


def test_maintenance_request_falls_back_to_the_config() -> None:
    cfg = MaintenanceConfig.model_validate(
        {
            "expire_older_than": "2d",
            "retain_last": 3,
            "orphan_min_age": "5h",
            "compaction_target_file_size": "1MB",
        }
    )
    unset = MaintenanceRequest("v")
    policy = unset.retention(cfg)
    assert policy.older_than == timedelta(days=2) and policy.retain_last == 3
    assert policy.keep_ancestry_tag_prefixes == ("online-sync-",)
    assert unset.orphan_age(cfg) == timedelta(hours=5) and unset.file_size(cfg) == 1_000_000
    given = MaintenanceRequest(
        "v", expire_older_than="0s", retain_last=1, orphan_min_age="0s", target_file_size=4096
    )
    assert given.retention(cfg).older_than == timedelta(0) and given.retention(cfg).retain_last == 1
    assert given.orphan_age(cfg) == timedelta(0) and given.file_size(cfg) == 4096


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"expire_older_than": "7x"}, "--expire-older-than '7x' is not a duration"),
        ({"orphan_min_age": "three days"}, "--orphan-min-age 'three days' is not a duration"),
        ({"target_file_size": "big"}, "--target-file-size 'big' is not a size"),
        ({"target_file_size": 100}, "--target-file-size 100 is too small: give at least 1,024 bytes"),
    ],
)
def test_maintenance_request_refuses_bad_values_naming_the_flag(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        MaintenanceRequest("v", **kwargs)
    assert needle in str(info.value)


def test_predict_request_parses_max_age() -> None:
    assert PredictRequest("m", max_age="2d").age_limit == timedelta(days=2)
    assert PredictRequest("m", max_age=timedelta(hours=3)).age_limit == timedelta(hours=3)
    assert PredictRequest("m", max_age=60).age_limit == timedelta(minutes=1)
    assert PredictRequest("m").age_limit is None
    with pytest.raises(UsageError, match="--max-age 'soon' is not a duration: expected a duration like 30s"):
        PredictRequest("m", max_age="soon")
    with pytest.raises(UsageError, match=r"--max-age '0s' must be positive \(e\.g\. 2d\)"):
        PredictRequest("m", max_age="0s")


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "featurelake.yaml").write_text("")
    return tmp_path


def test_the_api_and_the_cli_build_the_same_requests(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each door builds its request once and hands it to the job; the same flags make the same request."""
    from featurelake.cli.main import main
    from featurelake.jobs import batch_predict, maintain

    seen: list[Any] = []

    class Stop(Exception):
        pass

    def capture(*args: Any, **_kw: Any) -> Any:
        seen.append(args[-1])
        raise Stop

    monkeypatch.setattr(maintain, "run_maintain", capture)
    monkeypatch.setattr(batch_predict, "run_predict", capture)

    with featurelake.open(project_dir) as fl:
        with pytest.raises(Stop):
            fl.maintain("v", expire=True, expire_older_than="12h", retain_last=2, dry_run=True)
        with pytest.raises(Stop):
            fl.predict("churn@staging", "v", max_age="2d", where="x > 1", start=None, run_id="r1")
    for argv in (
        ["maintain", "v", "--expire-older-than", "12h", "--retain-last", "2", "--dry-run"],
        ["predict", "churn@staging", "--view", "v", "--max-age", "2d", "--where", "x > 1", "--run-id", "r1"],
    ):
        with pytest.raises(Stop):
            main(["--debug", "-C", str(project_dir), *argv])  # --debug: let Stop through
    api_maintain, api_predict, cli_maintain, cli_predict = seen
    assert isinstance(api_maintain, MaintenanceRequest) and api_maintain == cli_maintain
    assert api_maintain.older_than == timedelta(hours=12) and not api_maintain.compact
    assert isinstance(api_predict, PredictRequest) and api_predict == cli_predict
    assert api_predict.age_limit == timedelta(days=2)


def test_a_bad_value_is_refused_before_the_job_starts(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from featurelake.cli.main import main
    from featurelake.jobs import maintain

    def never(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("the job must not start")

    monkeypatch.setattr(maintain, "run_maintain", never)
    with featurelake.open(project_dir) as fl, pytest.raises(UsageError, match="--orphan-min-age '3 days'"):
        fl.maintain("v", orphan_min_age="3 days", now=datetime.now(UTC))
    with pytest.raises(SystemExit) as info:
        main(["-C", str(project_dir), "maintain", "v", "--target-file-size", "big"])
    assert info.value.code == 2
    assert "error: --target-file-size 'big' is not a size" in capsys.readouterr().err
