"""Feature definitions: entities, sources and feature views (see README)."""

from datetime import timedelta

from featurelake import Entity, FeatureView, Source, checks

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
