"""Mistakes in features.py that no other test made: each is refused by ``apply`` with a ConfigError that names the
view (or service, check, source) and says what to change, and nothing is created in the catalog.

Every case writes a project whose features.py holds one mistake, runs ``apply`` through the SDK and checks the
error, that features.py is byte for byte what the user wrote and that no feature table was created.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import ConfigError
from tests.helpers import DEFAULT_FEATURES, make_project
from tests.training_helpers import run_cli

VIEW = "user_features"

# An on-demand view and a feature service over the default view, for the cases that add a second object.
ON_DEMAND = """
import pyarrow.compute as pc
from featurelake import OnDemandFeatureView, RequestSource, FeatureService


def _ratio(t):
    return {"amount_vs_avg": pc.divide(t["amount"], t["amount_avg_1d"])}
"""


def features_with(old: str, new: str) -> str:
    assert old in DEFAULT_FEATURES, old
    return DEFAULT_FEATURES.replace(old, new)


def plus(extra: str) -> str:
    """The default features.py followed by ``extra`` (module level)."""
    return DEFAULT_FEATURES + textwrap.dedent(ON_DEMAND) + textwrap.dedent(extra)


def says(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    return msg


def refused_at_apply(root: Path) -> ConfigError:
    """Run ``apply`` on ``root``; return its ConfigError after checking that nothing changed."""
    written = (root / "features.py").read_bytes()
    with featurelake.open(root) as h:
        with pytest.raises(ConfigError) as ei:
            h.apply()
        assert not h.project.catalog.table_exists(f"features.{VIEW}"), "a refused apply created a table"
    assert (root / "features.py").read_bytes() == written, "features.py was modified"
    return ei.value


CASES: list[tuple[str, str, list[str]]] = [
    (
        "source-table-without-namespace",
        features_with(
            'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
            'Source.table("transactions", timestamp_field="ts")',
        ),
        ["source table 'transactions'", "'namespace.table'"],
    ),
    (
        "entity-not-an-entity",
        features_with("entity=user,", 'entity="user",'),
        ["view 'user_features'", "entity must be an Entity", "str"],
    ),
    (
        "source-not-a-source",
        features_with(
            'source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
            'source="data/transactions/*.parquet"',
        ),
        ["view 'user_features'", "Source.parquet(...)", "Source.table(...)"],
    ),
    (
        "no-fields",
        features_with(
            'fields={"txn_count_1d": "long", "amount_sum_1d": "double", "amount_avg_1d": "double"},\n'
            '    checks=[checks.null_rate("amount_avg_1d", max=0.10), checks.between("txn_count_1d", 0, 10_000)],',
            "fields={},",
        ),
        ["view 'user_features'", "declares no fields", "add fields="],
    ),
    (
        "field-named-like-the-join-key",
        features_with(
            'fields={"txn_count_1d": "long",', 'fields={"user_id": "long", "txn_count_1d": "long",'
        ),
        ["view 'user_features'", "field 'user_id'", "join key", "rename the field"],
    ),
    (
        "negative-ttl",
        features_with("ttl=timedelta(days=7)", "ttl=timedelta(days=-1)"),
        ["view 'user_features'", "ttl must be positive", "timedelta(days=7)"],
    ),
    (
        "in-set-on-a-timestamp",
        features_with('checks.null_rate("amount_avg_1d", max=0.10)', 'checks.in_set("event_ts", [1, 2])'),
        ["view 'user_features'", "in_set('event_ts')", "timestamp", "checks.sql(...)"],
    ),
    (
        "in-set-with-nan",
        features_with(
            'checks.between("txn_count_1d", 0, 10_000)', 'checks.in_set("amount_avg_1d", [1.0, float("nan")])'
        ),
        ["in_set('amount_avg_1d')", "finite numbers, got nan", "remove nan from values"],
    ),
    (
        "row-count-negative-min",
        features_with('checks.null_rate("amount_avg_1d", max=0.10)', "checks.row_count(min=-1)"),
        ["row_count(min=-1)", "non-negative integer"],
    ),
    (
        "row-count-change-infinite",
        features_with('checks.null_rate("amount_avg_1d", max=0.10)', 'checks.row_count_change(float("inf"))'),
        ["row_count_change", "max_ratio must be finite", "e.g. 0.5"],
    ),
    (
        "sql-check-without-expression",
        features_with('checks.null_rate("amount_avg_1d", max=0.10)', 'checks.sql("  ", name="positive")'),
        ["sql(name='positive')", "SQL boolean expression", "'a <= b'"],
    ),
    (
        "two-views-with-one-name",
        DEFAULT_FEATURES
        + textwrap.dedent(
            """
            user_features_again = FeatureView(
                name="user_features", entity=user, source=user_features.source, query=user_features.query,
                fields=dict(user_features.fields),
            )
            """
        ),
        ["features.py", "two feature views are named 'user_features'", "rename one"],
    ),
    (
        "two-on-demand-views-with-one-name",
        plus(
            """
            txn = RequestSource({"amount": "double"}, name="txn")
            ratio_a = OnDemandFeatureView(
                name="ratio", sources=[user_features, txn], fields={"amount_vs_avg": "double"}, udf=_ratio
            )
            ratio_b = OnDemandFeatureView(
                name="ratio", sources=[user_features, txn], fields={"amount_vs_avg": "double"}, udf=_ratio
            )
            """
        ),
        ["features.py", "two on-demand feature views are named 'ratio'", "rename one"],
    ),
    (
        "two-services-with-one-name",
        plus(
            """
            svc_a = FeatureService("scoring", features=["user_features:amount_avg_1d"])
            svc_b = FeatureService("scoring", features=["user_features:txn_count_1d"])
            """
        ),
        ["features.py", "two feature services are named 'scoring'", "rename one"],
    ),
    (
        "inline-source-view-shadows-a-view",
        plus(
            """
            def _other():  # built inside a function: the view is not a module-level name of features.py
                return FeatureView(
                    name="user_features", entity=user, source=user_features.source, query=user_features.query,
                    fields=dict(user_features.fields),
                )


            ratio = OnDemandFeatureView(
                name="ratio", sources=[_other(), RequestSource({"amount": "double"}, name="txn")],
                fields={"amount_vs_avg": "double"}, udf=_ratio,
            )
            """
        ),
        ["features.py", "two feature views are named 'user_features'", "rename one"],
    ),
    (
        "request-schema-entry-not-a-pair",
        plus('txn = RequestSource([("amount", "double"), "currency"], name="txn")\n'),
        ["request source 'txn'", "(name, type) pairs", "'currency'"],
    ),
    (
        "request-field-declared-twice",
        plus('txn = RequestSource([("amount", "double"), ("amount", "long")], name="txn")\n'),
        ["request source 'txn'", "field 'amount' is declared twice"],
    ),
    (
        "on-demand-name-with-underscore",
        plus(
            """
            ratio = OnDemandFeatureView(
                name="_ratio", sources=[user_features, RequestSource({"amount": "double"}, name="txn")],
                fields={"amount_vs_avg": "double"}, udf=_ratio,
            )
            """
        ),
        ["on-demand feature view '_ratio'", "reserved", "rename"],
    ),
    (
        "service-tags-not-a-dict",
        plus('svc = FeatureService("scoring", features=["user_features"], tags=["team-a"])\n'),
        ["feature service 'scoring'", "tags must be a dict"],
    ),
]


@pytest.mark.parametrize(("features", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_definition_is_refused_and_nothing_is_created(
    tmp_path: Path, features: str, needles: list[str]
) -> None:
    root = make_project(tmp_path / "p", features=features)
    err = refused_at_apply(root)
    says(err, *needles)
    assert err.exit_code == 2


def test_missing_features_py_says_to_create_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    (root / "features.py").unlink()
    with featurelake.open(root) as h:
        with pytest.raises(ConfigError) as ei:
            h.apply()
        says(ei.value, str(root.resolve() / "features.py"), "create features.py", "featurelake init")
        assert not h.project.catalog.table_exists(f"features.{VIEW}")
    assert not (root / "features.py").exists(), "featurelake must not write a features.py of its own"


def test_cli_apply_with_a_bad_definition_is_one_error_line(tmp_path: Path, capsys: Any) -> None:
    features = features_with("ttl=timedelta(days=7)", "ttl=timedelta(days=-1)")
    root = make_project(tmp_path / "p", features=features)
    code, _, err = run_cli(capsys, root, "apply")
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "view 'user_features'" in lines[0] and "ttl must be positive" in lines[0], err
    assert (root / "features.py").read_text() == textwrap.dedent(features)
    with featurelake.open(root) as h:
        assert not h.project.catalog.table_exists(f"features.{VIEW}")
