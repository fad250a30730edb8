"""Channels: the JSONL audit trail, the console, and Slack against a real local HTTP server (retries,
timeouts, 500s, the URL kept secret), plus the bad-input paths."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import featurelake
from featurelake.cli.main import cli
from featurelake.errors import ConfigError
from featurelake.monitoring.alerts import monitor
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import Update, label_key
from featurelake.project import Project
from tests.helpers import day, make_project, transactions
from tests.monitoring_servers import Webhook, webhook_server

ENV = "FEATURELAKE_TEST_SLACK_URL"


def _project(tmp_path: Path, channels: str, extra: str = "") -> Project:
    root = make_project(
        tmp_path / "proj", config=f"project: mon\nmonitoring:\n  channels: {channels}\n{extra}"
    )
    return featurelake.open(root).project


def _empty_store(project: Project, ts: float = 1_700_000_000.0, keys: float = 0) -> None:
    state_of(project).record(
        [
            Update(
                "set",
                "featurelake_online_store_keys",
                "featurelake_online_store_keys",
                label_key({"view": "user_features"}),
                keys,
                "gauge",
            )
        ],
        "synthetic",
        ts=ts,
    )


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SLACK = "[{type: file, path: alerts.jsonl}, {type: slack, webhook_url_env: " + ENV


def test_file_channel_writes_one_object_per_firing_and_resolved_event(tmp_path: Path) -> None:
    project = _project(tmp_path, "[{type: file, path: logs/alerts.jsonl}]")
    _empty_store(project, ts=100)
    monitor(project, now=100)
    monitor(project, now=160)  # still firing, inside repeat_interval: deduplicated
    _empty_store(project, ts=200, keys=10)
    monitor(project, now=200)
    events = _jsonl(project.root / "logs" / "alerts.jsonl")
    assert [e["status"] for e in events] == ["firing", "resolved"]
    firing, resolved = events
    assert firing["alert"] == "online_store_empty" and firing["severity"] == "critical"
    assert firing["labels"] == {"view": "user_features"} and firing["value"] == 0
    assert (
        firing["summary"]
        == "the online store holds no keys for user_features: run `featurelake sync user_features`"
    )
    assert (
        firing["started_at"] == "1970-01-01T00:01:40+00:00" and resolved["at"] == "1970-01-01T00:03:20+00:00"
    )


def test_unwritable_alert_log_is_refused_before_any_state_moves(tmp_path: Path) -> None:
    project = _project(tmp_path, "[{type: console}, {type: file, path: featurelake.yaml/alerts.jsonl}]")
    _empty_store(project)
    with pytest.raises(ConfigError) as err:
        monitor(project)
    message = str(err.value)
    assert "featurelake.yaml/alerts.jsonl is not writable" in message
    assert "monitoring.channels[1].path" in message and "no alert was evaluated or notified" in message
    assert state_of(project).alert_states() == {}
    # Fixed config: the same alert is notified then, nothing was lost.
    project.config.settings.monitoring.channels = [{"type": "file", "path": "alerts.jsonl"}]
    monitor(project)
    assert [e["alert"] for e in _jsonl(project.root / "alerts.jsonl")] == ["online_store_empty"]


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (
            "[{type: pager}]",
            "monitoring.channels[0]: unknown channel type 'pager': use one of console, file, slack",
        ),
        ("[{type: slack}]", "monitoring.channels[0] (slack): webhook_url_env: Field required"),
        ("[{type: slack, webhook_url_env: NOPE_NOT_SET}]", "env var NOPE_NOT_SET is not set"),
        (
            "[{type: file, colour: red}]",
            "monitoring.channels[0] (file): colour: Extra inputs are not permitted",
        ),
        ("[{type: console, min_severity: loud}]", "min_severity: Input should be"),
    ],
)
def test_bad_channel_config_is_a_clear_config_error(tmp_path: Path, channels: str, message: str) -> None:
    project = _project(tmp_path, channels)
    _empty_store(project)
    with pytest.raises(ConfigError, match=r".*") as err:
        monitor(project)
    assert message in str(err.value)
    assert state_of(project).alert_states() == {}


def test_console_channel_prints_to_stderr_and_json_stays_clean(tmp_path: Path) -> None:
    project = _project(tmp_path, "[{type: console}]")
    _empty_store(project)
    result = CliRunner().invoke(cli, ["-C", str(project.root), "monitor", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [e["alert"] for e in body["events"]] == ["online_store_empty"]
    assert "[FIRING] critical online_store_empty" in result.stderr


def test_slack_posts_incoming_webhook_json_to_a_real_http_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_server() as hook:
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + "}]")
        _empty_store(project, ts=100)
        monitor(project, now=100)
        _empty_store(project, ts=200, keys=3)
        monitor(project, now=200)
    assert hook.attempts == 2
    firing, resolved = hook.bodies
    assert firing["text"].startswith(":rotating_light: [FIRING] critical online_store_empty")
    assert firing["blocks"][0]["type"] == "section"
    assert "*online_store_empty* (critical, firing)" in firing["blocks"][0]["text"]["text"]
    assert "`view=user_features`" in firing["blocks"][1]["elements"][0]["text"]
    assert resolved["text"].startswith(":white_check_mark: [RESOLVED]")


def test_slack_min_severity_filters_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_server() as hook:
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + ", min_severity: critical}]")
        state_of(project).record(
            [
                Update(
                    "set",
                    "featurelake_model_age_hours",
                    "featurelake_model_age_hours",
                    label_key({"model": "m", "stage": "production"}),
                    500,
                    "gauge",
                )
            ],
            "synthetic",
        )
        _empty_store(project)
        monitor(project)
    assert [b["text"].split()[3] for b in hook.bodies] == ["online_store_empty"]  # model_too_old is info
    assert {e["alert"] for e in _jsonl(project.root / "alerts.jsonl")} == {
        "online_store_empty",
        "model_too_old",
    }


def test_slack_retries_a_500_with_backoff_then_delivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_server() as hook:
        hook.script = [500, 503]
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + ", retries: 3, backoff_seconds: 0.01}]")
        _empty_store(project)
        result = monitor(project)
    assert hook.attempts == 3  # two refusals, then delivered
    assert len(hook.bodies) == 1 and result.delivery_errors == []


def _assert_secret_kept(hook: Webhook, *texts: str) -> None:
    for text in texts:
        assert hook.url not in text and "XXXXSECRETXXXX" not in text


def test_slack_that_keeps_failing_is_logged_to_the_file_channel_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with webhook_server() as hook:
        hook.script = [500] * 10
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + ", retries: 2, backoff_seconds: 0.01}]")
        _empty_store(project)
        with caplog.at_level(logging.DEBUG):
            result = CliRunner().invoke(cli, ["-C", str(project.root), "monitor"])
    assert result.exit_code == 1
    assert hook.attempts == 3 and hook.bodies == []
    events = _jsonl(project.root / "alerts.jsonl")
    assert [e["status"] for e in events] == ["firing", "delivery_failed"]
    failed = events[1]
    assert failed["alert"] == "online_store_empty"
    assert "slack webhook ($FEATURELAKE_TEST_SLACK_URL) failed after 3 attempt(s): HTTP 500" in str(
        failed["error"]
    )
    assert "delivery failed" in result.stderr
    _assert_secret_kept(hook, result.output, (project.root / "alerts.jsonl").read_text(), caplog.text)
    # The alert state moved on (the file channel has the record): no duplicate page next minute.
    assert len(state_of(project).alert_states()) == 1


def test_slack_timeouts_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_server() as hook:
        hook.stall = 0.5
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + ", retries: 1, backoff_seconds: 0.01, timeout_seconds: 0.1}]")
        _empty_store(project)
        result = monitor(project)
    assert hook.attempts == 2
    assert (
        len(result.delivery_errors) == 1
        and "failed after 2 attempt(s): timed out" in result.delivery_errors[0]
    )
    _assert_secret_kept(hook, *result.delivery_errors)


def test_slack_failures_after_a_job_never_fail_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_server() as hook:
        hook.script = [500] * 20
        monkeypatch.setenv(ENV, hook.url)
        root = make_project(
            tmp_path / "proj",
            config="project: mon\nmonitoring:\n  evaluate_after_jobs: true\n  channels: "
            + SLACK
            + ", retries: 1, backoff_seconds: 0.01}]\n",
            data=transactions(null_share=0.3),
        )
        with featurelake.open(root) as fl:
            fl.apply()
            for i in range(4):
                # The job's own outcome (a refused audit) comes through; the failing webhook adds nothing.
                with pytest.raises(featurelake.AuditFailed, match="audit failed for user_features"):
                    fl.backfill("user_features", day(i), day(i + 1))
    assert hook.attempts >= 2 and hook.bodies == []
    events = _jsonl(root / "alerts.jsonl")
    statuses = {(e["alert"], e["status"]) for e in events}
    # Refused runs do not fire the null rate rule (it follows published data); the failures do.
    assert ("job_failure_spike", "firing") in statuses
    assert ("job_failure_spike", "delivery_failed") in statuses
    assert ("job_failure_spike", "firing") in statuses


_RACER = """
import sys, time, pathlib
import featurelake
with featurelake.open(sys.argv[1]) as fl:
    print("ready", flush=True)
    go = pathlib.Path(sys.argv[2])
    for _ in range(6000):
        if go.exists():
            break
        time.sleep(0.005)
    fl.monitor()
"""


def test_concurrent_monitor_runs_page_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    with webhook_server() as hook:
        hook.stall = 0.3  # a slow Slack keeps each run inside its state transition for a while
        monkeypatch.setenv(ENV, hook.url)
        project = _project(tmp_path, SLACK + "}]")
        _empty_store(project, ts=time.time())
        go = tmp_path / "go"
        args = [sys.executable, "-c", _RACER, str(project.root), str(go)]
        procs = [
            subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3  # type: ignore[union-attr]
        go.touch()  # all three evaluate at once
        outputs = [p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert len(hook.bodies) == 1
    assert [e["status"] for e in _jsonl(project.root / "alerts.jsonl")] == ["firing"]


def test_an_unusable_metrics_state_is_a_clear_error_for_monitor(tmp_path: Path) -> None:
    project = _project(
        tmp_path, "[{type: file, path: alerts.jsonl}]", "  state: featurelake.yaml/metrics.db\n"
    )
    with pytest.raises(ConfigError, match=r"cannot use the metrics state .*featurelake.yaml/metrics.db"):
        monitor(project)
    assert _jsonl(project.root / "alerts.jsonl") == []
