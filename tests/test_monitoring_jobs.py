"""Job hooks on real jobs: outcomes, reasons, rows, audit results into the state; Pushgateway pushes."""

from __future__ import annotations

import logging
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import featurelake
from featurelake.errors import AuditFailed, UsageError
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import label_key
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions
from tests.monitoring_servers import pushgateway

VIEW = "user_features"
FILE_ONLY = "monitoring:\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"


def _open(tmp_path: Path, config: str = "", **kw: object) -> featurelake.Featurelake:
    root = make_project(tmp_path / "proj", config="project: mon\n" + FILE_ONLY + config, **kw)  # type: ignore[arg-type]
    fl = featurelake.open(root)
    fl.apply()
    return fl


def _value(fl: featurelake.Featurelake, sample: str, **labels: str) -> float | None:
    return state_of(fl.project).values_at(sample, time.time() + 1).get(label_key(labels))


def test_backfill_records_success_rows_duration_and_null_rates(tmp_path: Path) -> None:
    with _open(tmp_path) as fl:
        first = fl.backfill(VIEW, day(0), day(3))
        second = fl.backfill(VIEW, day(3), day(6))
        table = f"features.{VIEW}"
        assert _value(fl, "featurelake_job_success_total", job="backfill", view=VIEW) == 2
        assert _value(fl, "featurelake_job_success_total", job="apply", view="all") == 1
        assert (
            _value(fl, "featurelake_rows_written_total", job="backfill", table=table)
            == first.rows + second.rows
        )
        assert _value(fl, "featurelake_job_duration_seconds_count", job="backfill") == 2
        assert 0 < _value(fl, "featurelake_job_duration_seconds_sum", job="backfill") < 600  # type: ignore[operator]
        last = _value(fl, "featurelake_last_success_timestamp_seconds", job="backfill", view=VIEW)
        assert last is not None and abs(last - time.time()) < 600
        for feature in ("txn_count_1d", "amount_sum_1d", "amount_avg_1d"):
            assert (
                _value(fl, "featurelake_feature_null_rate", view=VIEW, feature=feature, published="true")
                == 0.0
            )
        assert (
            _value(fl, "featurelake_feature_null_rate", view=VIEW, feature="user_id", published="true")
            is None
        )  # not a feature
        assert (
            _value(fl, "featurelake_job_failure_total", job="backfill", view=VIEW, reason="audit_failed")
            is None
        )
        # Nothing is wrong, so nothing fires.
        assert fl.monitor().firing == []


def test_failed_audits_record_reason_checks_and_fire_the_rules(tmp_path: Path) -> None:
    with _open(tmp_path, data=transactions(null_share=0.3)) as fl:
        for i in range(4):
            with pytest.raises(AuditFailed) as err:
                fl.backfill(VIEW, day(i), day(i + 1))
        report = err.value.report
        observed = next(r.observed for r in report.results if r.check == "null_rate")  # type: ignore[attr-defined]
        assert (
            _value(fl, "featurelake_job_failure_total", job="backfill", view=VIEW, reason="audit_failed") == 4
        )
        assert (
            _value(fl, "featurelake_audit_failures_total", view=VIEW, check="null_rate(amount_avg_1d)") == 4
        )
        # Recorded as a run that did not reach main; the null rate rule follows published data only.
        assert _value(
            fl, "featurelake_feature_null_rate", view=VIEW, feature="amount_avg_1d", published="false"
        ) == pytest.approx(observed)
        assert (
            _value(fl, "featurelake_feature_null_rate", view=VIEW, feature="amount_avg_1d", published="true")
            is None
        )
        result = fl.monitor()
        firing = {(rule.name, tuple(sorted(i.labels.items()))) for rule, i in result.firing}
        assert firing == {("job_failure_spike", (("job", "backfill"), ("view", VIEW)))}
        assert {e.alert for e in result.events} == {"job_failure_spike"}


def test_usage_errors_are_failures_with_their_reason(tmp_path: Path) -> None:
    with _open(tmp_path) as fl:
        with pytest.raises(UsageError):
            fl.backfill(VIEW, day(3), day(1))
        assert _value(fl, "featurelake_job_failure_total", job="backfill", view=VIEW, reason="usage") == 1
        assert _value(fl, "featurelake_job_duration_seconds_count", job="backfill") == 1


