"""The exported Prometheus rules: ``promtool check rules`` and ``promtool test rules`` on the same synthetic
histories the local evaluator is tested with, expecting the same alerts, values and summaries."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from featurelake.cli.main import cli
from featurelake.monitoring.rules import Rule, load_rules
from featurelake.monitoring.rules.promql import expr
from tests.helpers import make_project
from tests.monitoring_scenarios import SCENARIOS
from tests.monitoring_servers import need


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False)


def _export(tmp_path: Path, config: str = "project: mon\n", count: int = 7) -> Path:
    root = make_project(tmp_path / "proj", config=config)
    out = tmp_path / "prom" / "featurelake-rules.yml"
    result = CliRunner().invoke(cli, ["-C", str(root), "monitor", "--export-prometheus-rules", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {count} alerting rules" in result.output
    return out


@pytest.mark.promtool
def test_promtool_check_rules_accepts_the_export(tmp_path: Path) -> None:
    out = _export(tmp_path)
    checked = _promtool("check", "rules", str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    doc = yaml.safe_load(out.read_text())
    exported = {r["alert"]: r for r in doc["groups"][0]["rules"]}
    assert exported["prediction_latency_high"]["for"] == "5m"
    assert exported["job_failure_spike"]["labels"] == {"severity": "critical"}


def _test_group(rule: Rule, scenario: Any) -> dict[str, Any]:
    series = [{"series": s.promql(), "values": " ".join(f"{v:g}" for v in s.values)} for s in scenario.series]
    cases = []
    for minute, expected in sorted(scenario.checks.items()):
        cases.append(
            {
                "eval_time": f"{minute}m",
                "alertname": rule.name,
                "exp_alerts": [
                    {
                        "exp_labels": {**e.labels, "severity": rule.severity},
                        "exp_annotations": {
                            "summary": rule.render(e.labels, e.value, e.threshold),
                            "repeat_interval": rule.repeat_interval,
                        },
                    }
                    for e in expected
                ],
            }
        )
    return {"interval": "1m", "input_series": series, "alert_rule_test": cases}


@pytest.mark.promtool
def test_promtool_test_rules_fire_and_resolve_like_the_local_evaluator(tmp_path: Path) -> None:
    out = _export(tmp_path)
    rules = {r.name: r for r in load_rules()}
    tests = [_test_group(rules[s.rule], s) for s in SCENARIOS]
    spec = tmp_path / "prom" / "featurelake-rules.test.yml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [out.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
        )
    )
    ran = _promtool("test", "rules", spec.name, cwd=spec.parent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout
    # Every rule was exercised firing and clear.
    for group in tests:
        outcomes = [bool(case["exp_alerts"]) for case in group["alert_rule_test"]]
        assert True in outcomes and False in outcomes


@pytest.mark.promtool
def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness above can fail: a wrong expected value makes promtool report the mismatch."""
    out = _export(tmp_path)
    rules = {r.name: r for r in load_rules()}
    scenario = next(s for s in SCENARIOS if s.rule == "high_feature_null_rate")
    group = _test_group(rules[scenario.rule], scenario)
    firing = next(c for c in group["alert_rule_test"] if c["exp_alerts"])
    firing["exp_alerts"][0]["exp_labels"]["feature"] = "wrong"
    spec = tmp_path / "prom" / "wrong.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [out.name], "evaluation_interval": "1m", "tests": [group]}))
    ran = _promtool("test", "rules", spec.name, cwd=spec.parent)
    assert ran.returncode != 0
    assert "high_feature_null_rate" in ran.stdout + ran.stderr


@pytest.mark.promtool
def test_project_overrides_reach_the_export(tmp_path: Path) -> None:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(
        "rules:\n  - {name: model_too_old, threshold: 336, match: {stage: 'production|staging'}}\n"
        "  - {name: high_feature_null_rate, enabled: false}\n"
    )
    out = _export(tmp_path, f"project: mon\nmonitoring:\n  rules: {rules_file}\n", count=6)
    doc = yaml.safe_load(out.read_text())
    exported = {r["alert"]: r["expr"] for r in doc["groups"][0]["rules"]}
    assert "high_feature_null_rate" not in exported
    assert exported["model_too_old"] == 'featurelake_model_age_hours{stage=~"production|staging"} > 336'
    assert _promtool("check", "rules", str(out), cwd=tmp_path).returncode == 0


def test_exported_expressions_cover_every_rule_shape() -> None:
    rules = {r.name: r for r in load_rules()}
    assert expr(rules["job_failure_spike"]) == (
        "sum by (job, view) (increase(featurelake_job_failure_total[1h])) > 3"
    )
    assert expr(rules["prediction_latency_high"]) == (
        "histogram_quantile(0.99, sum by (endpoint, le) "
        "(rate(featurelake_prediction_latency_seconds_bucket[5m]))) > 0.5"
    )
