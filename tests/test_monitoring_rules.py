"""Alert rules: loading, overriding, bad input, and every shipped rule firing and resolving on synthetic metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import ConfigError
from featurelake.monitoring.alerts import monitor, project_rules
from featurelake.monitoring.evaluate import histogram_quantile
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.rules import load_rules
from featurelake.monitoring.state import Update, label_key
from featurelake.project import Project
from tests.helpers import make_project
from tests.monitoring_scenarios import BASE_TS, SCENARIOS, Scenario

SEED = {
    "high_feature_null_rate": ("warning", ">", 0.10),
    "prediction_latency_high": ("error", ">", 0.5),
    "job_failure_spike": ("critical", ">", 3),
    "feature_drift_detected": ("warning", ">", 0.2),
    "online_store_empty": ("critical", "==", 0),
    "model_too_old": ("info", ">", 168),
    # Issue 19 item 5: `featurelake consistency` writes the ratio.
    "online_inconsistent": ("error", ">", 0.01),
}


def _project(tmp_path: Path, extra: str = "") -> Project:
    root = make_project(
        tmp_path / "proj",
        config="project: mon\nmonitoring:\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"
        + extra,
    )
    return featurelake.open(root).project


def _events(project: Project) -> list[dict[str, Any]]:
    path = project.root / ".featurelake" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_shipped_rules_are_the_seeds_with_its_thresholds_and_severities() -> None:
    rules = {r.name: r for r in load_rules()}
    assert set(rules) == set(SEED)
    for name, (severity, op, threshold) in SEED.items():
        assert (rules[name].severity, rules[name].op, rules[name].threshold) == (severity, op, threshold)
    assert rules["prediction_latency_high"].quantile == 0.99
    assert rules["model_too_old"].threshold == 7 * 24  # one week, in hours
    assert rules["feature_drift_detected"].threshold_metric == "featurelake_feature_drift_threshold"
    assert rules["prediction_latency_high"].for_seconds == 300
    assert all(r.repeat_seconds > 0 for r in rules.values())


def _feed(project: Project, scenario: Scenario) -> None:
    state = state_of(project)
    for minute in range(scenario.minutes):
        updates = [
            Update("set", s.metric, s.sample, label_key(s.labels), s.values[minute], s.kind)
            for s in scenario.series
        ]
        state.record(updates, "synthetic", ts=BASE_TS + 60 * minute)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.rule for s in SCENARIOS])
def test_every_rule_fires_and_resolves_on_synthetic_metrics(tmp_path: Path, scenario: Scenario) -> None:
    project = _project(tmp_path)
    _feed(project, scenario)
    rule = next(r for r in project_rules(project) if r.name == scenario.rule)
    minutes = range(scenario.minutes) if scenario.every_minute else sorted(scenario.checks)
    fired: set[tuple[tuple[str, str], ...]] = set()
    for minute in minutes:
        result = monitor(project, now=BASE_TS + 60 * minute, rules=[rule])
        firing = {
            tuple(sorted(i.labels.items())): (i.value, i.threshold)
            for i in result.rules[0].instances
            if i.state == "firing"
        }
        fired |= set(firing)
        if minute in scenario.checks:
            expected = {
                tuple(sorted(e.labels.items())): (pytest.approx(e.value), e.threshold)
                for e in scenario.checks[minute]
            }
            assert firing == expected, f"minute {minute}"
    events = _events(project)
    assert fired, "the scenario never fired"
    for labels in fired:
        statuses = [e["status"] for e in events if tuple(sorted(e["labels"].items())) == labels]
        assert statuses[0] == "firing" and statuses[-1] == "resolved", statuses
    firing_event = next(e for e in events if e["status"] == "firing")
    assert firing_event["alert"] == scenario.rule and firing_event["severity"] == rule.severity
    assert firing_event["project"] == "mon" and firing_event["summary"]


def test_for_duration_keeps_an_alert_pending_then_fires_once_and_dedups(tmp_path: Path) -> None:
    project = _project(tmp_path)
    scenario = next(s for s in SCENARIOS if s.rule == "prediction_latency_high")
    _feed(project, scenario)
    rule = next(r for r in project_rules(project) if r.name == "prediction_latency_high")
    states = []
    for minute in range(12):
        result = monitor(project, now=BASE_TS + 60 * minute, rules=[rule])
        states.append(result.rules[0].state)
    # Active from minute 1; `for: 5m` keeps it pending until minute 6; notified once, not every minute.
    assert states == ["ok"] + ["pending"] * 5 + ["firing"] * 6
    assert [e["status"] for e in _events(project)] == ["firing"]


def test_repeat_interval_renotifies_a_still_firing_alert(tmp_path: Path) -> None:
    project = _project(tmp_path)
    state = state_of(project)
    labels = label_key({"view": "v"})
    for hour in range(6):
        state.record(
            [
                Update(
                    "set",
                    "featurelake_online_store_keys",
                    "featurelake_online_store_keys",
                    labels,
                    0,
                    "gauge",
                )
            ],
            "synthetic",
            ts=BASE_TS + 3600 * hour,
        )
    rule = next(r for r in project_rules(project) if r.name == "online_store_empty")  # repeat_interval 1h
    for quarter in range(0, 5 * 4 + 1):  # every 15 minutes for 5 hours
        monitor(project, now=BASE_TS + 900 * quarter, rules=[rule])
    events = _events(project)
    assert [e["repeat"] for e in events] == [False, True, True, True, True, True]
    assert {e["started_at"] for e in events} == {events[0]["started_at"]}


def test_dry_run_notifies_nobody_and_changes_no_alert_state(tmp_path: Path) -> None:
    project = _project(tmp_path)
    scenario = next(s for s in SCENARIOS if s.rule == "online_store_empty")
    _feed(project, scenario)
    result = monitor(project, now=BASE_TS + 180, notify=False)
    assert [r.state for r in result.rules if r.rule.name == "online_store_empty"] == ["firing"]
    assert result.events and not _events(project)
    assert state_of(project).alert_states() == {}


def test_project_rules_override_defaults_field_by_field_and_disable(tmp_path: Path) -> None:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(
        "defaults: {repeat_interval: 30m}\n"
        "rules:\n"
        "  - name: high_feature_null_rate\n"
        "    threshold: 0.25\n"
        "  - name: model_too_old\n"
        "    enabled: false\n"
        "  - name: sync_lagging\n"
        "    metric: featurelake_online_sync_lag_seconds\n"
        '    op: ">"\n'
        "    threshold: 3600\n"
        "    severity: warning\n"
        "    summary: '{view} is {value}s behind main'\n"
    )
    project = _project(tmp_path, f"  rules: {rules_file}\n")
    rules = {r.name: r for r in project_rules(project)}
    assert "model_too_old" not in rules
    assert rules["high_feature_null_rate"].threshold == 0.25
    assert rules["high_feature_null_rate"].severity == "warning"  # kept from the shipped rule
    assert rules["high_feature_null_rate"].repeat_interval == "4h"  # file defaults apply to new rules only
    assert rules["sync_lagging"].repeat_interval == "30m"
    state = state_of(project)
    state.record(
        [
            Update("set", m, m, label_key({"view": "v", "feature": "f"}), 0.2, "gauge")
            for m in ("featurelake_feature_null_rate",)
        ]
        + [
            Update(
                "set",
                "featurelake_online_sync_lag_seconds",
                "featurelake_online_sync_lag_seconds",
                label_key({"view": "v"}),
                7200,
                "gauge",
            )
        ],
        "synthetic",
        ts=BASE_TS,
    )
    result = monitor(project, now=BASE_TS)
    states = {r.rule.name: r.state for r in result.rules}
    assert states["high_feature_null_rate"] == "ok"  # 0.2 is under the project's 0.25
    assert states["sync_lagging"] == "firing"
    assert _events(project)[0]["summary"] == "v is 7200s behind main"


def test_project_rules_alone_when_defaults_are_off(tmp_path: Path) -> None:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(
        "rules:\n  - {name: only, metric: featurelake_online_store_keys, op: '<', threshold: 10, severity: info}\n"
    )
    project = _project(tmp_path, f"  rules: {rules_file}\n  default_rules: false\n")
    assert [r.name for r in project_rules(project)] == ["only"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - name: a\n    metric: featurelake_nope\n    op: '>'\n    threshold: 1\n    severity: info\n",
            "alerts.yaml:2: rule 'a': unknown metric 'featurelake_nope': use one of",
        ),
        (
            "rules:\n  - name: a\n    metric: featurelake_online_store_keys\n    op: '>'\n    threshold: 1\n"
            "    severity: info\n  - name: b\n    metric: featurelake_online_store_keys\n    op: '>'\n"
            "    threshold: [1\n",
            "alerts.yaml:11: alert rules are not valid YAML",
        ),
        (
            "rules:\n  - name: a\n    metric: featurelake_online_store_keys\n    op: '>'\n    threshold: 1\n"
            "    severity: info\n\n  - name: b\n    metric: featurelake_job_failure_total\n    aggregate: increase\n"
            "    op: '>'\n    threshold: 1\n    severity: info\n",
            "alerts.yaml:8: rule 'b': aggregate 'increase' needs a window",
        ),
        (
            "rules:\n  - {name: a, metric: featurelake_feature_null_rate, match: {model: x}, op: '>', threshold: 1, "
            "severity: info}\n",
            "alerts.yaml:2: rule 'a': featurelake_feature_null_rate has no label 'model'",
        ),
        (
            "rules:\n  - {name: a, metric: featurelake_online_store_keys, op: '>', threshold: 1, severity: loud}\n",
            "alerts.yaml:2: rule 'a': severity: Input should be 'info', 'warning', 'error' or 'critical'",
        ),
        (
            "rules:\n  - {name: a, metric: featurelake_online_store_keys, op: '>', threshold: 1, severity: info, "
            "for: 5 minutes}\n",
            "alerts.yaml:2: rule 'a': for '5 minutes' is not a duration: expected a duration like 30s",
        ),
        (
            "rules:\n  - {name: a, metric: featurelake_online_store_keys, op: '>', threshold: 1, severity: info, "
            "summary: '{feature} is off'}\n",
            "alerts.yaml:2: rule 'a': summary uses feature, which this rule's alerts do not have",
        ),
        (
            "rules:\n  - {name: a, metric: featurelake_prediction_latency_seconds, op: '>', threshold: 1, "
            "severity: info}\n",
            "alerts.yaml:2: rule 'a': aggregate 'last' does not apply to histogram",
        ),
        ("alerts: []\n", "alerts.yaml:1: unknown top-level key(s) alerts"),
    ],
    ids=[
        "unknown-metric",
        "malformed-yaml",
        "missing-window",
        "unknown-label",
        "bad-severity",
        "bad-duration",
        "bad-placeholder",
        "histogram-needs-quantile",
        "unknown-top-level",
    ],
)
def test_bad_rules_fail_with_file_line_and_what_to_do(tmp_path: Path, text: str, message: str) -> None:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(text)
    project = _project(tmp_path, f"  rules: {rules_file}\n")
    state = state_of(project)
    state.record(
        [
            Update(
                "set",
                "featurelake_online_store_keys",
                "featurelake_online_store_keys",
                (("view", "v"),),
                0,
                "gauge",
            )
        ],
        "synthetic",
    )
    with pytest.raises(ConfigError) as err:
        monitor(project)
    assert message in str(err.value)
    # Nothing was notified and no alert state moved.
    assert not _events(project)
    assert state.alert_states() == {}


def test_missing_rules_file_names_the_setting(tmp_path: Path) -> None:
    project = _project(tmp_path, "  rules: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"cannot read alert rules .*nowhere.yaml.*fix monitoring.rules"):
        monitor(project)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    inf = float("inf")
    # 100 observations: 50 <= 0.1, 40 in (0.1, 0.5], 10 in (0.5, 1].
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.1 + 0.4 * 25 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    # Everything in +Inf: Prometheus answers the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 0.0), (inf, 5.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) != histogram_quantile(
        0.5, [(0.1, 0.0), (inf, 0.0)]
    )


def test_cli_lists_rules_and_metrics_and_evaluates(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from featurelake.cli.main import cli

    project = _project(tmp_path)
    _feed(project, next(s for s in SCENARIOS if s.rule == "online_store_empty"))
    root = str(project.root)
    runner = CliRunner()
    listed = runner.invoke(cli, ["-C", root, "monitor", "--list-rules", "--json"])
    assert listed.exit_code == 0, listed.output
    by_name = {r["name"]: r for r in json.loads(listed.stdout)}
    assert by_name["job_failure_spike"]["promql"].startswith("sum by (job, view) (increase(")
    assert by_name["prediction_latency_high"]["for"] == "5m"
    shown = runner.invoke(cli, ["-C", root, "monitor", "--metrics", "--json"])
    assert shown.exit_code == 0, shown.output
    assert {(m["sample"], m["labels"]["view"], m["value"]) for m in json.loads(shown.stdout)} == {
        ("featurelake_online_store_keys", "user_features", 50.0),
        ("featurelake_online_store_keys", "other", 5.0),
    }
    dry = runner.invoke(cli, ["-C", root, "monitor", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would send 0 notification(s)" in dry.stdout
    assert not (project.root / ".featurelake" / "alerts.jsonl").exists()
