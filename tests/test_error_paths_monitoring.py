"""Alert rules files and channels with mistakes no other test made: ``rules:`` that is not a list, a rule that
is not a mapping, a boolean threshold, a quantile rule without its quantile, a match that is not a regex, a
threshold metric of the wrong kind or aggregate, a Slack webhook variable that holds no URL, and a Prometheus
(``monitoring.prometheus_url``) that refuses the rules' queries.

``featurelake monitor`` (``fl.monitor()``) refuses each with a ConfigError naming the rules file (and line and
rule, where there is one) or the channel, and what to write instead (a FeaturelakeError naming the server for
Prometheus); nothing is notified and no alert state moves.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import ConfigError, FeaturelakeError
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import Update
from tests.helpers import make_project

ALERTS = ".featurelake/alerts.jsonl"


def project_with(tmp_path: Path, monitoring: str) -> Path:
    return make_project(
        tmp_path / "proj",
        config=f"project: mon\nmonitoring:\n  channels: [{{type: file, path: {ALERTS}}}]\n{monitoring}",
    )


def events(root: Path) -> list[dict[str, Any]]:
    path = root / ALERTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record_empty_store(root: Path) -> None:
    """A metric on which the shipped ``online_store_empty`` rule would fire."""
    with featurelake.open(root) as fl:
        update = Update(
            "set",
            "featurelake_online_store_keys",
            "featurelake_online_store_keys",
            (("view", "v"),),
            0,
            "gauge",
        )
        state_of(fl.project).record([update], "synthetic")


def rule(**fields: object) -> str:
    base: dict[str, object] = {
        "name": "r",
        "metric": "featurelake_online_store_keys",
        "op": "'>'",
        "threshold": 1,
        "severity": "info",
    }
    base.update(fields)
    return "rules:\n  - {" + ", ".join(f"{k}: {v}" for k, v in base.items()) + "}\n"


CASES = [
    ("rules-not-a-list", "rules: {r: 1}\n", ["alerts.yaml:1", "`rules:` (a list)", "`defaults:`"]),
    ("rule-not-a-mapping", "rules:\n  - just-a-name\n", ["alerts.yaml", "rule #1", "mapping with a `name`"]),
    (
        "boolean-threshold",
        rule(threshold="true"),
        ["alerts.yaml:2", "rule 'r'", "threshold must be a number"],
    ),
    (
        "quantile-without-quantile",
        rule(metric="featurelake_prediction_latency_seconds", aggregate="quantile", window="5m"),
        ["alerts.yaml:2", "rule 'r'", "needs quantile", "0.99"],
    ),
    (
        "match-not-a-regex",
        rule(match="{view: '('}"),
        ["alerts.yaml:2", "rule 'r'", "match view", "not a valid regex"],
    ),
    (
        "threshold-metric-other-labels",
        rule(metric="featurelake_feature_drift_score", threshold_metric="featurelake_online_store_keys"),
        [
            "alerts.yaml:2",
            "rule 'r'",
            "threshold_metric 'featurelake_online_store_keys'",
            "gauge with the labels",
        ],
    ),
    (
        "threshold-metric-with-increase",
        rule(
            metric="featurelake_job_success_total",
            aggregate="increase",
            window="1h",
            threshold_metric="featurelake_last_success_timestamp_seconds",
        ),
        ["alerts.yaml:2", "rule 'r'", "threshold_metric works with aggregate 'last' only"],
    ),
]


@pytest.mark.parametrize(("text", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_rules_file_notifies_nothing(tmp_path: Path, text: str, needles: list[str]) -> None:
    rules_file = tmp_path / "alerts.yaml"
    rules_file.write_text(text)
    root = project_with(tmp_path, f"  rules: {rules_file}\n")
    record_empty_store(root)
    with featurelake.open(root) as fl:
        with pytest.raises(ConfigError) as ei:
            fl.monitor()
        msg = str(ei.value)
        for n in needles:
            assert n in msg, f"{n!r} not in message: {msg}"
        assert state_of(fl.project).alert_states() == {}
    assert events(root) == []
    assert rules_file.read_text() == text


def test_slack_webhook_variable_without_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_TEST_SLACK_URL", "hooks.slack.example/T000/B000")
    root = make_project(
        tmp_path / "proj",
        config="project: mon\nmonitoring:\n  channels: [{type: slack, webhook_url_env: FL_TEST_SLACK_URL}]\n",
    )
    record_empty_store(root)
    with featurelake.open(root) as fl:
        with pytest.raises(ConfigError) as ei:
            fl.monitor()
        msg = str(ei.value)
        assert "monitoring.channels[0] (slack)" in msg and "FL_TEST_SLACK_URL" in msg, msg
        assert "http(s) URL" in msg and "export" in msg, msg
        assert "hooks.slack.example" not in msg, "the variable's value may be a secret: it is never shown"
        assert state_of(fl.project).alert_states() == {}


class _FakePrometheus(BaseHTTPRequestHandler):
    """Answers every query the way the class attribute ``answer`` says: (HTTP status, JSON body)."""

    answer: tuple[int, dict[str, Any]] = (200, {})

    def do_GET(self) -> None:
        status, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, type[_FakePrometheus]]]:
    handler = type("Handler", (_FakePrometheus,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("answer", "needles"),
    [
        ((400, {"status": "error", "error": "parse error"}), ["refused", "HTTP 400", "parse error"]),
        ((200, {"status": "error", "error": "query timed out"}), ["refused", "query timed out"]),
    ],
    ids=["http-error", "error-status"],
)
def test_prometheus_that_refuses_the_query(
    tmp_path: Path,
    fake_prometheus: tuple[str, type[_FakePrometheus]],
    answer: tuple[int, dict[str, Any]],
    needles: list[str],
) -> None:
    url, handler = fake_prometheus
    handler.answer = answer
    root = project_with(tmp_path, f"  prometheus_url: {url}\n")
    with featurelake.open(root) as fl:
        with pytest.raises(FeaturelakeError) as ei:
            fl.monitor()
        msg = str(ei.value)
        for n in [f"Prometheus at {url}", *needles, "check the rule and the server"]:
            assert n in msg, f"{n!r} not in message: {msg}"
        assert "Traceback" not in msg
        assert state_of(fl.project).alert_states() == {}
    assert events(root) == []
