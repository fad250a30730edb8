"""Feature definitions: entities, sources and feature views (see README)."""

from datetime import timedelta

from featurelake import Aggregation, Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts,
               count(*) AS txn_count_1d, sum(amount) AS amount_sum_1d, avg(amount) AS amount_avg_1d
        FROM source GROUP BY ALL
    """,
    timestamp_field="event_ts",
    fields={"txn_count_1d": "long", "amount_sum_1d": "double", "amount_avg_1d": "double"},
    checks=[checks.null_rate("amount_avg_1d", max=0.10), checks.between("txn_count_1d", 0, 10_000)],
    ttl=timedelta(days=7),
)

# Sliding windows, declared: the row of each user and day t holds the 7 (and 30) days up to t, (t - 7d, t].
# Backfills read the source from 31 days before their window, so a window edge never cuts a sum short.
user_windows = FeatureView(
    name="user_windows",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    aggregations=[
        Aggregation("amount", "sum", window=timedelta(days=7)),  # amount_sum_7d
        Aggregation("*", "count", window=timedelta(days=7)),  # count_7d
        Aggregation("amount", "max", window=timedelta(days=30)),  # amount_max_30d
    ],
    step=timedelta(days=1),
    checks=[checks.between("count_7d", 0, 70_000)],
    ttl=timedelta(days=2),
)
