#!/usr/bin/env bash
# The quickstart, end to end, on the embedded default (SQLite catalog + local warehouse).
set -euo pipefail
cd "$(dirname "$0")"
FL=${FL:-featurelake}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "0. start clean"
rm -rf .featurelake data

step "1. generate ~200k seeded transactions over 60 days"
python generate_data.py

step "2. apply the feature definitions (creates features.user_features and features.user_windows, partitioned by day(event_ts))"
$FL apply

step "3. Write-Audit-Publish backfill of August"
$FL backfill user_features --start 2026-08-01 --end 2026-09-01 --run-id aug
$FL backfill user_windows --start 2026-08-01 --end 2026-09-01 --run-id aug
FIRST=$($FL history user_features --json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["snapshot_id"])')

step "4. backfill September (a second published snapshot)"
$FL backfill user_features --start 2026-09-01 --end 2026-09-30 --run-id sep
$FL backfill user_windows --start 2026-09-01 --end 2026-09-30 --run-id sep

step "5. an upstream export breaks: two days with most amounts missing"
python generate_data.py --corrupt
BEFORE=$($FL history user_features --json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["snapshot_id"])')
set +e
$FL backfill user_features --start 2026-09-30 --end 2026-10-02 --run-id broken
code=$?
set -e
AFTER=$($FL history user_features --json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["snapshot_id"])')
echo "backfill exit code: $code (1 = refused by the audit)"
echo "main before: $BEFORE   main after: $AFTER"
if [ "$code" != 1 ] || [ "$BEFORE" != "$AFTER" ]; then echo "demo FAILED: the corrupted backfill was not refused" >&2; exit 1; fi
echo "refused: main is unchanged; the bad data waits on branch audit_broken for inspection"

step "6. history with lineage (code-version, run-id, pipeline-user, window)"
$FL history user_features

step "7. time travel: the table as it was after the August backfill (snapshot $FIRST)"
$FL read user_features --snapshot "$FIRST" --limit 5
AS_OF=$($FL history user_features --json | python -c 'import json,sys; print(json.load(sys.stdin)[1]["published_at"])')
$FL read user_features --as-of "$AS_OF" --output .featurelake/august.parquet
$FL read user_features --output .featurelake/now.parquet
python - <<'PY'
import pyarrow.compute as pc, pyarrow.parquet as pq
for name in ("august", "now"):
    t = pq.read_table(f".featurelake/{name}.parquet")
    lo, hi = pc.min_max(t["event_ts"]).values()
    print(f"{name:>6}: {t.num_rows} rows, days {lo.as_py():%Y-%m-%d} .. {hi.as_py():%Y-%m-%d}")
PY

step "7b. sliding windows across backfills: user_windows' 7-day sums at the start of September"
# September's backfill read the source from 31 days before its window, so its first days' 7-day sums count
# August's transactions exactly as one backfill of both months would.
python - <<'PY'
import math
from datetime import UTC, datetime, timedelta
import duckdb, pyarrow.compute as pc
import featurelake

t = datetime(2026, 9, 3, tzinfo=UTC)
with featurelake.open(".") as fl:
    rows = fl.read("user_windows")
at_t = rows.filter(pc.equal(rows["event_ts"], t)).to_pylist()
raw = dict(duckdb.sql(
    "SELECT user_id, sum(amount) FROM 'data/transactions/*.parquet' WHERE ts > $lo AND ts <= $hi GROUP BY 1",
    params={"lo": t - timedelta(days=7), "hi": t},
).fetchall())


def same(got, want):
    return got is None and want is None or None not in (got, want) and math.isclose(got, want, rel_tol=1e-9)


bad = [r["user_id"] for r in at_t if not same(r["amount_sum_7d"], raw.get(r["user_id"]))]
missing = set(raw) - {r["user_id"] for r in at_t}
print(f"user_windows: {rows.num_rows} rows; on {t:%Y-%m-%d}, {len(at_t)} users have a row, {len(raw)} with "
      f"transactions in the 7 days before; amount_sum_7d matches the raw transactions for all of them: "
      f"{not bad and not missing}")
if bad or missing:
    raise SystemExit(f"demo FAILED: amount_sum_7d differs for users {sorted(bad)[:5]}, missing {sorted(missing)[:5]}")
PY

step "8. a point-in-time correct training set, a scikit-learn model bound to its feature snapshot"
python train_model.py entities
$FL training-set --entities .featurelake/entities.parquet \
  --features user_features:txn_count_1d,user_features:amount_sum_1d,user_features:amount_avg_1d \
  --output .featurelake/train.parquet
python train_model.py fit
$FL models register activity --artifact .featurelake/model.pkl --flavor pickle \
  --training-set .featurelake/train.parquet --metric "auc=$(cat .featurelake/auc.txt)" --description "active tomorrow?" \
  --default txn_count_1d=0 --default amount_sum_1d=0 --default amount_avg_1d=0
$FL models promote activity 1.0.0 Staging --reason "held-out AUC $(cat .featurelake/auc.txt)"
$FL models promote activity 1.0.0 Production --reason "first model"
$FL models show activity@production
$FL models history activity

step "9. batch prediction: the Production model scores every user's latest features into predictions.activity"
# Write-Audit-Publish like a backfill: scored into branch audit_<run id>, audited, then published to main.
$FL predict activity --view user_features --run-id score_all
$FL predict activity@1.0.0 --view user_features --start 2026-09-22 --end 2026-09-29 \
  --where "txn_count_1d >= 2" --output activity_last_week --run-id score_week
python - <<'PY'
import pyarrow.compute as pc
import featurelake

with featurelake.open(".") as fl:
    for name in ("predictions.activity", "predictions.activity_last_week"):
        tbl = fl.project.catalog.load_table(name)
        t = tbl.scan().to_arrow()
        summary = tbl.current_snapshot().summary.additional_properties
        lo, hi = pc.min_max(t["prediction"]).values()
        print(f"{name}: {t.num_rows} predictions in [{lo.as_py():.3f}, {hi.as_py():.3f}]; lineage on every row: "
              f"{t['model_name'][0]} {t['model_version'][0]}, feature snapshot {t['feature_snapshot_id'][0]}, "
              f"run {t['run_id'][0]}")
        print(f"  snapshot summary: code-version {summary['code-version'][:12]}, run-id {summary['run-id']}, "
              f"model {summary['featurelake.model-name']} {summary['featurelake.model-version']}")
    print(t.slice(0, 3).to_pandas().to_string(index=False))
PY

step "done"
