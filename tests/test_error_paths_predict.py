"""Batch prediction requests no other test made: a view that was applied but never backfilled (its table holds
only the empty snapshot of ``apply``), a ``--where`` whose parentheses do not balance, and an ``--output`` table
name that is not an identifier.

Each is a UsageError naming the table, filter or option and what to do; no predictions table is created or
changed and the registry keeps its versions as they were.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.errors import UsageError
from tests.helpers import day, make_project
from tests.online_helpers import LinearModel

SIGNATURE = [
    {"name": "amount_avg_1d", "type": "double", "feature": "user_features:amount_avg_1d"},
    {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
]


def register(fl: featurelake.Featurelake, tmp: Path) -> str:
    path = tmp / "model.pkl"
    path.write_bytes(pickle.dumps(LinearModel([1.0, 0.5], bias=1.0)))
    mv = fl.models.register("churn", path, "pickle", signature=SIGNATURE)
    fl.models.promote("churn", mv.version, "Staging")
    fl.models.promote("churn", mv.version, "Production")
    return mv.version


def predictions_tables(fl: featurelake.Featurelake) -> list[str]:
    cat = fl.project.catalog
    try:
        return sorted(".".join(i) for i in cat.list_tables("predictions"))
    except Exception:  # no predictions namespace yet: nothing was ever written
        return []


def registry_state(fl: featurelake.Featurelake) -> list[Any]:
    return [(v.version, v.stage) for v in fl.models.versions("churn")]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    root = make_project(tmp_path_factory.mktemp("predict") / "proj")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        with featurelake.open(root) as fl:
            fl.apply()
            fl.backfill("user_features", day(0), day(5), run_id="base")
            register(fl, root.parent)
            yield fl


def test_view_applied_but_never_backfilled(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        register(fl, tmp_path)
        before = registry_state(fl)
        with pytest.raises(UsageError) as ei:
            fl.predict("churn", "user_features")
        msg = str(ei.value)
        assert "nothing to score" in msg and "features.user_features" in msg, msg
        assert "backfill the view" in msg and "nothing was written" in msg, msg
        assert predictions_tables(fl) == []
        assert registry_state(fl) == before


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"where": "(txn_count_1d > 1"}, ["(txn_count_1d > 1", "parentheses are not balanced"]),
        ({"output": "predictions.churn-scores"}, ["'churn-scores'", "--output table"]),
    ],
    ids=["unbalanced-where", "output-not-an-identifier"],
)
def test_bad_request_writes_no_predictions(
    published: featurelake.Featurelake, kwargs: dict[str, Any], needles: list[str]
) -> None:
    tables = predictions_tables(published)
    before = registry_state(published)
    with pytest.raises(UsageError) as ei:
        published.predict("churn", "user_features", **kwargs)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, f"{n!r} not in message: {msg}"
    assert predictions_tables(published) == tables
    assert registry_state(published) == before


def test_the_same_request_without_the_mistake_scores(published: featurelake.Featurelake) -> None:
    result = published.predict("churn", "user_features", where="(txn_count_1d > 1)")
    assert result.rows > 0
