"""End to end with a real Prometheus (Debian's): it scrapes ``featurelake serve`` and the Pushgateway the jobs
push to, loads the exported rules, and ``featurelake monitor`` evaluates the same rules through its API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake import telemetry as metrics
from featurelake.config import SecretURL
from featurelake.errors import FeaturelakeError, UsageError
from featurelake.monitoring.alerts import export_prometheus_rules
from featurelake.monitoring.rules import load_rules
from featurelake.monitoring.rules.promql import dump
from tests.helpers import DEFAULT_FEATURES, day, make_project
from tests.monitoring_servers import (
    free_port,
    need,
    prom_query,
    prometheus,
    pushgateway,
    wait_for,
    wait_http,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VIEW = "user_features"
# A warn-only null-rate check: the backfill publishes, and the high null rate still reaches monitoring.
FEATURES = DEFAULT_FEATURES.replace(
    'checks.null_rate("amount_avg_1d", max=0.10)',
    'checks.null_rate("amount_avg_1d", max=0.10, severity="warn")',
)


def _lookup(port: int, n: int) -> None:
    body = json.dumps({"features": [f"{VIEW}:amount_avg_1d"], "entities": {"user_id": [1, 2, 3]}}).encode()
    for _ in range(n):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/get-online-features",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def _series(url: str, query: str) -> list[dict[str, Any]]:
    return prom_query(url, query)


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "featurelake.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@pytest.mark.prometheus
@pytest.mark.pushgateway
def test_prometheus_scrapes_serve_and_the_pushgateway_and_monitor_evaluates_through_it(
    tmp_path: Path,
) -> None:
    from tests.helpers import transactions

    with pushgateway(tmp_path) as gateway:
        root = make_project(
            tmp_path / "proj",
            features=FEATURES,
            config=(
                "project: mon\nmonitoring:\n"
                f"  pushgateway: {gateway}\n"
                "  flush_interval_seconds: 0.2\n"
                "  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"
            ),
            data=transactions(null_share=0.3),
        )
        fl = featurelake.open(root)
        fl.apply()
        fl.backfill(VIEW, day(0), day(5))
        fl.sync()

        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "featurelake", "-C", str(root), "serve", "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", serve, log)
            _lookup(port, 20)
            rules = tmp_path / "prom" / "featurelake-rules.yml"
            export_prometheus_rules(fl.project, rules)
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": "featurelake-serve", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
                    {
                        "job_name": "featurelake-pushgateway",
                        "honor_labels": True,
                        "static_configs": [{"targets": [gateway.removeprefix("http://")]}],
                    },
                ],
            }
            with prometheus(tmp_path / "prom", config) as prom:
                # The latency histogram, scraped from the real server process.
                buckets = wait_for(
                    lambda: _series(
                        prom,
                        'featurelake_prediction_latency_seconds_bucket{job="featurelake-serve",'
                        'endpoint="/get-online-features",le="+Inf"}',
                    ),
                    "the latency histogram in Prometheus",
                )
                assert float(buckets[0]["value"][1]) >= 20
                les = {
                    s["metric"]["le"] for s in _series(prom, "featurelake_prediction_latency_seconds_bucket")
                }
                assert {"0.005", "0.5", "+Inf"} <= les

                # The jobs' pushed series; then failures in two steps so increase() sees them happen.
                wait_for(
                    lambda: _series(prom, f'featurelake_feature_null_rate{{view="{VIEW}"}} > 0.1'),
                    "the pushed null rate",
                )
                with pytest.raises(UsageError):
                    fl.backfill(VIEW, day(3), day(1))
                wait_for(
                    lambda: _series(prom, 'featurelake_job_failure_total{reason="usage"} == 1'),
                    "the first failure",
                )
                for _ in range(4):
                    with pytest.raises(UsageError):
                        fl.backfill(VIEW, day(3), day(1))
                wait_for(
                    lambda: _series(prom, 'featurelake_job_failure_total{reason="usage"} == 5'),
                    "all five failures",
                )

                # Prometheus itself loaded the exported rules and fires the alert.
                with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as resp:
                    loaded = json.loads(resp.read())
                names = {r["name"]: r["health"] for g in loaded["data"]["groups"] for r in g["rules"]}
                assert names == dict.fromkeys((r.name for r in load_rules()), "ok")
                wait_for(
                    lambda: _series(prom, 'ALERTS{alertname="high_feature_null_rate",alertstate="firing"}'),
                    "Prometheus firing high_feature_null_rate",
                )

                # `featurelake monitor` evaluating through the Prometheus API.
                fl.project.config.settings.monitoring.prometheus_url = SecretURL(prom)
                result = fl.monitor()
                assert result.evaluated_by == "prometheus"
                firing = {(rule.name, i.labels.get("view")) for rule, i in result.firing}
                assert ("high_feature_null_rate", VIEW) in firing
                assert ("job_failure_spike", VIEW) in firing
                null = next(i for rule, i in result.firing if rule.name == "high_feature_null_rate")
                assert (
                    null.labels["feature"] == "amount_avg_1d" and null.value is not None and null.value > 0.1
                )

                # Every dashboard query is valid PromQL against the real server.
                for expr in _dashboard_exprs():
                    prom_query(prom, expr.replace("$__rate_interval", "1m"))
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        fl.close()

    # The server also appended its latency to the local state (flushed on shutdown at the latest).
    with featurelake.open(root) as again:
        from featurelake.monitoring.recorder import state_of

        counts = state_of(again.project).values_at("featurelake_prediction_latency_seconds_count", 1e12)
        assert counts[(("endpoint", "/get-online-features"),)] == 20


def test_monitor_against_a_prometheus_that_is_down_is_a_clear_error(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "proj",
        config=f"project: mon\nmonitoring:\n  prometheus_url: http://u:secret@127.0.0.1:{free_port()}\n"
        "  channels: [{type: file, path: alerts.jsonl}]\n",
    )
    with featurelake.open(root) as fl:
        with pytest.raises(FeaturelakeError) as err:
            fl.monitor()
        message = str(err.value)
        assert "cannot query Prometheus at http://***@127.0.0.1" in message
        assert "monitoring.prometheus_url" in message and "secret" not in message
        assert not (root / "alerts.jsonl").read_text()


@pytest.mark.promtool
def test_shipped_deploy_files_are_valid_and_current(tmp_path: Path) -> None:
    prom = DEPLOY / "prometheus"
    checked = subprocess.run(
        [need("promtool"), "check", "config", "prometheus.yml"],
        cwd=prom,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shipped = (prom / "featurelake-rules.yml").read_text()
    assert shipped == dump(load_rules()), "regenerate deploy/prometheus/featurelake-rules.yml"
    # The dashboard: valid JSON, unique panel ids, and every series it queries is one featurelake documents.
    dash = json.loads((DEPLOY / "grafana" / "featurelake.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = set(re.findall(r"featurelake_[a-z_]+", " ".join(_dashboard_exprs())))
    known = {
        n for spec in metrics.SPECS.values() for n in (spec.name, spec.name + "_bucket", spec.name + "_count")
    }
    known |= {"featurelake_http_requests_total"}  # the server's own, in the same registry
    assert names <= known, names - known
    covered = " ".join(_dashboard_exprs())
    for must in (
        "prediction_latency_seconds_bucket",
        "job_failure_total",
        "feature_null_rate",
        "sync_lag_seconds",
    ):
        assert must in covered