def test_drift_scores_and_the_views_own_limit_reach_the_drift_rule(tmp_path: Path) -> None:
    features = DEFAULT_FEATURES.replace(
        "checks=[", 'checks=[checks.drift("amount_avg_1d", max=0.0001, severity="warn"), '
    )
    with _open(tmp_path, features=features) as fl:
        fl.backfill(VIEW, day(0), day(5))  # first backfill: no reference, no score
        assert _value(fl, "featurelake_feature_drift_score", view=VIEW, feature="amount_avg_1d") is None
        fl.backfill(VIEW, day(5), day(10))  # warn-only: publishes, but records the drift
        score = _value(fl, "featurelake_feature_drift_score", view=VIEW, feature="amount_avg_1d")
        assert score is not None and score > 0.0001
        assert _value(fl, "featurelake_feature_drift_threshold", view=VIEW, feature="amount_avg_1d") == 0.0001
        [instance] = [i for r, i in fl.monitor().firing if r.name == "feature_drift_detected"]
        assert instance.threshold == 0.0001 and instance.value == pytest.approx(score)


def test_an_unusable_metrics_state_never_fails_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # featurelake.yaml is a file, so nothing can be created under it (works as root, unlike chmod).
    with _open(tmp_path, "  state: featurelake.yaml/metrics.db\n") as fl:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="featurelake.monitoring"):
            result = fl.backfill(VIEW, day(0), day(2))
        assert result.rows > 0
        assert fl.read(VIEW).num_rows == result.rows
        [record] = [r for r in caplog.records if "could not record" in r.getMessage()]
        assert "featurelake.yaml/metrics.db" in record.getMessage()
        assert "the job is not affected" in record.getMessage()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("featurelake_")
    }


@pytest.mark.pushgateway
def test_jobs_push_cumulative_series_to_a_real_pushgateway(tmp_path: Path) -> None:
    with pushgateway(tmp_path) as url, _open(tmp_path, f"  pushgateway: {url}\n") as fl:
        fl.backfill(VIEW, day(0), day(2))
        fl.backfill(VIEW, day(2), day(4))
        scraped = _scrape(url)
        common = (("instance", ""), ("project", "mon"))
        # Counters carry the state's totals: the second run's push says 2, not 1.
        key = ("featurelake_job_success_total", tuple(sorted((("job", "backfill"), ("view", VIEW), *common))))
        assert scraped[key] == 2
        apply_key = (
            "featurelake_job_success_total",
            tuple(sorted((("job", "apply"), ("view", "all"), *common))),
        )
        assert scraped[apply_key] == 1  # the apply group was not wiped by the backfill pushes
        count = ("featurelake_job_duration_seconds_count", tuple(sorted((("job", "backfill"), *common))))
        assert scraped[count] == 2
        null = (
            "featurelake_feature_null_rate",
            tuple(
                sorted(
                    (
                        ("feature", "amount_avg_1d"),
                        ("job", "featurelake"),
                        ("published", "true"),
                        ("view", VIEW),
                        *common,
                    )
                )
            ),
        )
        assert scraped[null] == 0.0
        rows = _value(fl, "featurelake_rows_written_total", job="backfill", table=f"features.{VIEW}")
        rows_key = (
            "featurelake_rows_written_total",
            tuple(sorted((("job", "backfill"), ("table", f"features.{VIEW}"), *common))),
        )
        assert scraped[rows_key] == rows


def test_a_down_pushgateway_is_logged_and_the_state_still_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.monitoring_servers import free_port

    url = f"http://user:s3cret@127.0.0.1:{free_port()}"
    with _open(tmp_path, f"  pushgateway: {url}\n  push_timeout_seconds: 0.5\n") as fl:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="featurelake.monitoring"):
            result = fl.backfill(VIEW, day(0), day(2))
        assert result.rows > 0
        assert _value(fl, "featurelake_job_success_total", job="backfill", view=VIEW) == 1
        messages = [r.getMessage() for r in caplog.records]
        assert any("could not push metrics group job=backfill" in m for m in messages), messages
        assert not any("s3cret" in m for m in messages)
