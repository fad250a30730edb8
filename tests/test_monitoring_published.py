"""`high_feature_null_rate` follows published data, and its alerts say which run and whether it was published.

A refused backfill records its null rates (`published="false"`: visible in `monitor --metrics`) but main never
held those rows, so the rule (matching `published="true"` by default) stays quiet; a run that *was* published
with the same nulls fires, naming the run, and the next clean published run resolves it.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import featurelake
from featurelake.errors import AuditFailed
from featurelake.monitoring.alerts import MonitorResult
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.state import label_key
from tests.helpers import DEFAULT_FEATURES, START, day, make_project, transactions

# A second view over the same source whose null check only warns, so nulls can reach main.
FEATURES = (
    DEFAULT_FEATURES
    + """
lenient = FeatureView(
    name="lenient",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="SELECT user_id, date_trunc('day', ts) AS event_ts, avg(amount) AS amount_avg_1d FROM source GROUP BY ALL",
    fields={"amount_avg_1d": "double"},
    checks=[checks.null_rate("amount_avg_1d", max=0.10, severity="warn")],
)
"""
)
CONFIG = "project: pub\nmonitoring:\n  channels: [{type: file, path: .featurelake/alerts.jsonl}]\n"


def _null_rate(fl: featurelake.Featurelake, view: str, published: str) -> float | None:
    values = state_of(fl.project).values_at("featurelake_feature_null_rate", time.time() + 86400)
    return values.get(label_key({"view": view, "feature": "amount_avg_1d", "published": published}))


def _null_alerts(result: MonitorResult) -> list[tuple[str, str]]:
    return [(i.labels["view"], i.summary) for r, i in result.firing if r.name == "high_feature_null_rate"]


def test_refused_runs_do_not_fire_and_published_ones_name_their_run(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", features=FEATURES, config=CONFIG, data=transactions(days=5))
    broken = transactions(days=2, start=START + timedelta(days=5), null_share=0.8, seed=7)
    pq.write_table(broken, root / "data" / "transactions" / "part-broken.parquet")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(5), run_id="clean")
        with pytest.raises(AuditFailed) as refused:
            fl.backfill("user_features", day(5), day(7), run_id="broken")
        observed = next(r.observed for r in refused.value.report.results if r.check == "null_rate")  # type: ignore[attr-defined]

        # main has no nulls; the refused run's numbers are kept apart, under published="false".
        main = fl.read("user_features")
        assert main.num_rows > 0 and pc.sum(pc.is_null(main["amount_avg_1d"])).as_py() == 0
        assert _null_rate(fl, "user_features", "true") == 0.0
        assert _null_rate(fl, "user_features", "false") == pytest.approx(observed)
        assert observed > 0.1
        quiet = fl.monitor()
        assert _null_alerts(quiet) == []

        # The same nulls published (the lenient view only warns): the alert fires and names the run.
        published = fl.backfill("lenient", day(5), day(7), run_id="nulls_published")
        assert published.snapshot_id == fl.history("lenient")[0].snapshot_id  # on main
        fired = fl.monitor()
        [(view, summary)] = _null_alerts(fired)
        assert view == "lenient"
        assert "null rate of amount_avg_1d in lenient" in summary
        assert "(run nulls_published, published)" in summary
        [event] = [e for e in fired.events if e.alert == "high_feature_null_rate"]
        assert event.status == "firing" and event.labels["published"] == "true"
        assert event.extra == {"run_id": "nulls_published", "published": True}
        logged = [
            json.loads(line) for line in (root / ".featurelake" / "alerts.jsonl").read_text().splitlines()
        ]
        assert [
            (e["alert"], e["extra"]["run_id"]) for e in logged if e["alert"] == "high_feature_null_rate"
        ] == [("high_feature_null_rate", "nulls_published")]

        # A clean published run of that view brings its series back under the limit: resolved.
        fl.backfill("lenient", day(0), day(5), run_id="lenient_clean")
        resolved = fl.monitor()
        assert _null_alerts(resolved) == []
        assert [(e.alert, e.status, e.extra.get("run_id")) for e in resolved.events] == [
            ("high_feature_null_rate", "resolved", "lenient_clean")
        ]
